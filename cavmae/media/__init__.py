"""Media front end: any video, audio or image file to CAV-MAE inputs, robustly and fast.

Public API (OFFICIAL_CAVMAE.md §4.1, §4.2, §4.5 and pitfalls 10-12 give the official pipeline):

- :func:`probe` -> :class:`MediaInfo`: what a file holds (PyAV headers; no ffprobe exists here).
- :func:`decode_audio`: mono float32 at 16 kHz, the first channel as the official extraction.
- :func:`official_frame_times` / :func:`official_frame_indices`: the official 10 frames.
- :func:`decode_frames`: frame-accurate RGB frames by time or index.
- :func:`load_clip` -> :class:`Clip`: model-ready fbank and frames of one clip.
- :func:`iter_windows` -> :class:`Window`: streamed windows over files of any length;
  :func:`count_windows`.

Backends, chosen by measurement on the 2-core target machine:

- Audio goes through the ``imageio-ffmpeg`` binary in a subprocess (``-ar 16000``, 16-bit PCM
  on a pipe). It is the official extraction's own tool and resampler, so the samples match
  the official wav files exactly (checked on 5.1 AAC: identical to ``ffmpeg -ar 16000 x.wav``
  then channel 1). A subprocess can be killed on timeout, is read incrementally for long
  files, and runs in parallel with frame decoding (10 s of audio: ~0.04 s).
- Frames go through PyAV in-process, which can seek and decode forward frame-accurately,
  skip non-reference frames that are not wanted (a third fewer frames decoded on x264
  output) and convert only the selected frames. The ffmpeg binary would decode every frame up
  to the last one wanted (0.5 s for 9 s of 720p here, the whole budget of ``load_clip``). The
  selected frames equal OpenCV 4.6.0.66's (the official extraction) pixel for pixel on H.264
  (mp4, mkv, BT.601/709 tags) and VP8 (webm) clips, including the real files in
  ``../shared/media`` (except after the damaged packet of ``corrupt_h264_frames.mp4``, where
  OpenCV repeats the last good frame and we return the frame at the requested time).
- Still images go through PIL (EXIF orientation applied).

Every failure raises a :class:`cavmae.errors.MediaError` subclass naming the file:
``UnreadableMedia`` (missing, empty, truncated, corrupt, not media), ``UnsupportedMedia``
(extension or codec), ``NoAudioStream`` / ``NoVideoStream`` (a required stream is absent),
``ClipTooShort`` (under one 25 ms fbank window), ``MediaTimeout`` (every call takes a
``timeout_s``; the ffmpeg process is killed, PyAV loops check a deadline, and opening a file runs
under a watchdog). Files without audio or without video are normal: the missing parts are None.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY: dict[str, str] = {
    "MediaInfo": "cavmae.media.probing",
    "probe": "cavmae.media.probing",
    "decode_audio": "cavmae.media.audio",
    "decode_frames": "cavmae.media.video",
    "official_frame_indices": "cavmae.media.video",
    "official_frame_times": "cavmae.media.video",
    "Clip": "cavmae.media.clip",
    "load_clip": "cavmae.media.clip",
    "Window": "cavmae.media.windows",
    "count_windows": "cavmae.media.windows",
    "iter_windows": "cavmae.media.windows",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'cavmae.media' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return __all__
