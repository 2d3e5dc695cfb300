"""PCM audio from any container through the imageio-ffmpeg binary, read from a pipe.

The binary is never put on ``PATH`` (Gradio would then look for ffprobe, which does not
exist here; ENVIRONMENT.md). Its path comes from ``imageio_ffmpeg.get_ffmpeg_exe()``.

:class:`PcmPipe` starts one ffmpeg process that decodes one audio stream, resamples it with
FFmpeg's default resampler (as the official ``ffmpeg -ar 16000`` extraction did,
OFFICIAL_CAVMAE.md §4.1) and writes interleaved little-endian PCM to stdout. Two daemon
threads move stdout and stderr into bounded queues, so the caller can read incrementally with
a deadline (bounded memory for long files, no pipe deadlock, works on every OS) and can decode
video in the meantime (the audio is decoded in parallel by the subprocess).
"""

from __future__ import annotations

import functools
import logging
import queue
import re
import subprocess
import threading
from collections import deque
from pathlib import Path

import numpy as np

from cavmae.errors import MediaError, MediaTimeout

__all__ = ["ffmpeg_exe", "PcmPipe"]

logger = logging.getLogger(__name__)

_CHUNK_BYTES = 1 << 16
_QUEUE_CHUNKS = 64  # up to 4 MiB buffered ahead of the reader (about 2 min of 16 kHz mono)
_STDERR_KEEP = 40  # stderr lines kept for error messages
_PREFIX = re.compile(r"^(\[[^\]]*@ 0x[0-9a-f]+\]\s*)+")  # "[dec:aac @ 0x55...] " context tags


@functools.lru_cache(maxsize=1)
def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary shipped with ``imageio-ffmpeg``.

    Raises:
        MediaError: If the package or its binary is missing.
    """
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError) as e:
        raise MediaError(
            f"no ffmpeg binary available for audio decoding ({e}); install imageio-ffmpeg"
        ) from None


class PcmPipe:
    """One ffmpeg process decoding an audio stream to interleaved PCM on a pipe.

    Args:
        path: Absolute path of the media file.
        stream_index: Container index of the audio stream to decode.
        sample_rate: Output sampling rate (FFmpeg's default resampler).
        channels: Channel count of the stream; the output keeps every channel.
        start_s: Input seek in seconds (accurate: ffmpeg decodes and trims).
        duration_s: Output duration limit in seconds (``None``: to the end). As an output
            option it cuts after resampling, so the samples equal those of a full decode.
        pcm16: Write 16-bit PCM (the official wav files were 16-bit) instead of float32.
    """

    def __init__(
        self,
        path: Path,
        stream_index: int,
        sample_rate: int,
        channels: int,
        start_s: float = 0.0,
        duration_s: float | None = None,
        pcm16: bool = True,
    ) -> None:
        self.path = path
        self.channels = channels
        self.sample_rate = sample_rate
        self._dtype = np.dtype("<i2") if pcm16 else np.dtype("<f4")
        self._scale = 1.0 / 32768.0 if pcm16 else 1.0
        fmt = "s16le" if pcm16 else "f32le"
        cmd = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error"]
        if start_s > 0:
            cmd += ["-ss", f"{start_s:.6f}"]
        # "file:" keeps names such as "pipe:x" or "http:..." from being read as protocols.
        cmd += ["-i", f"file:{path}", "-map", f"0:{stream_index}", "-vn", "-sn", "-dn"]
        cmd += ["-ar", str(sample_rate), "-ac", str(channels)]
        if duration_s is not None:
            cmd += ["-t", f"{duration_s:.6f}"]
        cmd += ["-f", fmt, "-acodec", f"pcm_{fmt}", "pipe:1"]
        self._proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self._out: queue.Queue[bytes | None] = queue.Queue(maxsize=_QUEUE_CHUNKS)
        self._err: deque[str] = deque(maxlen=_STDERR_KEEP)
        self._closed = threading.Event()
        self._pending = bytearray()
        self._eof = False
        self._threads = (
            threading.Thread(target=self._pump_out, name="cavmae-ffmpeg-out", daemon=True),
            threading.Thread(target=self._pump_err, name="cavmae-ffmpeg-err", daemon=True),
        )
        for t in self._threads:
            t.start()

    # --- background threads ---------------------------------------------------------------
    def _pump_out(self) -> None:
        stdout = self._proc.stdout
        assert stdout is not None
        while True:
            chunk = stdout.read1(_CHUNK_BYTES)  # type: ignore[attr-defined]  # a BufferedReader
            item = chunk if chunk else None
            while not self._closed.is_set():  # wait for room, unless the reader has gone
                try:
                    self._out.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if item is None or self._closed.is_set():
                return

    def _pump_err(self) -> None:
        stderr = self._proc.stderr
        assert stderr is not None
        for line in iter(stderr.readline, b""):
            text = _PREFIX.sub("", line.decode("utf-8", "replace")).strip()
            if text:
                self._err.append(text)

    # --- reading --------------------------------------------------------------------------
    @property
    def eof(self) -> bool:
        """True once ffmpeg has closed its output and every sample has been read."""
        return self._eof and not self._pending

    def read(self, num_samples: int | None, timeout_s: float | None) -> np.ndarray:
        """Read up to ``num_samples`` samples per channel (all remaining ones for ``None``).

        Fewer come back only at the end of the stream.

        Returns:
            float32 array (n, C) in [-1, 1].

        Raises:
            MediaTimeout: No data arrived within ``timeout_s`` (the process is killed).
        """
        frame_bytes = self._dtype.itemsize * self.channels
        want = None if num_samples is None else num_samples * frame_bytes
        while not self._eof and (want is None or len(self._pending) < want):
            try:
                chunk = self._out.get(timeout=timeout_s)
            except queue.Empty:
                self.close()
                raise MediaTimeout(
                    f"{self.path}: audio decoding produced no data for {timeout_s:g} s and was "
                    "stopped; the file may be damaged, or raise timeout_s"
                ) from None
            if chunk is None:
                self._eof = True
            else:
                self._pending += chunk
        take = len(self._pending) if want is None else min(want, len(self._pending))
        take -= take % frame_bytes
        view = np.frombuffer(self._pending, dtype=self._dtype, count=take // self._dtype.itemsize)
        out = view.astype(np.float32).reshape(-1, self.channels)  # (n, C)
        del view  # release the buffer before resizing it
        del self._pending[:take]
        if self._scale != 1.0:
            out *= self._scale
        return out

    def finish(self, timeout_s: float | None = 5.0) -> tuple[int | None, list[str]]:
        """Wait for the process to exit after EOF; returns (exit code, last stderr lines)."""
        try:
            code = self._proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.close()
            code = None
        self._threads[1].join(timeout=1.0)
        return code, list(self._err)

    def close(self) -> None:
        """Stop the process (if still running) and release the pipes."""
        self._closed.set()
        if self._proc.poll() is None:
            self._proc.kill()
        try:
            self._proc.wait(timeout=5.0)
        except subprocess.TimeoutExpired:  # pragma: no cover - a killed process always exits
            logger.warning("ffmpeg (pid %d) did not exit after kill", self._proc.pid)
        for t in self._threads:  # they end at EOF, which the exit of the process guarantees
            t.join(timeout=2.0)
        for f in (self._proc.stdout, self._proc.stderr):
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass

    def __enter__(self) -> PcmPipe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
