"""Writing mono waveforms as 16-bit PCM WAV files (standard library ``wave``, no extra codec)."""

from __future__ import annotations

import os
import wave
from pathlib import Path

import numpy as np

__all__ = ["write_wav"]


def write_wav(
    path: str | os.PathLike[str], waveform: np.ndarray, sample_rate: int, peak: float | None = 0.99
) -> Path:
    """Writes a float waveform (N,) in [-1, 1] as a mono 16-bit PCM WAV file.

    Args:
        path: destination file.
        waveform: (N,) float samples.
        sample_rate: samples per second.
        peak: if the waveform's peak exceeds this, it is scaled down to it (reconstructed audio
            can overshoot); None only clips.

    Returns:
        The path written.
    """
    w = np.asarray(waveform, dtype=np.float64).reshape(-1)  # (N,)
    top = float(np.max(np.abs(w))) if w.size else 0.0
    if peak is not None and top > peak:
        w = w * (peak / top)
    pcm = np.round(np.clip(w, -1.0, 1.0) * 32767.0).astype("<i2")  # (N,)
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(int(sample_rate))
        f.writeframes(pcm.tobytes())
    return Path(path)
