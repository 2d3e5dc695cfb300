"""Fixed-length windows over media of any length, streamed: :func:`iter_windows`.

Audio is decoded once by one ffmpeg process and read from its pipe window by window, so at
most one window (plus a pipe chunk) of samples is in memory whatever the file's length.
Frames are fetched by one :class:`VideoReader` that seeks to the keyframe before each
window's frames and decodes forward, resizing each frame at once. A 2-hour file therefore
needs the memory of one window.

Each window is treated as an official 10-s clip (OFFICIAL_CAVMAE.md §4.2, §4.4): its audio
gives ``window_s * sample_rate`` samples to the Kaldi fbank, padded with log-domain zeros to
``target_length`` frames (a last, partial window is padded the same way), and its frames are
the official frames of the window, ``int(i * total / 10) - 1`` counted from the window start.
With ``frames_per_window = k < 10``, the k official frames nearest to evenly spaced centres
are used: ``int((j + 0.5) * 10 / k)`` for j < k, so ``k = 1`` gives frame 5, the official
evaluation frame.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from cavmae import features
from cavmae.config import FeatureConfig
from cavmae.errors import ConfigError, UnreadableMedia
from cavmae.media._ffmpeg import PcmPipe
from cavmae.media.audio import (
    Channel,
    check_channel,
    check_decoded_length,
    open_pcm,
    select_channel,
)
from cavmae.media.probing import Deadline, MediaInfo, probe
from cavmae.media.video import Color, VideoReader, index_times, load_image, official_offsets

__all__ = ["Window", "count_windows", "iter_windows", "window_frame_offsets"]

logger = logging.getLogger(__name__)

_DEFAULT_CFG = FeatureConfig()  # frozen, so one shared default instance is safe

_MIN_TAIL_S = 0.025  # one 25 ms fbank window: shorter tails give no window of their own


@dataclass(frozen=True)
class Window:
    """Model-ready inputs of one window.

    Attributes:
        index: Window number, from 0.
        start_s: Start time in the file (s).
        end_s: End time (s): ``start_s + window_s``, clipped to the end of the file.
        fbank: Normalised log-mel (T, F); None without audio or past the audio's end.
        frames: ImageNet-normalised frames (k, 3, S, S); None without video.
        frames_uint8: The frames as RGB (k, S, S, 3) uint8; None without video.
        frame_times: Presentation times (k,) in seconds from the start of the file.
        waveform: The window's mono samples (n,) float32; None without audio.
    """

    index: int
    start_s: float
    end_s: float
    fbank: torch.Tensor | None
    frames: torch.Tensor | None
    frames_uint8: np.ndarray | None
    frame_times: np.ndarray
    waveform: np.ndarray | None


def count_windows(
    duration_s: float, window_s: float = 10.0, hop_s: float = 10.0, min_tail_s: float = _MIN_TAIL_S
) -> int:
    """Number of windows :func:`iter_windows` yields for a file of ``duration_s`` seconds.

    Windows start every ``hop_s``; a new one is added while the previous one ends more than
    ``min_tail_s`` before the end. A file shorter than one window gives one (padded) window.

    Returns:
        At least 1, e.g. 7 for 65 s with 10-s windows and hop.
    """
    if window_s <= 0 or hop_s <= 0:
        raise ConfigError(f"window_s and hop_s must be positive, got {window_s}, {hop_s}")
    rest = duration_s - window_s - min_tail_s
    return 1 if rest <= 0 else 1 + math.ceil(rest / hop_s - 1e-9)


def window_frame_offsets(
    frame_count: int, fps: float, k: int, cfg: FeatureConfig, window_s: float, off_by_one: bool
) -> np.ndarray:
    """Frame offsets (from the window start) of ``k`` frames in a window, see module doc."""
    n = cfg.num_frames
    offsets = official_offsets(frame_count, fps, n, window_s, off_by_one)  # (n,)
    pick = [int((j + 0.5) * n / k) for j in range(k)]
    return offsets[pick]  # (k,)


def iter_windows(
    path: str | os.PathLike[str],
    cfg: FeatureConfig = _DEFAULT_CFG,
    window_s: float = 10.0,
    hop_s: float = 10.0,
    frames_per_window: int = 1,
    *,
    channel: Channel = "first",
    audio: bool = True,
    video: bool = True,
    off_by_one: bool = True,
    color: Color = "official",
    timeout_s: float | None = 60.0,
) -> Iterator[Window]:
    """Stream model-ready windows over a file of any length, with bounded memory.

    Args:
        path: Video, audio or image file (an image gives one window without audio).
        cfg: Feature constants of the model.
        window_s: Window length in seconds (10 s matches the training clips).
        hop_s: Distance between window starts in seconds.
        frames_per_window: Frames per window, 1 to ``cfg.num_frames``.
        channel: ``"first"`` (official) or ``"mix"``.
        audio: Compute the audio part (set False to skip decoding audio).
        video: Compute the frames (set False to skip decoding video).
        off_by_one: Reproduce the official frame seek to ``index - 1``.
        color: ``"official"`` (BT.601, as OpenCV 4.6) or ``"tagged"``.
        timeout_s: Limit per window (``None``: unbounded).

    Returns:
        An iterator of :class:`Window` objects in time order;
        ``count_windows(duration_s, window_s, hop_s)`` of them when the duration is known.
        Closing it early (``close()``, or leaving a ``for`` loop and dropping it) stops the
        decoder.

    Raises:
        UnreadableMedia, UnsupportedMedia: Bad or unsupported file (at the call).
        ClipTooShort: Audio shorter than one fbank window (at the first window).
        MediaTimeout: A window took longer than ``timeout_s`` (while iterating).
        ConfigError: Invalid options (at the call).
    """
    check_channel(channel)
    if not 1 <= frames_per_window <= cfg.num_frames:
        raise ConfigError(
            f"frames_per_window must be in 1..{cfg.num_frames}, got {frames_per_window}"
        )
    count_windows(1.0, window_s, hop_s)  # validates window_s and hop_s
    info = probe(path, timeout_s)  # bad files fail here, at the call, not at the first window
    if info.is_image:
        return _image_windows(info, cfg, frames_per_window, video)
    use_audio = audio and info.has_audio
    use_video = video and info.has_video
    if not use_audio and not use_video:
        raise ConfigError(f"{info.path}: nothing to decode (audio={audio}, video={video})")
    duration = info.duration_s
    if duration is None and info.fps and info.num_frames:
        duration = info.num_frames / info.fps
    if duration is None and not use_audio:
        raise UnreadableMedia(f"{info.path}: the duration is unknown; cannot place windows")
    return _windows(
        info, cfg, window_s, hop_s, frames_per_window, channel, use_audio, use_video,
        off_by_one, color, timeout_s, duration,
    )  # fmt: skip


def _windows(
    info: MediaInfo,
    cfg: FeatureConfig,
    window_s: float,
    hop_s: float,
    frames_per_window: int,
    channel: Channel,
    use_audio: bool,
    use_video: bool,
    off_by_one: bool,
    color: Color,
    timeout_s: float | None,
    duration: float | None,
) -> Iterator[Window]:
    """The generator behind :func:`iter_windows` (arguments already validated)."""
    n_windows = None if duration is None else count_windows(duration, window_s, hop_s)
    sr = cfg.sample_rate
    win = features.kaldi_window_sizes(sr, cfg.frame_length_ms, cfg.frame_shift_ms)[0]
    pipe = open_pcm(info, sr) if use_audio else None
    reader = VideoReader(info, cfg.img_size, color, timeout_s) if use_video else None
    audio_buf = _AudioBuffer(pipe, channel, info) if pipe is not None else None
    try:
        k = 0
        while n_windows is None or k < n_windows:
            deadline = Deadline(timeout_s, f"window {k} of {info.path}")
            start = k * hop_s
            wav = fbank = None
            if audio_buf is not None:
                a0 = int(round(start * sr))
                wav = audio_buf.take(a0, a0 + int(round(window_s * sr)), deadline)
                if n_windows is None and k > 0 and len(wav) < _MIN_TAIL_S * sr:
                    break  # unknown duration: the audio has ended
                if len(wav) >= win or k == 0:  # window 0 raises ClipTooShort when too short
                    fbank = features.fbank_features(wav, sr, cfg)  # (T, F)
                audio_buf.drop_before(int(round((k + 1) * hop_s * sr)))
            frames_u8 = frames = None
            ftimes = np.zeros(0)
            if reader is not None:
                frames_u8, ftimes = _window_frames(
                    reader, info, cfg, start, window_s, frames_per_window, off_by_one, deadline
                )
                if frames_u8 is not None:
                    frames = features.frames_to_tensor(frames_u8, cfg)  # (k, 3, S, S)
            end = start + window_s if duration is None else min(start + window_s, duration)
            yield Window(k, start, end, fbank, frames, frames_u8, ftimes, wav)
            k += 1
    finally:
        if pipe is not None:
            pipe.close()
        if reader is not None:
            reader.close()


def _window_frames(
    reader: VideoReader,
    info: MediaInfo,
    cfg: FeatureConfig,
    start: float,
    window_s: float,
    k: int,
    off_by_one: bool,
    deadline: Deadline,
) -> tuple[np.ndarray | None, np.ndarray]:
    """The frames of one window (None when the video has ended before it)."""
    fps = float(info.fps or 25.0)
    first = int(round(start * fps))
    count = int(info.num_frames or 0) - first
    if count <= 0:
        return None, np.zeros(0)
    offsets = window_frame_offsets(count, fps, k, cfg, window_s, off_by_one)
    return reader.frames_at(index_times(offsets + first, fps), deadline)


def _image_windows(info: MediaInfo, cfg: FeatureConfig, k: int, video: bool) -> Iterator[Window]:
    """The single window of a still image."""
    frames_u8 = frames = None
    if video:
        img = features.resize_center_crop(load_image(info), cfg.img_size)
        frames_u8 = np.repeat(img[None], k, axis=0)  # (k, S, S, 3)
        frames = features.frames_to_tensor(frames_u8, cfg)
    yield Window(0, 0.0, 0.0, None, frames, frames_u8, np.zeros(k if video else 0), None)


class _AudioBuffer:
    """Mono samples of a :class:`PcmPipe` from a moving start index, read on demand.

    When the stream ends, ffmpeg's exit status and the decoded length are checked at once, so
    a truncated file fails before its padded windows are yielded.
    """

    def __init__(self, pipe: PcmPipe, channel: Channel, info: MediaInfo) -> None:
        self._pipe = pipe
        self._channel = channel
        self._info = info
        self._buf = np.zeros(0, dtype=np.float32)
        self._start = 0  # sample index of _buf[0]
        self._total = 0  # samples read from the pipe so far
        self._checked = False

    def _read(self, n: int, deadline: Deadline) -> np.ndarray:
        pcm = self._pipe.read(n, deadline.remaining())  # (n', C)
        self._total += len(pcm)
        if self._pipe.eof and not self._checked:
            self._check_end(deadline)
        return select_channel(pcm, self._channel)

    def _check_end(self, deadline: Deadline) -> None:
        self._checked = True
        code, errors = self._pipe.finish(deadline.remaining())
        if code:
            raise UnreadableMedia(
                f"{self._info.path}: ffmpeg could not decode the audio (exit code {code}): "
                f"{errors[-1] if errors else 'no message'}"
            )
        if errors:
            logger.warning("%s: ffmpeg reported decoding errors: %s", self._info.path, errors[-1])
        check_decoded_length(self._info, self._total / self._pipe.sample_rate, 0.0, None, errors)

    def take(self, a0: int, a1: int, deadline: Deadline) -> np.ndarray:
        """Samples [a0, a1) (fewer at the end of the stream)."""
        end = self._start + len(self._buf)
        while a0 > end and not self._pipe.eof:  # hop > window: skip samples, in chunks
            skipped = self._read(min(a0 - end, 1 << 18), deadline)
            end += len(skipped)
            self._start = end
            self._buf = self._buf[:0]
        if a1 > end and not self._pipe.eof:
            more = self._read(a1 - end, deadline)
            self._buf = np.concatenate([self._buf, more]) if len(self._buf) else more
        lo = max(0, a0 - self._start)
        return self._buf[lo : max(lo, a1 - self._start)].copy()

    def drop_before(self, a: int) -> None:
        """Forget samples before index ``a``."""
        cut = min(max(0, a - self._start), len(self._buf))
        if cut:
            self._buf = self._buf[cut:]
            self._start += cut
