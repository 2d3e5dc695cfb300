"""Frame decoding: the official frame choice and frame-accurate random access with PyAV.

Parity (OFFICIAL_CAVMAE.md §4.2, pitfall 12, pitfall 22): the official extraction used
OpenCV 4.6 (``opencv-python 4.6.0.66``): ``total = min(CAP_PROP_FRAME_COUNT, int(fps * 10))``,
frame ``i`` read after seeking ``CAP_PROP_POS_FRAMES = int(i * total / 10) - 1``, which returns
the frame with index ``int(i * total / 10) - 1`` (the start for ``i = 0``). OpenCV numbers a frame
``round((pts - start) * fps)``; :func:`decode_frames` selects by index with that rule, and by
time as "the last frame whose presentation time is <= t".
OpenCV 4.6 converts YUV to RGB with the BT.601 matrix whatever the stream's colour tags say
(checked against 4.6.0.66: BT.709-tagged H.264 differs by up to 39 levels otherwise), so
``color="official"`` (default) does the same; ``color="tagged"`` honours the tags.
Rotation metadata is applied as FFmpeg displays it (the training videos carry none).

The decoding itself (seeking, skipping unneeded frames, colour) is :class:`VideoReader`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageOps

from cavmae.errors import ConfigError, NoVideoStream, UnreadableMedia, UnsupportedMedia
from cavmae.media.probing import Deadline, MediaInfo, probe
from cavmae.media.reader import Color, VideoReader

__all__ = [
    "Color",
    "VideoReader",
    "check_times",
    "decode_frames",
    "load_image",
    "index_times",
    "official_frame_indices",
    "official_frame_times",
    "official_offsets",
]

logger = logging.getLogger(__name__)


# --- the official frame choice ------------------------------------------------------------


def official_offsets(
    frame_count: int,
    fps: float,
    num_frames: int = 10,
    clip_seconds: float = 10.0,
    off_by_one: bool = True,
) -> np.ndarray:
    """Frame offsets of the official extraction for a clip of ``frame_count`` frames.

    ``total = min(frame_count, int(fps * clip_seconds))``; frame ``i`` is
    ``int(i * total / num_frames)``, minus one with ``off_by_one`` (clamped at 0).

    Returns:
        int64 array (num_frames,), non-decreasing.
    """
    if num_frames < 1:
        raise ConfigError(f"num_frames must be >= 1, got {num_frames}")
    total = max(0, min(int(frame_count), int(fps * clip_seconds)))
    idx = np.array([int(i * total / num_frames) for i in range(num_frames)], dtype=np.int64)
    if off_by_one:
        idx = np.maximum(idx - 1, 0)  # Parity: CAP_PROP_POS_FRAMES = frame_idx - 1 (§4.2)
    return idx


def official_frame_indices(
    info: MediaInfo, num_frames: int = 10, clip_seconds: float = 10.0, off_by_one: bool = True
) -> np.ndarray:
    """Frame indices of the official extraction (OFFICIAL_CAVMAE.md §4.2) for a probed file.

    Args:
        info: Probed video (needs ``fps`` and ``num_frames``).
        num_frames: Frames per clip (10 officially).
        clip_seconds: Span the frames are spread over (10 s officially).
        off_by_one: Reproduce the official seek to ``frame_idx - 1``.

    Returns:
        int64 array (num_frames,) of frame indices, non-decreasing; zeros for a still image.

    Raises:
        NoVideoStream: The file has no video stream with a known frame rate.
    """
    if info.is_image:
        return np.zeros(num_frames, dtype=np.int64)
    if not info.has_video or not info.fps or not info.num_frames:
        raise NoVideoStream(f"{info.path} has no video stream with a known frame rate")
    return official_offsets(info.num_frames, info.fps, num_frames, clip_seconds, off_by_one)


def index_times(indices: np.ndarray, fps: float) -> np.ndarray:
    """Selection times for frame indices: OpenCV numbers a frame ``round((pts - start) * fps)``,
    so frame ``n`` is the last one shown before ``(n + 0.5) / fps``."""
    return (np.asarray(indices, dtype=np.float64) + 0.5) / fps - 1e-4 / fps


def official_frame_times(
    info: MediaInfo, num_frames: int = 10, clip_seconds: float = 10.0, off_by_one: bool = True
) -> np.ndarray:
    """Times (s, from the start of the video) of the official frames: ``index / fps``.

    Returns:
        float64 array (num_frames,); zeros for a still image.
    """
    idx = official_frame_indices(info, num_frames, clip_seconds, off_by_one)
    if info.is_image:
        return idx.astype(np.float64)
    return idx / float(info.fps)  # type: ignore[arg-type]


# --- images -------------------------------------------------------------------------------


def load_image(info: MediaInfo) -> np.ndarray:
    """Decode a still image to RGB (EXIF orientation applied, alpha composited on white).

    Returns:
        uint8 array (H, W, 3).

    Raises:
        UnreadableMedia: The image is corrupt or truncated.
    """
    try:
        with Image.open(info.path) as img:
            img = ImageOps.exif_transpose(img)
            if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
                rgba = img.convert("RGBA")
                img = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                img.alpha_composite(rgba)
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise UnreadableMedia(f"{info.path}: the image cannot be decoded ({e})") from None
    except MemoryError:
        raise UnsupportedMedia(f"{info.path}: not enough memory to decode this image") from None


# --- one-call API -------------------------------------------------------------------------


def check_times(info: MediaInfo, times_s: np.ndarray) -> None:
    """Raise :class:`ConfigError` for a frame time beyond the end of the video."""
    end = info.video_duration_s or info.duration_s
    fps = float(info.fps or 25.0)
    if end is not None and len(times_s) and float(np.max(times_s)) > end + 0.5 / fps + 1e-3:
        raise ConfigError(
            f"{info.path}: frame at {float(np.max(times_s)):.3f} s requested but the video "
            f"lasts {end:.3f} s"
        )


def decode_frames(
    path: str | os.PathLike[str],
    times_s: Sequence[float] | None = None,
    indices: Sequence[int] | None = None,
    timeout_s: float | None = 60.0,
    *,
    size: int | None = None,
    color: Color = "official",
    info: MediaInfo | None = None,
    return_times: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Decode selected frames as RGB, frame-accurately.

    With ``times_s``, each frame is the last one shown at or before ``t`` (seconds from the
    start of the video). With ``indices``, frame ``n`` is the one OpenCV numbers ``n``
    (``round((pts - start) * fps)``). With neither, the 10 official frames. A still image
    gives the image itself (once per requested time, or once).

    Args:
        path: Video or image file.
        times_s: Times in seconds, any order.
        indices: Frame indices, any order (exclusive with ``times_s``).
        timeout_s: Limit for the whole call (``None``: unbounded).
        size: Resize (shorter side, PIL bilinear) and centre-crop each frame to
            ``size x size`` right after decoding, which bounds memory for 8K input.
        color: ``"official"`` (BT.601 as OpenCV 4.6) or ``"tagged"``.
        info: The file's :class:`MediaInfo` if already probed.
        return_times: Also return the presentation times of the frames.

    Returns:
        uint8 array (K, H, W, 3), RGB at native resolution (or (K, size, size, 3)); with
        ``return_times``, also float64 (K,) times in seconds.

    Raises:
        NoVideoStream: The file has no video stream (an audio file).
        ConfigError: Both or invalid selections, or a time beyond the end of the video.
        UnreadableMedia: Corrupt or truncated video.
        MediaTimeout: Decoding exceeded ``timeout_s``.
    """
    if times_s is not None and indices is not None:
        raise ConfigError("pass times_s or indices, not both")
    deadline = Deadline(timeout_s, f"decoding frames of {path}")
    info = info if info is not None else probe(path, timeout_s)
    if not info.has_video:
        raise NoVideoStream(f"{info.path} has no video stream or image; use the audio-only path")
    if info.is_image:
        img = load_image(info)
        if size is not None:
            from cavmae.features import resize_center_crop

            img = resize_center_crop(img, size)
        k = len(times_s) if times_s is not None else len(indices) if indices is not None else 1
        frames = np.repeat(img[None], max(k, 1), axis=0)
        return (frames, np.zeros(len(frames))) if return_times else frames
    fps = float(info.fps or 25.0)
    if times_s is None:
        idx = official_frame_indices(info) if indices is None else np.asarray(indices)
        if idx.ndim != 1 or len(idx) == 0 or (idx < 0).any():
            raise ConfigError(
                f"indices must be a non-empty list of non-negative ints, got {indices}"
            )
        times = index_times(idx, fps)
    else:
        times = np.asarray(times_s, dtype=np.float64)
        if times.ndim != 1 or len(times) == 0 or not np.isfinite(times).all():
            raise ConfigError(f"times_s must be a non-empty list of finite numbers, got {times_s}")
        times = np.maximum(times, 0.0)
    check_times(info, times)
    with VideoReader(info, size=size, color=color, timeout_s=deadline.remaining()) as reader:
        frames, got = reader.frames_at(times, deadline)
    return (frames, got) if return_times else frames
