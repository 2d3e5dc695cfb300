"""cavmae.inversion: log-mel back to audio (mel inversion + Griffin-Lim on Kaldi framing)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cavmae.config import FeatureConfig
from cavmae.errors import ConfigError
from cavmae.features import fbank_features, kaldi_fbank, kaldi_mel_matrix, num_fbank_frames
from cavmae.inversion import fbank_to_waveform, mel_to_linear_power

CFG = FeatureConfig()
SR = CFG.sample_rate


def _tone(freq: float, seconds: float, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _dominant_hz(y: np.ndarray) -> float:
    spec = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    return float(np.fft.rfftfreq(len(y), 1.0 / SR)[spec.argmax()])


@pytest.fixture(scope="module")
def speech(fixtures_dir) -> np.ndarray:
    with np.load(fixtures_dir / "fbank_ref.npz") as d:
        return d["wave__am_speechlike_3p3s"]


def test_tone_comes_back_as_tone():
    wave = _tone(1000.0, 3.0)
    feats = fbank_features(torch.from_numpy(wave), SR, CFG)  # (1024, 128), 298 real frames
    t = num_fbank_frames(len(wave), SR, CFG)
    y = fbank_to_waveform(feats, CFG, num_valid_frames=t)
    assert y.dtype == np.float32 and y.shape == (400 + (t - 1) * 160,)
    assert abs(_dominant_hz(y) - 1000.0) < 20.0
    rms_in, rms_out = float(np.sqrt((wave**2).mean())), float(np.sqrt((y**2).mean()))
    assert 0.7 < rms_out / rms_in < 1.3
    high = fbank_features(torch.from_numpy(_tone(2500.0, 1.0)), SR, CFG)
    assert abs(_dominant_hz(fbank_to_waveform(high, CFG, num_valid_frames=98)) - 2500.0) < 40.0


def test_reconstruction_refits_the_fbank(speech):
    feats = fbank_features(torch.from_numpy(speech), SR, CFG)
    t = num_fbank_frames(len(speech), SR, CFG)
    ref = kaldi_fbank(torch.from_numpy(speech), SR)  # (328, 128)
    loud = ref > -5.0

    def error(n_iter: int) -> float:
        y = fbank_to_waveform(feats, CFG, n_iter=n_iter, num_valid_frames=t)
        rec = kaldi_fbank(torch.from_numpy(y), SR)
        assert rec.shape == ref.shape
        return float((rec - ref).abs()[loud].mean())

    random_phase, converged = error(0), error(32)
    assert converged < 0.3  # natural-log mel units
    assert converged < 0.3 * random_phase


def _log_fit(basis: np.ndarray, power: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(basis @ power, 1.1920929e-07)).T  # (T, F)


def test_mel_inversion_fits_in_the_log_domain(speech):
    ref = kaldi_fbank(torch.from_numpy(speech), SR).double().numpy()  # (T, F)
    basis = kaldi_mel_matrix(128, 512, SR).double().numpy()  # (F, K)
    power = mel_to_linear_power(np.exp(ref).T, basis)  # (K, T)
    assert power.shape == (257, ref.shape[0])
    assert power.min() >= 0.0
    assert np.abs(power[0]).max() == 0.0 and np.abs(power[-1]).max() == 0.0
    loud = ref > -5.0
    assert np.abs(_log_fit(basis, power) - ref)[loud].mean() < 0.02


@pytest.mark.parametrize("name", ["short_0p5s", "long_12s"])
def test_mel_inversion_beats_clipped_pseudo_inverse(fixtures_dir, name):
    with np.load(fixtures_dir / "fbank_ref.npz") as d:
        ref = d[f"fbank__{name}"].astype(np.float64)  # (T, F)
    basis = kaldi_mel_matrix(128, 512, SR).double().numpy()
    loud = ref > -5.0
    ours = np.abs(_log_fit(basis, mel_to_linear_power(np.exp(ref).T, basis)) - ref)[loud]
    pinv = np.clip(np.linalg.pinv(basis) @ np.exp(ref).T, 0.0, None)
    baseline = np.abs(_log_fit(basis, pinv) - ref)[loud]
    assert ours.mean() < 0.01
    assert ours.mean() < 0.3 * baseline.mean()


def test_deterministic_accepts_numpy_and_uses_valid_frames():
    feats = fbank_features(torch.from_numpy(_tone(440.0, 1.0, amp=0.01)), SR, CFG)
    a = fbank_to_waveform(feats, CFG, n_iter=4, num_valid_frames=98)
    b = fbank_to_waveform(feats.numpy(), CFG, n_iter=4, num_valid_frames=98, seed=0)
    np.testing.assert_array_equal(a, b)
    c = fbank_to_waveform(feats, CFG, n_iter=4, num_valid_frames=98, seed=1)
    assert not np.array_equal(a, c)
    full = fbank_to_waveform(feats, CFG, n_iter=4)  # padded tail rendered too
    assert full.shape == (400 + 1023 * 160,)
    # The padded tail (log-mel 0) is loud compared with this quiet tone.
    assert np.sqrt((full[20000:] ** 2).mean()) > 10 * np.sqrt((a**2).mean())


def test_invalid_inputs():
    with pytest.raises(ConfigError):
        fbank_to_waveform(torch.zeros(100, 64), CFG)
    with pytest.raises(ConfigError):
        fbank_to_waveform(torch.zeros(100, 128), CFG, num_valid_frames=0)
    with pytest.raises(ConfigError):
        fbank_to_waveform(torch.full((100, 128), float("nan")), CFG)
