"""One call from a media file to model-ready CAV-MAE inputs: :func:`load_clip`.

The audio stream is decoded by an ffmpeg subprocess while PyAV decodes the frames in this
process, so both cores work at once; each stream is decoded once and nothing is written to
disk. Only what the model sees is read: the first ``(target_length - 1) * shift + window``
samples of audio (10.255 s at 16 kHz for 1024 frames) and the frames of the first
``clip_seconds`` (10 s), counted from ``start_s``, so a 2-hour file costs no more than a 10-s one.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from cavmae import features
from cavmae.config import FeatureConfig
from cavmae.errors import ConfigError, UnreadableMedia
from cavmae.media.audio import Channel, check_channel, finish_waveform, open_pcm
from cavmae.media.probing import Deadline, MediaInfo, probe
from cavmae.media.video import (
    Color,
    VideoReader,
    check_times,
    index_times,
    load_image,
    official_offsets,
)

__all__ = ["Clip", "FrameMode", "load_clip", "clip_audio_seconds"]

logger = logging.getLogger(__name__)

_DEFAULT_CFG = FeatureConfig()  # frozen, so one shared default instance is safe

FrameMode = Literal["official", "middle", "times"]


@dataclass(frozen=True)
class Clip:
    """Model-ready inputs of one clip, plus what they came from.

    Attributes:
        fbank: Normalised log-mel filterbank (T, F), e.g. (1024, 128); None without audio.
        frames: ImageNet-normalised frames (K, 3, S, S); None without video.
        frames_uint8: The same frames as RGB (K, S, S, 3) uint8 (resized and centre-cropped);
            None without video.
        frame_times: Presentation times (K,) in seconds from the start of the file; empty
            without video, zeros for a still image.
        waveform: Mono float32 (N,) at ``sample_rate``, the samples behind ``fbank``; None
            without audio.
        has_audio: The file has an audio stream.
        has_video: The file has a video stream or is an image.
        duration_s: Duration of the whole file (s); 0 for an image; None if unknown.
        info: The probed file.
        start_s: Where the clip starts in the file (s).
        sample_rate: Rate of ``waveform`` (Hz).
    """

    fbank: torch.Tensor | None
    frames: torch.Tensor | None
    frames_uint8: np.ndarray | None
    frame_times: np.ndarray
    waveform: np.ndarray | None
    has_audio: bool
    has_video: bool
    duration_s: float | None
    info: MediaInfo
    start_s: float = 0.0
    sample_rate: int = 16000


def clip_audio_seconds(cfg: FeatureConfig) -> float:
    """Seconds of audio behind ``cfg.target_length`` fbank frames (10.255 s for 1024)."""
    win, shift, _ = features.kaldi_window_sizes(
        cfg.sample_rate, cfg.frame_length_ms, cfg.frame_shift_ms
    )
    return ((cfg.target_length - 1) * shift + win) / cfg.sample_rate


def _frame_times(
    info: MediaInfo,
    cfg: FeatureConfig,
    num_frames: int,
    frame_mode: FrameMode,
    times_s: list[float] | None,
    start_s: float,
    off_by_one: bool,
) -> np.ndarray:
    """Selection times (s from the video start) of the requested frames."""
    if frame_mode == "times":
        times = np.asarray(times_s if times_s is not None else [], dtype=np.float64)
        if times.ndim != 1 or len(times) == 0 or not np.isfinite(times).all():
            raise ConfigError(f"frame_mode='times' needs a non-empty times_s, got {times_s}")
        check_times(info, times)
        return np.maximum(times, 0.0)
    if times_s is not None:
        raise ConfigError(f"times_s is only used with frame_mode='times', not {frame_mode!r}")
    fps = float(info.fps or 0.0)
    n = num_frames if frame_mode == "official" else cfg.num_frames
    if not fps or not info.num_frames:
        # Some recordings (browser WebM) carry no frame rate or count: space the frames evenly
        # over the first clip_seconds of the video instead of by frame index.
        duration = float(info.video_duration_s or info.duration_s or 0.0) - start_s
        if duration <= 0:
            raise UnreadableMedia(f"{info.path}: the video has no frame rate and no duration")
        times = start_s + np.arange(n) * min(duration, cfg.clip_seconds) / n
        if frame_mode == "middle":
            times = times[n // 2 : n // 2 + 1]
        return times
    first = int(round(start_s * fps))
    offsets = official_offsets(info.num_frames - first, fps, n, cfg.clip_seconds, off_by_one)
    if frame_mode == "middle":
        offsets = offsets[n // 2 : n // 2 + 1]  # Parity: eval uses frame int(10 / 2) = 5 (§4.5)
    return index_times(offsets + first, fps)


def load_clip(
    path: str | os.PathLike[str],
    cfg: FeatureConfig = _DEFAULT_CFG,
    num_frames: int = 10,
    frame_mode: FrameMode = "official",
    times_s: list[float] | None = None,
    channel: Channel = "first",
    jpeg_roundtrip: bool = False,
    timeout_s: float | None = 60.0,
    *,
    start_s: float = 0.0,
    off_by_one: bool = True,
    color: Color = "official",
) -> Clip:
    """Decode a video, audio or image file into CAV-MAE inputs, as the official pipeline.

    Audio: first channel (or the mean with ``channel="mix"``) resampled to
    ``cfg.sample_rate`` by FFmpeg, 16-bit, Kaldi fbank, padded/cropped to
    ``cfg.target_length`` frames, normalised. Frames: the official 10 frames of the first
    ``cfg.clip_seconds`` (``"official"``), the evaluation frame 5 alone (``"middle"``), or the
    frames at ``times_s`` (``"times"``, seconds from the start of the file); each resized
    (shorter side, PIL bilinear) and centre-cropped to ``cfg.img_size``, optionally through the
    official JPEG q75 round trip, then ImageNet-normalised.
    A file without audio or without video is normal: the missing fields are None.

    Args:
        path: Video, audio or image file.
        cfg: Feature constants of the model.
        num_frames: Frames for ``frame_mode="official"``.
        frame_mode: ``"official"``, ``"middle"`` or ``"times"``.
        times_s: Frame times for ``frame_mode="times"``.
        channel: ``"first"`` (official) or ``"mix"``.
        jpeg_roundtrip: Pass frames through JPEG q75 as the official stored frames were.
        timeout_s: Limit for the whole call (``None``: unbounded).
        start_s: Start of the clip in the file (s): audio and official frames count from here.
        off_by_one: Reproduce the official frame seek to ``index - 1``.
        color: ``"official"`` (BT.601, as OpenCV 4.6) or ``"tagged"``.

    Returns:
        The :class:`Clip`.

    Raises:
        UnreadableMedia, UnsupportedMedia: Bad or unsupported file.
        ClipTooShort: Audio shorter than one fbank window (25 ms).
        MediaTimeout: Decoding exceeded ``timeout_s``.
        ConfigError: Invalid options.
    """
    if frame_mode not in ("official", "middle", "times"):
        raise ConfigError(f"frame_mode must be 'official', 'middle' or 'times', got {frame_mode!r}")
    check_channel(channel)
    if start_s < 0:
        raise ConfigError(f"start_s must be >= 0, got {start_s}")
    deadline = Deadline(timeout_s, f"loading {path}")
    info = probe(path, timeout_s)
    if info.duration_s is not None and start_s > 0 and start_s >= info.duration_s:
        raise ConfigError(
            f"start_s={start_s} is beyond the end of {info.path} ({info.duration_s:.2f} s)"
        )
    sr = cfg.sample_rate
    audio_s = clip_audio_seconds(cfg)

    pipe = open_pcm(info, sr, start_s, audio_s + 0.05) if info.has_audio else None
    try:
        frames_u8, ftimes = None, np.zeros(0)
        if info.is_image:
            img = features.resize_center_crop(load_image(info), cfg.img_size)  # (S, S, 3)
            frames_u8 = np.array(img)[None]  # (1, S, S, 3), writable
            ftimes = np.zeros(1)
        elif info.has_video:
            times = _frame_times(info, cfg, num_frames, frame_mode, times_s, start_s, off_by_one)
            with VideoReader(info, cfg.img_size, color, deadline.remaining()) as reader:
                frames_u8, ftimes = reader.frames_at(times, deadline)  # (K, S, S, 3)
        waveform = None
        if pipe is not None:
            pcm = pipe.read(None, deadline.remaining())  # (N, C)
            code, errors = pipe.finish(deadline.remaining())
            waveform = finish_waveform(info, pcm, code, errors, channel, sr, start_s, audio_s)
    finally:
        if pipe is not None:
            pipe.close()

    fbank = None if waveform is None else features.fbank_features(waveform, sr, cfg)  # (T, F)
    frames = None
    if frames_u8 is not None:
        if jpeg_roundtrip:
            frames_u8 = np.stack([features.jpeg_roundtrip(f) for f in frames_u8])
        frames = features.frames_to_tensor(frames_u8, cfg)  # (K, 3, S, S)
    return Clip(
        fbank=fbank,
        frames=frames,
        frames_uint8=frames_u8,
        frame_times=ftimes,
        waveform=waveform,
        has_audio=info.has_audio,
        has_video=info.has_video,
        duration_s=info.duration_s,
        info=info,
        start_s=start_s,
        sample_rate=sr,
    )
