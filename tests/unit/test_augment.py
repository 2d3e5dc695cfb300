"""Augmentations: official numbers (noise range, SpecAugment widths, label values) and RNG."""

from __future__ import annotations

import math

import pytest
import torch

from cavmae.errors import ConfigError
from cavmae.features import kaldi_fbank
from training.augment import (
    AugmentConfig,
    add_noise_and_roll,
    draw_mixup,
    mix_fbank,
    mix_images,
    sample_generator,
    smooth_labels,
    spec_augment,
)

T, F = 64, 16


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_presets_match_official_recipes() -> None:
    pt, ft = AugmentConfig.pretrain(), AugmentConfig.finetune()
    assert (pt.noise, pt.freqm, pt.timem, pt.mixup, pt.label_smooth) == (True, 0, 0, 0.0, 0.0)
    assert (ft.noise, ft.freqm, ft.timem, ft.mixup, ft.label_smooth) == (True, 48, 192, 0.5, 0.1)
    assert ft.mixup_alpha == 10.0 and AugmentConfig().is_identity
    assert AugmentConfig.from_dict(ft.to_dict()) == ft
    with pytest.raises(ConfigError):
        AugmentConfig(mixup=1.5)
    with pytest.raises(ConfigError):
        AugmentConfig.from_dict({"nosie": True})


def test_noise_is_uniform_below_r_over_10_and_roll_is_circular_in_time() -> None:
    # Rows carry their index * 10, so after the roll each row tells where it came from.
    x = (torch.arange(T, dtype=torch.float32) * 10.0).unsqueeze(1).expand(T, F).contiguous()
    maxima, shifts = [], set()
    for seed in range(300):
        out = add_noise_and_roll(x, _gen(seed))
        src = torch.div(out, 10.0, rounding_mode="floor")  # (T, F) original row index
        assert bool((src == src[:, :1]).all())  # whole rows move together
        shift = int((0 - src[0, 0].item()) % T)
        assert torch.equal(src[:, 0], (torch.arange(T) - shift) % T)  # circular shift
        noise = out - torch.roll(x, shift, 0)
        assert float(noise.min()) >= 0.0 and float(noise.max()) < 0.1
        maxima.append(float(noise.max()))
        shifts.add(shift)
    # r ~ U[0,1): per-sample maximum noise is ~U[0, 0.1), so its mean is ~0.05.
    assert 0.04 < sum(maxima) / len(maxima) < 0.06
    assert len(shifts) > T // 2  # shifts cover most residues


