"""Audio decoding: any file's audio stream to a float32 waveform at the model's sampling rate.

Parity (OFFICIAL_CAVMAE.md §4.1, pitfall 11): the official extraction ran
``ffmpeg -i video -vn -ar 16000 x.wav`` (FFmpeg's default resampler, 16-bit PCM) and then
``sox x.wav out.wav remix 1`` (first channel only); torchaudio then read the wav as
``int16 / 32768``. :func:`decode_audio` reproduces that chain sample for sample with the same
FFmpeg resampler: every channel is decoded and resampled, written as 16-bit PCM, and the
first channel is kept (``channel="first"``). ``channel="mix"`` averages the channels instead,
and ``pcm16=False`` skips the 16-bit quantisation.
"""

from __future__ import annotations

import logging
import os
from typing import Literal

import numpy as np

from cavmae.errors import ClipTooShort, ConfigError, NoAudioStream, UnreadableMedia
from cavmae.media._ffmpeg import PcmPipe
from cavmae.media.probing import Deadline, MediaInfo, probe

__all__ = [
    "Channel",
    "check_channel",
    "check_decoded_length",
    "decode_audio",
    "finish_waveform",
    "open_pcm",
    "select_channel",
]

logger = logging.getLogger(__name__)

Channel = Literal["first", "mix"]

#: A decode is "short" (truncated file) when it misses more than this many seconds ...
_SHORT_ABS_S = 0.5
#: ... and more than this fraction of what the headers promise. A few damaged packets in the
#: middle (a fraction of a second) are skipped with a warning, as ffmpeg itself does.
_SHORT_REL = 0.05


def select_channel(pcm: np.ndarray, channel: Channel) -> np.ndarray:
    """Mono from interleaved PCM (n, C): the first channel or the channel mean.

    Returns:
        float32 (n,), contiguous.
    """
    if channel == "first":
        return np.ascontiguousarray(pcm[:, 0])  # Parity: sox "remix 1" keeps channel 1 only
    return pcm.mean(axis=1, dtype=np.float32)


def check_channel(channel: str) -> None:
    if channel not in ("first", "mix"):
        raise ConfigError(f"channel must be 'first' or 'mix', got {channel!r}")


def open_pcm(
    info: MediaInfo,
    sample_rate: int,
    start_s: float = 0.0,
    duration_s: float | None = None,
    pcm16: bool = True,
) -> PcmPipe:
    """Start decoding the audio stream of a probed file (see :class:`PcmPipe`).

    Raises:
        NoAudioStream: The file has no audio stream.
    """
    if not info.has_audio or info.audio_stream is None or not info.channels:
        what = "a still image" if info.is_image else "a file without an audio stream"
        raise NoAudioStream(
            f"{info.path} is {what}; use a file with sound, or the visual-only path"
        )
    return PcmPipe(
        info.path, info.audio_stream, sample_rate, info.channels, start_s, duration_s, pcm16
    )


def check_decoded_length(
    info: MediaInfo, got_s: float, start_s: float, duration_s: float | None, errors: list[str]
) -> None:
    """Raise :class:`UnreadableMedia` when far less audio came out than the headers promise.

    A file cut short (interrupted download) decodes "successfully" up to the cut; FFmpeg only
    logs errors. Such a result is refused instead of being padded silently. Containers whose
    duration is an estimate (VBR mp3) are only refused when errors were logged too.
    """
    total = info.audio_duration_s or info.duration_s
    if total is None:
        return
    expected = max(0.0, total - start_s)
    if duration_s is not None:
        expected = min(expected, duration_s)
    missing = expected - got_s
    if missing <= max(_SHORT_ABS_S, _SHORT_REL * expected):
        return
    if errors or got_s < 0.5 * expected:
        detail = f"; ffmpeg said: {errors[-1]}" if errors else ""
        raise UnreadableMedia(
            f"{info.path}: audio decoding stopped at {start_s + got_s:.2f} s but the file "
            f"claims {total:.2f} s; it is truncated or corrupt{detail}"
        )


def decode_audio(
    path: str | os.PathLike[str],
    sample_rate: int = 16000,
    channel: Channel = "first",
    start_s: float = 0.0,
    duration_s: float | None = None,
    timeout_s: float | None = 60.0,
    *,
    pcm16: bool = True,
    info: MediaInfo | None = None,
) -> np.ndarray:
    """Decode an audio stream to mono float32 at ``sample_rate``, as the official extraction.

    Args:
        path: Any file with an audio stream (video or audio container).
        sample_rate: Output rate in Hz (16000 for CAV-MAE).
        channel: ``"first"`` keeps the first channel (official); ``"mix"`` averages channels.
        start_s: Offset in seconds where decoding starts.
        duration_s: Seconds to decode (``None``: to the end of the stream).
        timeout_s: Limit for the whole call (``None``: unbounded).
        pcm16: Quantise to 16-bit PCM as the official wav files were (default True).
        info: The file's :class:`MediaInfo` if already probed.

    Returns:
        float32 array (N,) in [-1, 1].

    Raises:
        NoAudioStream: The file has no audio stream.
        ClipTooShort: No sample was decoded in the requested span.
        UnreadableMedia: ffmpeg failed, or the stream is truncated.
        MediaTimeout: Decoding exceeded ``timeout_s``.
        ConfigError: Invalid ``channel``, ``start_s`` or ``duration_s``.
    """
    check_channel(channel)
    if start_s < 0 or (duration_s is not None and duration_s <= 0):
        raise ConfigError(f"need start_s >= 0 and duration_s > 0, got {start_s}, {duration_s}")
    deadline = Deadline(timeout_s, f"decoding audio of {path}")
    info = info if info is not None else probe(path, timeout_s)
    with open_pcm(info, sample_rate, start_s, duration_s, pcm16) as pipe:
        pcm = pipe.read(None, deadline.remaining())  # (N, C)
        code, errors = pipe.finish(deadline.remaining())
    return finish_waveform(info, pcm, code, errors, channel, sample_rate, start_s, duration_s)


def finish_waveform(
    info: MediaInfo,
    pcm: np.ndarray,
    code: int | None,
    errors: list[str],
    channel: Channel,
    sample_rate: int,
    start_s: float,
    duration_s: float | None,
) -> np.ndarray:
    """Validate a finished decode and reduce it to mono (shared with :mod:`clip`)."""
    if code:
        raise UnreadableMedia(
            f"{info.path}: ffmpeg could not decode the audio (exit code {code}): "
            f"{errors[-1] if errors else 'no message'}"
        )
    if errors:
        logger.warning("%s: ffmpeg reported decoding errors: %s", info.path, errors[-1])
    if duration_s is not None:
        pcm = pcm[: int(round(duration_s * sample_rate))]
    if len(pcm) == 0:
        raise ClipTooShort(
            f"{info.path}: no audio samples from {start_s:.2f} s on (the stream lasts "
            f"{info.audio_duration_s or info.duration_s or 0:.2f} s)"
        )
    check_decoded_length(info, len(pcm) / sample_rate, start_s, duration_s, errors)
    return select_channel(pcm, channel)
