"""Training options beyond the official objective (all off by default and in official recipes):
audio-to-patch InfoNCE, audio mask-ratio range, short audio windows; and float32 contrastive
logits under bfloat16 autocast."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cavmae.config import FeatureConfig, cavmae_tiny
from cavmae.errors import ConfigError
from cavmae.models import CAVMAE
from cavmae.models.losses import contrastive_loss, patch_contrastive_loss
from training.augment import AugmentConfig, audio_window
from training.config import PretrainConfig, load_recipe
from training.data.prepare import raw_fbank
from training.pretrain import PretrainObjective, draw_mask_ratio
from training.recipes import list_recipes


def _tokens(b: int = 6, k: int = 5, d: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Audio tokens whose mean is clip-specific, and visual tokens with one matching patch."""
    g = torch.Generator().manual_seed(seed)
    audio = torch.randn(b, 4, d, generator=g)
    visual = torch.randn(b, k, d, generator=g)
    for i in range(b):
        visual[i, i % k] = audio[i].mean(0) * 10  # the "sounding object" patch of frame i
    return audio, visual


def test_patch_contrast_finds_the_matching_patch_and_fails_when_shuffled() -> None:
    audio, visual = _tokens()
    loss, acc = patch_contrastive_loss(audio, visual, temperature=0.05)
    assert acc == 1.0 and loss < 0.05
    shuffled, acc_s = patch_contrastive_loss(audio, visual.roll(1, dims=0), temperature=0.05)
    assert acc_s == 0.0 and shuffled > 2.0


def test_patch_contrast_gradient_reaches_only_the_best_patch() -> None:
    audio, visual = _tokens(b=3, k=4)
    visual.requires_grad_(True)
    loss, _ = patch_contrastive_loss(audio, visual)
    loss.backward()
    norms = visual.grad.norm(dim=-1)  # (B, K)
    for j in range(3):
        best = (F.normalize(audio.mean(1), dim=-1) @ F.normalize(visual[j], dim=-1).T).argmax(1)
        assert set(torch.nonzero(norms[j]).flatten().tolist()) <= set(best.tolist())


def test_patch_contrast_top_k_scores_a_frame_by_its_k_best_patches() -> None:
    audio, visual = _tokens(b=4, k=6)
    a = F.normalize(audio.mean(1), dim=-1)  # (B, D)
    cos = torch.einsum("id,jkd->ijk", a, F.normalize(visual, dim=-1))  # (B, B, K)
    for k, pooled in ((1, cos.amax(-1)), (3, cos.sort(-1, descending=True).values[..., :3].mean(-1)),
                      (6, cos.mean(-1)), (50, cos.mean(-1))):  # more than K: all patches
        scores = pooled / 0.05
        target = torch.arange(4)
        want = (F.cross_entropy(scores, target) + F.cross_entropy(scores.t(), target)) / 2
        got, _ = patch_contrastive_loss(audio, visual, temperature=0.05, top_k=k)
        assert float(got) == pytest.approx(float(want), rel=1e-5)
    visual.requires_grad_(True)
    patch_contrastive_loss(audio, visual, top_k=3)[0].backward()
    assert ((visual.grad.norm(dim=-1) > 0).sum(-1) > 1).all()  # more than one patch per frame
    with pytest.raises(ValueError, match="top_k"):
        patch_contrastive_loss(audio, visual, top_k=0)
    with pytest.raises(ConfigError, match="patch_contrast_topk"):
        PretrainConfig(patch_contrast_topk=0)