def test_noise_and_roll_deterministic_given_generator() -> None:
    x = torch.randn(T, F)
    a = add_noise_and_roll(x, _gen(7))
    b = add_noise_and_roll(x, _gen(7))
    c = add_noise_and_roll(x, _gen(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_spec_augment_one_band_each_with_bounded_width() -> None:
    t, f, freqm, timem = 256, 128, 48, 192
    x = torch.rand(t, f) + 1.0  # no zeros before masking
    max_fw = max_tw = 0
    for seed in range(200):
        out = spec_augment(x, freqm, timem, _gen(seed))
        zero = out == 0.0
        cols = zero.all(dim=0).nonzero().flatten()  # masked frequency bins
        rows_full = zero.all(dim=1)
        # Time band: rows that are entirely zero beyond the frequency band.
        rows = (zero.sum(dim=1) == f).nonzero().flatten()
        fw, tw = len(cols), len(rows)
        if fw:
            assert int(cols[-1] - cols[0]) + 1 == fw  # one contiguous band
        if tw:
            assert int(rows[-1] - rows[0]) + 1 == tw
        # Outside the bands nothing changed.
        assert torch.equal(out, x.masked_fill(zero, 0.0))
        assert int(zero.sum()) == fw * t + tw * f - fw * tw
        assert fw <= freqm - 1 and tw <= timem - 1
        max_fw, max_tw = max(max_fw, fw), max(max_tw, tw)
        assert rows_full.sum() == tw
    assert max_fw >= 40 and max_tw >= 160  # widths reach close to the bound


def test_spec_augment_disabled_draws_nothing() -> None:
    x = torch.randn(T, F)
    g = _gen(3)
    assert torch.equal(spec_augment(x, 0, 0, g), x)
    assert torch.equal(torch.rand(4, generator=g), torch.rand(4, generator=_gen(3)))


def test_label_smoothing_values_exact() -> None:
    c, s = 4, 0.1
    y = torch.tensor([0.0, 1.0, 0.0, 0.0])
    out = smooth_labels(y, s)
    assert torch.allclose(out, torch.tensor([0.025, 0.9, 0.025, 0.025]))
    partner = torch.tensor([0.0, 0.0, 1.0, 0.0])
    mixed = smooth_labels(y, s, partner=partner, lam=0.7)
    assert torch.allclose(mixed, torch.tensor([0.025, 0.025 + 0.63, 0.025 + 0.27, 0.025]))
    assert math.isclose(float(mixed.sum()), s + (1 - s), rel_tol=1e-6)
    same = smooth_labels(y, s, partner=y, lam=0.3)
    assert math.isclose(float(same[1]), s / c + 1 - s, rel_tol=1e-6)
    assert torch.equal(smooth_labels(y, 0.0), y)  # eval targets stay 0/1
    with pytest.raises(ConfigError):
        smooth_labels(y, s, partner=partner)


def test_draw_mixup_probability_partner_and_beta() -> None:
    assert draw_mixup(0.0, 10, _gen(0)) is None
    draws = [draw_mixup(1.0, 10, _gen(i)) for i in range(600)]
    lams = torch.tensor([d[1] for d in draws if d])
    partners = {d[0] for d in draws if d}
    assert partners == set(range(10))
    # Beta(10, 10): mean 0.5, std sqrt(1 / (4 * 21)) = 0.109.
    assert abs(float(lams.mean()) - 0.5) < 0.02
    assert 0.095 < float(lams.std()) < 0.125
    half = [draw_mixup(0.5, 10, _gen(i)) for i in range(600)]
    assert 0.42 < sum(d is not None for d in half) / 600 < 0.58
    assert draw_mixup(1.0, 10, _gen(5)) == draw_mixup(1.0, 10, _gen(5))


def test_mix_fbank_waveform_weighting_approximates_waveform_mixup() -> None:
    sr = 16000
    t = torch.arange(2 * sr) / sr
    g = _gen(0)
    w1 = 0.1 * torch.sin(2 * math.pi * 440 * t) + 0.02 * torch.randn(len(t), generator=g)
    w2 = 0.05 * torch.randn(len(t), generator=g)
    f1, f2 = kaldi_fbank(w1, sr, 64), kaldi_fbank(w2, sr, 64)
    lam = 0.6
    ref = kaldi_fbank(lam * w1 + (1 - lam) * w2, sr, 64)
    err_wave = (mix_fbank(f1, f2, lam) - ref).abs().mean()
    err_power = (mix_fbank(f1, f2, lam, weighting="power") - ref).abs().mean()
    assert float(err_wave) < 0.35 < float(err_power)


def test_mix_fbank_lengths_padding_and_silent_partner() -> None:
    f1 = torch.full((10, 3), 2.0)
    f2 = torch.full((10, 3), 1.0)
    out = mix_fbank(f1, f2, 0.5, len1=8, len2=5, weighting="power")
    both = math.log(0.5 * math.exp(2.0) + 0.5 * math.exp(1.0))
    assert torch.allclose(out[:5], torch.full((5, 3), both))
    assert torch.allclose(out[5:8], torch.full((3, 3), 2.0 + math.log(0.5)))  # partner silent
    assert torch.equal(out[8:], torch.zeros(2, 3))  # sample 1's padding stays 0
    assert torch.allclose(mix_fbank(f1, f2, 1.0), f1)


def test_mix_images_uses_same_lambda() -> None:
    a, b = torch.ones(3, 4, 4), torch.zeros(3, 4, 4)
    assert torch.allclose(mix_images(a, b, 0.3), torch.full((3, 4, 4), 0.3))


def test_sample_generator_depends_on_seed_epoch_index() -> None:
    def draw(*args: int) -> torch.Tensor:
        return torch.rand(3, generator=sample_generator(*args))

    assert torch.equal(draw(1, 2, 3), draw(1, 2, 3))
    assert not torch.equal(draw(1, 2, 3), draw(1, 3, 3))
    assert not torch.equal(draw(1, 2, 3), draw(1, 2, 4))
    assert not torch.equal(draw(1, 2, 3), draw(2, 2, 3))
