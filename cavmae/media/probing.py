"""Probing media files: what a file holds, read from its headers with PyAV (no ffprobe here).

:func:`probe` opens a file once, validates it (regular file, non-empty, a supported
extension, at least one decodable audio or video stream, a sane frame size) and returns a
frozen :class:`MediaInfo`. Every failure becomes a typed :class:`cavmae.errors.MediaError`
naming the file. Still images are probed with PIL and reported with ``is_image=True``.

The stream choice mirrors the official extraction tools (OFFICIAL_CAVMAE.md §4.1-4.2): the
audio stream with the most channels (ffmpeg's default choice, first one on ties) and the first
video stream that is not cover art (OpenCV's choice). The frame count estimate follows
OpenCV's ``CAP_PROP_FRAME_COUNT``: the container's frame count, else
``floor(duration * fps + 0.5)``, with ``fps`` the stream's average frame rate.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
from PIL import Image, UnidentifiedImageError

from cavmae.errors import (
    MediaTimeout,
    UnreadableMedia,
    UnsupportedMedia,
)

__all__ = [
    "AUDIO_EXTENSIONS",
    "IMAGE_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "MAX_IMAGE_PIXELS",
    "MAX_VIDEO_PIXELS",
    "MediaInfo",
    "probe",
]

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".mts",
     ".m2ts", ".flv", ".3gp", ".ogv", ".wmv", ".gif"}
)  # fmt: skip
AUDIO_EXTENSIONS = frozenset(
    {".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".m4a", ".aac", ".wma", ".aif",
     ".aiff", ".caf"}
)  # fmt: skip
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})

#: Largest still image accepted (pixels); 120 MP covers 108 MP phone photos (~360 MB as RGB).
MAX_IMAGE_PIXELS = 120_000_000
#: Largest video frame accepted (pixels); 8K DCI (8192 x 4320 = 35 MP) fits with margin.
MAX_VIDEO_PIXELS = 50_000_000


@dataclass(frozen=True)
class MediaInfo:
    """What a media file holds, from its headers.

    Attributes:
        path: Absolute path of the file.
        container: Demuxer name as FFmpeg reports it (e.g. ``"mov,mp4,m4a,3gp,3g2,mj2"``), or
            the PIL format for still images (e.g. ``"JPEG"``).
        duration_s: Duration in seconds (container duration, else the longest stream); 0.0 for
            still images; ``None`` when the headers do not tell.
        has_audio: The file has a decodable audio stream.
        has_video: Frames are available: a video stream (cover art excluded) or a still image.
        is_image: The file is a still image (one frame, no time axis).
        sample_rate: Native sampling rate of the chosen audio stream (Hz).
        channels: Channel count of the chosen audio stream.
        fps: Average frame rate of the chosen video stream.
        width: Frame width in display orientation (after any rotation metadata).
        height: Frame height in display orientation.
        num_frames: Frame count estimate (OpenCV's ``CAP_PROP_FRAME_COUNT`` rule); 1 for images.
        audio_codec: Decoder name of the audio stream (e.g. ``"aac"``).
        video_codec: Decoder name of the video stream (e.g. ``"h264"``), or the image format.
        audio_stream: Container index of the chosen audio stream.
        video_stream: Container index of the chosen video stream.
        rotation: Display rotation in degrees (0, 90, 180, 270) applied to decoded frames.
        video_start_s: Presentation time of the video stream's start; frame times are
            relative to it.
        audio_duration_s: Duration of the audio stream when the headers give it.
        video_duration_s: Duration of the video stream when the headers give it.
    """

    path: Path
    container: str
    duration_s: float | None
    has_audio: bool
    has_video: bool
    is_image: bool
    sample_rate: int | None = None
    channels: int | None = None
    fps: float | None = None
    width: int | None = None
    height: int | None = None
    num_frames: int | None = None
    audio_codec: str | None = None
    video_codec: str | None = None
    audio_stream: int | None = None
    video_stream: int | None = None
    rotation: int = 0
    video_start_s: float = 0.0
    audio_duration_s: float | None = None
    video_duration_s: float | None = None


# --- shared helpers (used by the decoders too) --------------------------------------------


class Deadline:
    """A wall-clock budget for one decoding call; :meth:`check` raises :class:`MediaTimeout`."""

    def __init__(self, timeout_s: float | None, what: str) -> None:
        self.timeout_s = timeout_s
        self.what = what
        self._end = None if timeout_s is None else time.monotonic() + timeout_s

    def remaining(self) -> float | None:
        """Seconds left (never negative), or ``None`` without a limit."""
        return None if self._end is None else max(0.0, self._end - time.monotonic())

    def check(self) -> None:
        """Raise :class:`MediaTimeout` once the budget is spent."""
        if self._end is not None and time.monotonic() > self._end:
            raise MediaTimeout(
                f"{self.what} took longer than {self.timeout_s:g} s and was stopped; "
                "raise timeout_s for very large files"
            )


def check_path(path: str | os.PathLike[str]) -> Path:
    """Resolve ``path`` and check it is a non-empty regular file with a media extension.

    Returns:
        The absolute path.

    Raises:
        UnreadableMedia: Missing, not a regular file (directory, FIFO, device), or empty.
        UnsupportedMedia: An extension that is not audio, video or image (e.g. ``.txt``).
    """
    p = Path(path).expanduser()
    try:
        st = p.stat()
    except FileNotFoundError:
        raise UnreadableMedia(f"{p}: no such file; check the path") from None
    except OSError as e:
        raise UnreadableMedia(f"{p}: cannot access the file ({e.strerror or e})") from None
    if p.is_dir():
        raise UnreadableMedia(f"{p} is a directory; pass a media file inside it")
    if not p.is_file():  # FIFOs and devices would block a decoder forever
        raise UnreadableMedia(f"{p} is not a regular file (pipe or device); save it to a file")
    if st.st_size == 0:
        raise UnreadableMedia(f"{p} is empty (0 bytes); the upload or copy did not complete")
    ext = p.suffix.lower()
    if ext and ext not in VIDEO_EXTENSIONS | AUDIO_EXTENSIONS | IMAGE_EXTENSIONS:
        raise UnsupportedMedia(
            f"{p}: '{ext}' is not a supported media type; use a video "
            f"({', '.join(sorted(VIDEO_EXTENSIONS))}), audio ({', '.join(sorted(AUDIO_EXTENSIONS))}) "
            f"or image ({', '.join(sorted(IMAGE_EXTENSIONS))}) file"
        )
    return p.resolve()


def open_container(path: Path, timeout_s: float | None) -> Any:
    """``av.open`` in a watchdog thread, with FFmpeg errors mapped to :class:`MediaError`.

    PyAV's own ``timeout`` interrupts blocking I/O; the thread bounds the whole call (header
    parsing included) so that a pathological file cannot hang the caller.
    """
    result: dict[str, Any] = {}

    def _open() -> None:
        try:
            io_timeout = None if timeout_s is None else max(timeout_s, 1.0)
            result["c"] = av.open(str(path), metadata_errors="replace", timeout=io_timeout)
        except BaseException as e:  # re-raised in the caller's thread
            result["e"] = e

    worker = threading.Thread(target=_open, name="cavmae-av-open", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise MediaTimeout(
            f"{path}: opening the file took longer than {timeout_s:g} s; it is probably damaged"
        )
    if "e" in result:
        e = result["e"]
        if isinstance(e, av.error.FFmpegError):
            raise UnreadableMedia(
                f"{path} could not be read as media (corrupt, truncated, or not a media file): "
                f"{_ffmpeg_message(e)}"
            ) from None
        if isinstance(e, OSError):
            raise UnreadableMedia(f"{path}: cannot read the file ({e})") from None
        raise e
    return result["c"]


def _ffmpeg_message(e: BaseException) -> str:
    """FFmpeg's error text without PyAV's errno prefix."""
    return getattr(e, "strerror", None) or str(e)


# --- probing ------------------------------------------------------------------------------


def probe(path: str | os.PathLike[str], timeout_s: float | None = 10.0) -> MediaInfo:
    """Read what a media file holds from its headers, without decoding it.

    Args:
        path: A video, audio or image file.
        timeout_s: Upper bound on the call in seconds (``None``: unbounded).

    Returns:
        The :class:`MediaInfo` of the file.

    Raises:
        UnreadableMedia: Missing, empty, truncated, corrupt, or not media.
        UnsupportedMedia: Unsupported extension, no audio or video stream, no decoder for
            its codecs, or a frame too large to decode safely.
        MediaTimeout: The headers could not be read within ``timeout_s``.
    """
    p = check_path(path)
    if p.suffix.lower() in IMAGE_EXTENSIONS:
        return _probe_image(p)
    container = open_container(p, timeout_s)
    try:
        return _probe_container(p, container)
    finally:
        container.close()


def _probe_image(p: Path) -> MediaInfo:
    """MediaInfo of a still image from its header (PIL)."""
    try:
        with Image.open(p) as img:
            width, height = img.size
            fmt = img.format or p.suffix.lstrip(".").upper()
            orientation = img.getexif().get(0x0112, 1)  # EXIF Orientation
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError) as e:
        raise UnreadableMedia(
            f"{p} is not a readable image (corrupt or wrong extension): {e}"
        ) from None
    if width * height > MAX_IMAGE_PIXELS:
        raise UnsupportedMedia(
            f"{p}: image is {width}x{height} ({width * height / 1e6:.0f} MP), above the "
            f"{MAX_IMAGE_PIXELS / 1e6:.0f} MP limit; downscale it first"
        )
    if orientation in (5, 6, 7, 8):  # EXIF transposes: the displayed image is rotated
        width, height = height, width
    return MediaInfo(
        path=p, container=fmt, duration_s=0.0, has_audio=False, has_video=True, is_image=True,
        width=width, height=height, num_frames=1, video_codec=fmt.lower(),
    )  # fmt: skip


def _seconds(value: int | None, time_base: Any) -> float | None:
    """A stream timestamp in seconds, or None."""
    if value is None or time_base is None:
        return None
    return float(value * time_base)


def _decodable(stream: Any) -> str | None:
    """The decoder name of a stream, or None when FFmpeg has no decoder for it."""
    try:
        name = stream.codec_context.name
        av.Codec(name, "r")
    except (av.error.FFmpegError, ValueError, AttributeError, av.codec.codec.UnknownCodecError):
        return None
    return name


def _probe_container(p: Path, c: Any) -> MediaInfo:
    """MediaInfo of an opened PyAV container."""
    audio = list(c.streams.audio)
    video = [
        s for s in c.streams.video
        if not (s.disposition & av.stream.Disposition.attached_pic)  # cover art is no video
    ]  # fmt: skip
    audio_ok = [s for s in audio if _decodable(s) and _channels(s) > 0]
    video_ok = [s for s in video if _decodable(s)]
    if not audio_ok and not video_ok:
        kinds = ", ".join(f"{s.type} ({_codec_name(s)})" for s in c.streams) or "none"
        if audio or video:
            raise UnsupportedMedia(
                f"{p}: no decoder for its streams ({kinds}); convert it to a common format "
                "(e.g. H.264/AAC mp4 or wav)"
            )
        raise UnsupportedMedia(f"{p} has no audio or video stream (streams: {kinds})")

    duration = c.duration / 1e6 if c.duration and c.duration > 0 else None
    a = max(audio_ok, key=_channels) if audio_ok else None  # first on ties
    v = video_ok[0] if video_ok else None
    a_dur = _seconds(a.duration, a.time_base) if a is not None else None
    v_dur = _seconds(v.duration, v.time_base) if v is not None else None
    if duration is None:
        known = [d for d in (a_dur, v_dur) if d]
        duration = max(known) if known else None

    fps = width = height = num_frames = None
    rotation = 0
    v_start = 0.0
    if v is not None:
        rate = v.average_rate or v.guessed_rate or v.base_rate
        fps = float(rate) if rate else None
        width, height = v.codec_context.width, v.codec_context.height
        if width * height > MAX_VIDEO_PIXELS:
            raise UnsupportedMedia(
                f"{p}: frames are {width}x{height} ({width * height / 1e6:.0f} MP), above the "
                f"{MAX_VIDEO_PIXELS / 1e6:.0f} MP limit; downscale the video first"
            )
        rotation = _stream_rotation(c, v)
        if rotation in (90, 270):
            width, height = height, width
        v_start = _seconds(v.start_time, v.time_base) or 0.0
        num_frames = v.frames or None
        span = duration or v_dur
        if not num_frames and fps and span:
            # Parity: OpenCV's CAP_PROP_FRAME_COUNT estimate (container duration first).
            num_frames = int(math.floor(span * fps + 0.5))
    return MediaInfo(
        path=p,
        container=c.format.name,
        duration_s=duration,
        has_audio=a is not None,
        has_video=v is not None,
        is_image=False,
        sample_rate=a.rate if a is not None else None,
        channels=a.channels if a is not None else None,
        fps=fps,
        width=width,
        height=height,
        num_frames=num_frames,
        audio_codec=a.codec_context.name if a is not None else None,
        video_codec=v.codec_context.name if v is not None else None,
        audio_stream=a.index if a is not None else None,
        video_stream=v.index if v is not None else None,
        rotation=rotation,
        video_start_s=v_start,
        audio_duration_s=a_dur,
        video_duration_s=v_dur,
    )


def _channels(stream: Any) -> int:
    """Channel count of an audio stream (0 when FFmpeg does not know the codec)."""
    try:
        return int(stream.channels or 0)
    except (AttributeError, av.error.FFmpegError, ValueError):
        return 0


def _codec_name(stream: Any) -> str:
    try:
        return stream.codec_context.name
    except (av.error.FFmpegError, ValueError, AttributeError):
        return "unknown codec"


def _stream_rotation(c: Any, v: Any) -> int:
    """Display rotation (0/90/180/270) of a video stream, read from its first frame.

    Only the first few packets are decoded; the container is rewound by the caller closing it.
    """
    try:
        for frame in c.decode(v):
            return int(round(frame.rotation or 0)) % 360
    except (av.error.FFmpegError, ValueError):
        return 0
    return 0