def test_contrastive_logits_stay_float32_under_bfloat16_autocast() -> None:
    # Embeddings 0.99 alike, as at the start of training: bfloat16 logits cannot tell them apart.
    g = torch.Generator().manual_seed(0)
    common = torch.randn(1, 64, generator=g)
    a = common + 0.1 * torch.randn(32, 64, generator=g)
    v = common + 0.1 * torch.randn(32, 64, generator=g) + 0.05 * a
    exact = contrastive_loss(a, v, bidirect_contrast=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cast = contrastive_loss(a.bfloat16(), v.bfloat16(), bidirect_contrast=True)
        patch = patch_contrastive_loss(a.bfloat16()[:, None], v.bfloat16()[:, None])
    assert cast[0].dtype == torch.float32 and patch[0].dtype == torch.float32
    # Only the inputs' own bfloat16 rounding remains (not the logits' rounding).
    ref = contrastive_loss(a.bfloat16().float(), v.bfloat16().float(), bidirect_contrast=True)
    assert float(cast[0]) == pytest.approx(float(ref[0]), abs=1e-6)
    assert float(cast[0]) == pytest.approx(float(exact[0]), rel=1e-2)


def test_forward_returns_the_encoder_output_on_request() -> None:
    torch.manual_seed(0)
    m = CAVMAE.from_config(cavmae_tiny()).eval()
    a, v = torch.randn(2, 64, 32), torch.randn(2, 3, 32, 32)
    g = torch.Generator().manual_seed(1)
    out = m(a, v, 0.5, 0.5, generator=g)
    out2, enc = m(a, v, 0.5, 0.5, generator=torch.Generator().manual_seed(1), return_encoder=True)
    torch.testing.assert_close(out.loss, out2.loss)
    assert enc.ca.shape == (2, 4, 32) and enc.cv.shape == (2, 2, 32)


class _Recorder(torch.nn.Module):
    """Wraps a model and records the audio mask ratio of each call."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.ratios: list[float] = []

    def forward(self, audio, imgs, ratio_a, *args, **kwargs):
        self.ratios.append(float(ratio_a))
        return self.model(audio, imgs, ratio_a, *args, **kwargs)


def test_objective_adds_the_patch_term_and_draws_audio_ratios_in_range() -> None:
    torch.manual_seed(0)
    model = _Recorder(CAVMAE.from_config(cavmae_tiny()))
    batch = {"fbank": torch.randn(4, 64, 32), "image": torch.randn(4, 3, 32, 32)}
    cfg = PretrainConfig(model="cavmae_tiny", contrast_loss_weight=0.1, patch_contrast_weight=0.5,
                         mask_ratio_a_range=(0.25, 0.9))
    model.train()
    out = PretrainObjective(cfg)(model, batch)
    for _ in range(20):
        PretrainObjective(cfg)(model, batch)
    assert {"loss_p", "p_acc"} <= set(out.logs)
    parts = out.logs["loss_mae"] + out.logs["loss_c"] + out.logs["loss_p"]
    assert float(out.loss.detach()) == pytest.approx(float(parts), rel=1e-5)
    assert all(0.25 <= r <= 0.9 for r in model.ratios) and len(set(model.ratios)) > 10
    model.eval()  # evaluation keeps the configured ratio
    PretrainObjective(cfg, generator=torch.Generator().manual_seed(0))(model, batch)
    assert model.ratios[-1] == cfg.mask_ratio_a
    plain = PretrainObjective(PretrainConfig(model="cavmae_tiny"))(model, batch)
    assert "loss_p" not in plain.logs


def test_new_options_are_off_in_every_official_recipe_and_validated() -> None:
    for name in list_recipes():
        recipe = load_recipe(name)
        assert recipe.get("patch_contrast_weight", 0.0) == 0.0
        assert recipe.get("mask_ratio_a_range") is None
        assert recipe.get("augment", {}).get("window_prob", 0.0) == 0.0
        assert recipe.get("class_groups", 0) == 0
    with pytest.raises(ConfigError):
        PretrainConfig(patch_contrast_weight=-1.0)
    with pytest.raises(ConfigError, match="class_groups"):
        PretrainConfig(class_groups=-2)
    with pytest.raises(ConfigError):
        PretrainConfig(mask_ratio_a_range=(0.9, 0.5))
    with pytest.raises(ConfigError):
        AugmentConfig(window_prob=1.5)


def test_audio_window_equals_the_fbank_of_the_window_samples() -> None:
    cfg = FeatureConfig()
    rng = np.random.default_rng(0)
    t = np.arange(10 * cfg.sample_rate) / cfg.sample_rate
    wave = (0.1 * np.sin(2 * np.pi * (300 + 40 * t) * t) + 0.01 * rng.standard_normal(t.size))
    full, n = raw_fbank(wave.astype(np.float32), cfg)
    full_t = torch.from_numpy(full.astype(np.float32))
    for centre in (4.9, 0.3, 9.8):  # inside, and moved in from both ends
        win = audio_window(full_t, n, centre, 2.0, cfg)
        start = min(max(centre - 1.0, 0.0), 8.0)
        a = int(round(start * cfg.sample_rate))
        ref, m = raw_fbank(wave[a : a + 2 * cfg.sample_rate].astype(np.float32), cfg)
        assert m == 198
        np.testing.assert_allclose(win.numpy(), ref.astype(np.float32), atol=0.02)
        assert (win[m:] == 0).all()


def test_a_windowed_sample_is_the_window_around_its_frame(tmp_path) -> None:
    from cavmae.features import frames_to_tensor, normalize_fbank
    from training.data import prepare_synthetic
    from training.data.datasets import PreparedDataset
    from training.synthetic import AVShapesConfig

    syn = AVShapesConfig(size=32, distractor_prob=0.0)
    prepare_synthetic(tmp_path / "d", 2, seed=3, cfg=syn, workers=0)
    windowed = PreparedDataset(tmp_path / "d", train=True, augment=AugmentConfig(window_prob=1.0))
    cfg = windowed.feature_config
    times = windowed.items[1]["synthetic"]["frame_times"]
    frames = [frames_to_tensor(windowed._frame(1, k), cfg) for k in range(10)]
    raw, n = windowed._raw_fbank(1)
    drawn = set()
    for epoch in range(6):
        windowed.set_epoch(epoch)
        s = windowed[1]
        k = next(j for j, f in enumerate(frames) if torch.equal(f, s["image"]))
        drawn.add(k)
        expected = normalize_fbank(audio_window(raw, n, times[k], 2.0, cfg), cfg)  # not rolled
        torch.testing.assert_close(s["fbank"], expected)
    assert len(drawn) > 1
    plain = PreparedDataset(tmp_path / "d", train=True, augment=AugmentConfig(freqm=1))
    assert plain[1]["fbank"][400:].std() > 0  # unwindowed samples keep the whole clip


def test_temporal_pair_is_the_same_clip_at_another_time(tmp_path) -> None:
    from cavmae.features import frames_to_tensor, normalize_fbank
    from training.data import prepare_synthetic
    from training.data.datasets import PreparedDataset
    from training.synthetic import AVShapesConfig

    syn = AVShapesConfig(size=32, distractor_prob=0.0)
    prepare_synthetic(tmp_path / "d", 2, seed=3, cfg=syn, workers=0)
    ds = PreparedDataset(tmp_path / "d", train=True, augment=AugmentConfig(window_prob=1.0, temporal_pair=True))
    cfg = ds.feature_config
    times = ds.items[0]["synthetic"]["frame_times"]
    frames = [frames_to_tensor(ds._frame(0, k), cfg) for k in range(10)]
    raw, n = ds._raw_fbank(0)
    for epoch in range(4):
        ds.set_epoch(epoch)
        s = ds[0]
        assert bool(s["pair"])
        k = next(j for j, f in enumerate(frames) if torch.equal(f, s["image"]))
        k2 = next(j for j, f in enumerate(frames) if torch.equal(f, s["image_pair"]))
        assert abs(times[k2] - times[k]) >= 2.0  # another time of the same clip
        expected = normalize_fbank(audio_window(raw, n, times[k2], 2.0, cfg), cfg)
        torch.testing.assert_close(s["fbank_pair"], expected)
    # Unwindowed samples carry no pair (zeros, pair False), so batches keep one set of keys.
    unpaired = PreparedDataset(tmp_path / "d", train=True, augment=AugmentConfig(window_prob=1e-9, temporal_pair=True))[0]
    assert not bool(unpaired["pair"]) and not unpaired["fbank_pair"].any()
    # Without the option the samples are exactly the ones before it existed.
    ds.set_epoch(0)
    plain = PreparedDataset(tmp_path / "d", train=True, augment=AugmentConfig(window_prob=1.0))
    assert "pair" not in plain[0]
    torch.testing.assert_close(plain[0]["fbank"], ds[0]["fbank"])
    with pytest.raises(ConfigError, match="temporal_pair"):
        AugmentConfig(temporal_pair=True)
    with pytest.raises(ConfigError, match="temporal_pair"):
        AugmentConfig(temporal_pair=True, window_prob=0.5, mixup=0.5)


def test_objective_appends_the_paired_views_as_negatives() -> None:
    torch.manual_seed(0)
    model = CAVMAE.from_config(cavmae_tiny())
    cfg = PretrainConfig(model="cavmae_tiny", data="d", contrast_loss_weight=1.0)
    b = 3
    batch = {
        "fbank": torch.randn(b, 64, 32), "image": torch.randn(b, 3, 32, 32),
        "fbank_pair": torch.randn(b, 64, 32), "image_pair": torch.randn(b, 3, 32, 32),
        "pair": torch.tensor([True, False, True]),
    }
    model.train()
    out = PretrainObjective(cfg)(model, batch)
    assert out.logs["contrast_candidates"] == b + 2  # two paired views joined the batch
    model.eval()
    assert PretrainObjective(cfg)(model, batch).logs["contrast_candidates"] == b


def test_mask_ratio_range_from_the_command_line() -> None:
    from training.config import PretrainConfig, parse_cli

    base = ["--model", "cavmae_tiny", "--data", "d", "--out", "o"]
    cfg, _ = parse_cli(PretrainConfig, [*base, "--mask_ratio_a_range", "0.25", "0.9"])
    assert cfg.mask_ratio_a_range == (0.25, 0.9)
    cfg, _ = parse_cli(PretrainConfig, base)
    assert cfg.mask_ratio_a_range is None
    assert cfg.mask_ratio_a_step == 0.0
    cfg, _ = parse_cli(PretrainConfig, [*base, "--mask_ratio_a_range", "0.3", "0.9",
                                        "--mask_ratio_a_step", "0.05"])
    assert cfg.mask_ratio_a_step == 0.05
    assert parse_cli(PretrainConfig, [*base, "--class_groups", "8"])[0].class_groups == 8


def test_drawn_mask_ratios_round_to_the_step_inside_the_range() -> None:
    us = np.linspace(0.0, 0.999, 500)
    continuous = [draw_mask_ratio(0.3, 0.9, 0.0, u) for u in us]
    assert continuous[0] == 0.3 and len(set(continuous)) == 500
    grid = {draw_mask_ratio(0.3, 0.9, 0.05, u) for u in us}
    assert grid == {round(0.3 + 0.05 * k, 10) for k in range(13)}  # 0.3, 0.35, ..., 0.9
    # multiples of the step outside [lo, hi] are never used; a range without one gives lo
    assert {draw_mask_ratio(0.32, 0.58, 0.1, u) for u in us} == {0.4, 0.5}
    assert draw_mask_ratio(0.41, 0.49, 0.1, 0.7) == 0.41
    with pytest.raises(ConfigError):
        PretrainConfig(mask_ratio_a_step=-0.1)
    # the engine's draws follow the step: few distinct ratios, all on the grid
    torch.manual_seed(0)
    model = _Recorder(CAVMAE.from_config(cavmae_tiny())).train()
    batch = {"fbank": torch.randn(2, 64, 32), "image": torch.randn(2, 3, 32, 32)}
    cfg = PretrainConfig(model="cavmae_tiny", mask_ratio_a_range=(0.3, 0.9), mask_ratio_a_step=0.2)
    objective = PretrainObjective(cfg, generator=torch.Generator().manual_seed(0))
    for _ in range(24):
        objective(model, batch)
    assert set(model.ratios) <= {0.4, 0.6, 0.8} and len(set(model.ratios)) >= 2
