"""Sound synthesis of AV-Shapes clips, vectorised over samples with numpy.

Each class sound is generated over the whole clip with a continuous phase, normalised to unit
RMS, then gated by the source's events (each one a note: a 5 ms attack with an accent that
decays over the first 150 ms, a 30 ms release) and scaled to the source's level, which its
shade sets; its pitch follows its size. A quiet pink background noise is added at
``cfg.noise_level``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from training.synthetic.classes import CLASSES
from training.synthetic.config import AVShapesConfig
from training.synthetic.plan import STREAM_NOISE, ClipPlan, ObjectPlan, clip_rng

__all__ = ["SOUNDS", "render_audio", "class_sound"]

_ATTACK_S, _RELEASE_S = 0.005, 0.03  # raised-cosine edges inside each event (no clicks)
_ACCENT, _ACCENT_S = 0.6, 0.05  # onset accent: +60 % gain decaying with this time constant


# Generators: (t (N,) float64 seconds, sample rate, class params, pitch factor, rng) -> (N,).
# Phases are kept in cycles in float64 and wrapped before the float32 sine (``_osc``), which is
# both exact over long clips and fast.
def _osc(cycles: np.ndarray, offset: float = 0.0) -> np.ndarray:
    """sin(2 pi (cycles + offset)) in float32, for phases given in cycles (N,) float64."""
    c = cycles + offset
    return np.sin((2 * np.pi * (c - np.floor(c))).astype(np.float32))


def _partials(cycles: np.ndarray, amps: tuple[float, ...], rng) -> np.ndarray:
    """Harmonic partials h = 1, 2, ... with amplitudes ``amps`` of a phase in cycles (N,)."""
    return sum(a * _osc(h * cycles, rng.uniform(0, 1)) for h, a in enumerate(amps, start=1))


def _tone(t, sr, p, k, rng):
    """A flute-like tone: the fundamental with two soft harmonics."""
    return _partials(p["freq"] * k * t, (1.0, 0.3, 0.12), rng)


def _sweep(t, sr, p, k, rng):
    """Repeated log-frequency sweeps from f_start to f_end, each with a soft envelope."""
    period = p["period"] * rng.uniform(0.9, 1.1)
    frac = np.mod(t / period + rng.uniform(0, 1), 1.0)  # (N,) position inside a sweep
    freq = k * p["f_start"] * np.exp(np.log(p["f_end"] / p["f_start"]) * frac)  # (N,) Hz
    envelope = np.sqrt(np.maximum(np.sin(np.pi * frac.astype(np.float32)), 0))  # float32 sin < 0
    return _osc(np.cumsum(freq) / sr) * envelope


def _harmonics(t, sr, p, k, rng):
    """A buzzy harmonic stack with 1/h amplitudes."""
    cycles = p["freq"] * k * t
    base = (2 * np.pi * (cycles - np.floor(cycles))).astype(np.float32)  # (N,) wrapped phase
    out = np.zeros_like(base)
    for h in range(1, int(p["num_harmonics"]) + 1):
        out += np.sin(h * base + np.float32(rng.uniform(0, 2 * np.pi))) / np.float32(h)
    return out


def _noise_band(t, sr, p, k, rng):
    """Gaussian noise band-limited between f_low and f_high with smooth edges.

    The spectrum is drawn directly (i.i.d. complex Gaussian bins, which is white noise), so only
    one inverse FFT is needed.
    """
    n = t.shape[0]
    f = np.fft.rfftfreq(n, 1.0 / sr).astype(np.float32)  # (N//2 + 1,)
    lo, hi = p["f_low"] * k, p["f_high"] * k
    width = 0.1 * (hi - lo)
    mask = np.clip((f - lo) / width + 0.5, 0, 1) * np.clip((hi - f) / width + 0.5, 0, 1)
    return np.fft.irfft(_white_spectrum(f.shape[0], rng) * mask, n)


def _white_spectrum(num_bins: int, rng: np.random.Generator) -> np.ndarray:
    """Spectrum of white Gaussian noise: i.i.d. complex normal bins, (num_bins,) complex64."""
    return rng.standard_normal(2 * num_bins).view(np.complex128).astype(np.complex64)


def _clicks(t, sr, p, k, rng):
    """A train of short damped 'tick' resonances at a steady rate."""
    rate = p["rate"] * k
    tau = np.mod(t * rate + rng.uniform(0, 1), 1.0) / rate  # (N,) seconds since the last tick
    return np.exp(-tau.astype(np.float32) / 0.004) * _osc(p["freq"] * k * tau)


def _am_tone(t, sr, p, k, rng):
    """A tone with a deep amplitude tremolo."""
    envelope = 0.5 + 0.5 * _osc(p["mod_rate"] * t, rng.uniform(0, 1))
    return _partials(p["freq"] * k * t, (1.0, 0.3), rng) * (0.1 + 0.9 * envelope)


def _fm_tone(t, sr, p, k, rng):
    """A tone whose frequency warbles sinusoidally (vibrato)."""
    depth = p["deviation"] * k / p["mod_rate"] / (2 * np.pi)  # peak phase deviation, cycles
    mod = _osc(p["mod_rate"] * t, rng.uniform(0, 1))
    return _partials(p["freq"] * k * t + depth * mod, (1.0, 0.35), rng)


def _siren(t, sr, p, k, rng):
    """Two tones alternating at ``rate`` switches per second (a two-tone siren)."""
    high = np.mod(t * p["rate"] + rng.uniform(0, 2), 2.0) >= 1.0  # (N,) bool
    freq = k * np.where(high, p["f_high"], p["f_low"])
    return _partials(np.cumsum(freq) / sr, (1.0, 0.35), rng)


SOUNDS: dict[str, Callable[..., np.ndarray]] = {
    "tone": _tone,
    "sweep": _sweep,
    "harmonics": _harmonics,
    "noise_band": _noise_band,
    "clicks": _clicks,
    "am_tone": _am_tone,
    "fm_tone": _fm_tone,
    "siren": _siren,
}


def class_sound(
    class_id: int, num_samples: int, sample_rate: int, pitch: float, rng: np.random.Generator
) -> np.ndarray:
    """Returns a class's continuous sound at unit RMS.

    Args:
        class_id: index into ``CLASSES``.
        num_samples: length N.
        sample_rate: samples per second.
        pitch: multiplier of every class frequency.
        rng: generator of the random phases and noise.

    Returns:
        The sound, shape (N,) float32, RMS 1.
    """
    spec = CLASSES[class_id]
    params: Mapping[str, float] = spec.params
    t = np.arange(num_samples, dtype=np.float64) / sample_rate  # (N,)
    x = SOUNDS[spec.sound](t, sample_rate, params, pitch, rng).astype(np.float32)
    return x / np.float32(max(float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))), 1e-8))


def _rise(m: int) -> np.ndarray:
    """A raised-cosine ramp from 0 to 1 over m samples, (m,) float32."""
    return 0.5 * (1 - np.cos(np.pi * (np.arange(m, dtype=np.float32) + 0.5) / m))


def event_envelope(obj: ObjectPlan, cfg: AVShapesConfig) -> np.ndarray:
    """Returns the gain of a source over time, (N,): a note per event, 0 outside events."""
    n, sr = cfg.num_samples, cfg.sample_rate
    env = np.zeros(n, dtype=np.float32)
    for (start, end), gain in zip(obj.events, obj.event_gains, strict=True):
        a, b = int(round(start * sr / cfg.fps)), min(n, int(round(end * sr / cfg.fps)))
        if b <= a:
            continue
        t = np.arange(b - a, dtype=np.float32) / sr  # (b - a,) seconds since the onset
        note = gain * (1.0 + _ACCENT * np.exp(-t / _ACCENT_S)) / (1.0 + _ACCENT)
        attack, release = (max(1, min(int(d * sr), (b - a) // 2)) for d in (_ATTACK_S, _RELEASE_S))
        note[:attack] *= _rise(attack)
        note[len(note) - release:] *= _rise(release)[::-1]
        env[a:b] = note
    return env


def _pink_noise(n: int, rng: np.random.Generator, sample_rate: int) -> np.ndarray:
    """Unit-RMS pink (1/f power) noise, flat below 50 Hz, shape (n,)."""
    f = np.fft.rfftfreq(n, 1.0 / sample_rate).astype(np.float32)  # (n//2 + 1,)
    x = np.fft.irfft(_white_spectrum(f.shape[0], rng) / np.sqrt(np.maximum(f, 50.0)), n)
    return x / np.float32(max(float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))), 1e-8))


def render_audio(plan: ClipPlan, cfg: AVShapesConfig) -> np.ndarray:
    """Renders the sound sources and background noise of a plan.

    For a mismatched clip, pass the plan of its audio source (``audio_source_index``).

    Args:
        plan: the clip plan whose sources sound.
        cfg: dataset configuration.

    Returns:
        The waveform, shape (N,) float32 in [-1, 1], N = ``cfg.num_samples``.
    """
    rng = clip_rng(plan.seed, plan.index, STREAM_NOISE)
    n = cfg.num_samples
    out = cfg.noise_level * _pink_noise(n, rng, cfg.sample_rate)  # (N,)
    mix_gain = 1.0 / np.sqrt(len(plan.sources))  # a mixture is about as loud as one source
    for obj in plan.sources:
        sound = class_sound(obj.class_id, n, cfg.sample_rate, obj.pitch, rng)
        out += mix_gain * obj.level * event_envelope(obj, cfg) * sound
    return np.clip(out, -1.0, 1.0).astype(np.float32)
