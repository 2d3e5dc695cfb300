"""Frame-accurate random access to one video stream with PyAV: :class:`VideoReader`.

One forward pass serves all requested frames. Packets are sent to the decoder with
``skip_frame="NONREF"`` unless their timestamp lies next to a requested time, so frames that no
other frame depends on (most B-frames) are not decoded; a check on the skipped timestamps falls
back to a full decode whenever a skipped frame would have been the answer. Far targets are
reached by seeking to the last keyframe before them (from the container index when it has
one; a seek is only made when it skips at least a second of decoding). Only the selected frames
are converted to RGB, and resized at once when ``size`` is given, so memory stays bounded for
8K input. Damaged packets are skipped (and counted), as FFmpeg and OpenCV do; a requested time
beyond what can be decoded raises :class:`UnreadableMedia`.

Colour (OFFICIAL_CAVMAE.md pitfall 22): OpenCV 4.6.0.66, which made the official frames, converts
YUV to RGB with the BT.601 matrix whatever the stream's colour tags say (BT.709-tagged H.264
differs by up to 39 levels otherwise); ``color="official"`` does the same, ``"tagged"`` honours
the tags. Rotation metadata is applied as FFmpeg displays it (the training videos carry none).
"""

from __future__ import annotations

import bisect
import logging
import math
from collections.abc import Sequence
from typing import Any, Literal

import av
import numpy as np

from cavmae.errors import ConfigError, NoVideoStream, UnreadableMedia
from cavmae.media.probing import Deadline, MediaInfo, open_container

__all__ = ["Color", "VideoReader"]

logger = logging.getLogger(__name__)

Color = Literal["official", "tagged"]

_NO_INDEX_SEEK_S = 2.0  # without a keyframe index, seek when the target is this far ahead
_MIN_SEEK_GAIN_S = 1.0  # with an index, seek only when it skips at least this much decoding
_EPS = 1e-6


class VideoReader:
    """Frame-accurate access to the video stream of one file, kept open across requests.

    Requests must come in non-decreasing time order for best speed (any order works: going
    back costs a seek). Use as a context manager, or call :meth:`close`.

    Args:
        info: The probed file.
        size: If given, each frame is resized (shorter side, PIL bilinear) and centre-cropped
            to ``size x size`` as soon as it is decoded.
        color: ``"official"`` (BT.601, as OpenCV 4.6) or ``"tagged"`` (the stream's matrix).
        timeout_s: Limit for opening the file.
    """

    def __init__(
        self,
        info: MediaInfo,
        size: int | None = None,
        color: Color = "official",
        timeout_s: float | None = 30.0,
    ) -> None:
        if color not in ("official", "tagged"):
            raise ConfigError(f"color must be 'official' or 'tagged', got {color!r}")
        if not info.has_video or info.is_image or info.video_stream is None:
            raise NoVideoStream(f"{info.path} has no video stream; use the audio-only path")
        self.info = info
        self.size = size
        self._src_colorspace = "ITU601" if color == "official" else None
        self._container = open_container(info.path, timeout_s)
        self._stream = self._container.streams[info.video_stream]
        self._stream.thread_type = "AUTO"
        self._cc = self._stream.codec_context
        self._tb = self._stream.time_base
        self._t0 = info.video_start_s
        self._fps = info.fps or 25.0
        self._keyframes: list[float] | None = None
        self.decode_errors = 0
        self._reset_run()
        self._demux: Any = None  # None: nothing demuxed yet (the start needs no seek)

    def _reset_run(self) -> None:
        """Forget the decoding state (after a seek)."""
        self._prev: tuple[float, Any] | None = None  # last decoded frame <= the current target
        self._next: tuple[float, Any] | None = None  # first decoded frame > the current target
        self._pending: list[tuple[float, Any]] = []  # decoded, not yet consumed
        self._skipped: list[float] = []  # sorted times of packets sent with skip_frame
        self._pos = -math.inf  # dts (s) of the last packet demuxed
        self._eof = False
        self._flushed = False
        self._last_time: float | None = None

    # --- public ---------------------------------------------------------------------------
    def frames_at(
        self, times_s: Sequence[float] | np.ndarray, deadline: Deadline
    ) -> tuple[np.ndarray, np.ndarray]:
        """The frames shown at the given times (s from the video start).

        Each result is the last frame whose presentation time is ``<= t`` (the first frame for
        ``t`` before it).

        Returns:
            ``(frames, times)``: uint8 (K, H, W, 3) RGB and float64 (K,) presentation times.

        Raises:
            UnreadableMedia: A requested time lies beyond what can be decoded (truncated or
                corrupt file).
            MediaTimeout: The deadline passed.
        """
        order = np.argsort(np.asarray(times_s, dtype=np.float64), kind="stable")
        targets = [float(times_s[i]) + self._t0 for i in order]  # absolute, ascending
        out: list[np.ndarray | None] = [None] * len(targets)
        out_t = np.zeros(len(targets), dtype=np.float64)
        cache: dict[float, np.ndarray] = {}
        for j, t in enumerate(targets):
            ft, frame = self._find(t, targets[j:], deadline)
            if ft not in cache:
                cache[ft] = self._to_rgb(frame)
            out[order[j]] = cache[ft]
            out_t[order[j]] = ft - self._t0
        return np.stack(out), out_t  # type: ignore[arg-type]

    def close(self) -> None:
        """Close the container."""
        self._container.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- search ---------------------------------------------------------------------------
    def _find(self, t: float, upcoming: list[float], deadline: Deadline) -> tuple[float, Any]:
        """(time, frame) of the last frame <= t; ``upcoming`` are the pending targets."""
        if self._must_seek(t):
            self._seek(t)
        got = self._advance(t, upcoming, deadline)
        if got is not None and not self._skipped_between(got[0], t):
            return got
        # A skipped frame (or an earlier GOP) holds the answer: decode everything from a seek.
        back = 4.0 / self._fps
        while True:
            self._seek(t - back, skip=False)
            got = self._advance(t, [t], deadline)
            start = self._first_time
            if got is not None or start is None or t - back <= self._t0:
                break  # found, or already decoded from the very start
            back *= 4.0  # the keyframe found was after t: look further back
        if got is None:  # t lies before the first frame: the first frame, as OpenCV gives
            got = (start, self._first_frame) if start is not None else None
        if got is None:
            raise UnreadableMedia(f"{self.info.path}: no video frame could be decoded")
        return got

    def _skipped_between(self, lo: float, hi: float) -> bool:
        i = bisect.bisect_right(self._skipped, lo + _EPS)
        return i < len(self._skipped) and self._skipped[i] <= hi + _EPS

    def _must_seek(self, t: float) -> bool:
        if self._prev is not None and t + _EPS < self._prev[0]:
            return True  # going back in time
        if self._next is not None and t + _EPS < self._next[0]:
            return False  # the answer is already held
        if self._eof:
            return self._last_time is None or t + _EPS < self._last_time
        kfs = self._keyframe_times()
        slack = 4.0 / self._fps  # keyframe index times are decode times: allow for reordering
        if kfs:
            i = bisect.bisect_right(kfs, t - slack) - 1
            if i < 0 or (self._demux is None and i == 0):
                return False  # nothing to skip: decode from where we are
            pos = self._t0 if self._demux is None else self._pos
            return kfs[i] > pos + _MIN_SEEK_GAIN_S  # a seek flushes the decoder: worth it if far
        start = self._t0 if self._demux is None else self._pos
        return t - start > _NO_INDEX_SEEK_S

    def _keyframe_times(self) -> list[float]:
        if self._keyframes is None or len(self._keyframes) <= 1:
            tb = float(self._tb)
            self._keyframes = sorted(
                e.timestamp * tb for e in self._stream.index_entries if e.is_keyframe
            )
        return self._keyframes if len(self._keyframes) > 1 else []

    def _seek(self, t: float, skip: bool = True) -> None:
        ts = max(int(math.floor((t - 4.0 / self._fps) / float(self._tb))), 0)
        try:
            self._container.seek(ts, stream=self._stream, backward=True, any_frame=False)
        except av.error.FFmpegError as e:
            raise UnreadableMedia(f"{self.info.path}: seeking failed ({e})") from None
        self._cc.flush_buffers()
        self._reset_run()
        self._skip_enabled = skip
        self._demux = self._container.demux(self._stream)
        self._first_time: float | None = None
        self._first_frame: Any = None

    # --- decoding -------------------------------------------------------------------------
    def _advance(
        self, t: float, upcoming: list[float], deadline: Deadline
    ) -> tuple[float, Any] | None:
        """Decode forward until a frame after ``t`` (or the end); the last frame <= t."""
        if self._demux is None:  # first use: decode from the start, no seek
            self._demux = self._container.demux(self._stream)
            self._skip_enabled = True
            self._first_time = None
            self._first_frame = None
        if self._next is not None and self._next[0] <= t + _EPS:
            self._prev, self._next = self._next, None
        while self._next is None:
            item = self._next_frame(upcoming, deadline)
            if item is None:
                break
            if item[0] <= t + _EPS:
                self._prev = item
            else:
                self._next = item
        if self._next is None and self._prev is not None:  # end of stream before passing t
            self._check_not_truncated(t)
        return self._prev

    def _check_not_truncated(self, t: float) -> None:
        last = self._prev[0] if self._prev is not None else self._t0
        expected = self._t0 + (self.info.video_duration_s or self.info.duration_s or 0.0)
        gap = max(0.25, 3.0 / self._fps)
        if t > last + gap and expected > last + gap:
            raise UnreadableMedia(
                f"{self.info.path}: video decoding ended at {last - self._t0:.2f} s but a frame "
                f"at {t - self._t0:.2f} s was requested and the file claims "
                f"{expected - self._t0:.2f} s; it is truncated or corrupt"
            )

    def _next_frame(self, upcoming: list[float], deadline: Deadline) -> tuple[float, Any] | None:
        """The next decoded frame in presentation order, or None at the end of the stream."""
        margin = 2.0 / self._fps
        while not self._pending:
            if self._flushed:
                self._eof = True
                return None
            deadline.check()
            try:
                packet = next(self._demux, None)
            except av.error.FFmpegError as e:
                logger.warning("%s: demuxing stopped early: %s", self.info.path, e)
                packet = None
            if packet is None or packet.size == 0:  # end: drain the decoder
                frames = self._decode(None)
                self._flushed = True
            else:
                if packet.dts is not None:
                    self._pos = float(packet.dts * self._tb)
                pt = None if packet.pts is None else float(packet.pts * self._tb)
                skip = (
                    self._skip_enabled
                    and pt is not None
                    and not any(u - margin < pt <= u + _EPS for u in upcoming[:4])
                )
                self._cc.skip_frame = "NONREF" if skip else "DEFAULT"
                if skip and pt is not None:
                    bisect.insort(self._skipped, pt)
                frames = self._decode(packet)
            for f in frames:
                ft = self._frame_time(f)
                if self._first_time is None:
                    self._first_time, self._first_frame = ft, f
                self._pending.append((ft, f))
        return self._pending.pop(0)

    def _decode(self, packet: Any) -> list[Any]:
        try:
            return list(self._cc.decode(packet))
        except av.error.EOFError:
            return []
        except av.error.FFmpegError as e:  # a damaged packet: skip it, as ffmpeg/OpenCV do
            self.decode_errors += 1
            if self.decode_errors == 1:
                logger.warning("%s: skipping undecodable video data: %s", self.info.path, e)
            return []

    def _frame_time(self, frame: Any) -> float:
        if frame.pts is not None:
            ft = float(frame.pts * self._tb)
        elif self._last_time is not None:  # no timestamps (some AVI): count frames
            ft = self._last_time + 1.0 / self._fps
        else:
            ft = self._t0
        self._last_time = ft
        return ft

    def _to_rgb(self, frame: Any) -> np.ndarray:
        try:
            rgb = frame.to_ndarray(format="rgb24", src_colorspace=self._src_colorspace)
        except (av.error.FFmpegError, ValueError) as e:
            raise UnreadableMedia(
                f"{self.info.path}: cannot convert a frame to RGB ({e})"
            ) from None
        k = (self.info.rotation // 90) % 4
        if k:
            rgb = np.ascontiguousarray(np.rot90(rgb, k))  # counter-clockwise, as FFmpeg displays
        if self.size is not None:
            from cavmae.features import resize_center_crop

            rgb = resize_center_crop(rgb, self.size)
        return rgb
