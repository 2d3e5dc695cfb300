"""Parity with the official CAV-MAE on fixture A (tests/fixtures/parity_a.pt, PARITY.md).

The fixture holds weights, inputs, the uniform masking noise the official code drew and every
output. We rebuild both models from the fixture config, load the state_dicts (``module.``
stripped), replay the noise and compare: tensors atol = rtol = 1e-5, losses atol 1e-6, masks /
ids_restore / c_acc exactly.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cavmae.models import CAVMAE, CAVMAEFT
from cavmae.models.masking import (
    mark_structured,
    random_masking,
    structured_masking,
    structured_selection,
    uniform_noise,
)
from cavmae.models.pos_embed import sincos_2d

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "parity_a.pt"
LOSS_ATOL = 1e-6


def _strip(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.removeprefix("module."): v.clone() for k, v in sd.items()}


def _close(actual: torch.Tensor, expected: torch.Tensor, name: str) -> None:
    assert actual.shape == expected.shape, f"{name}: {actual.shape} vs {expected.shape}"
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5, msg=lambda m: f"{name}: {m}")


def _loss(actual: torch.Tensor, expected: torch.Tensor, name: str) -> None:
    diff = abs(float(actual) - float(expected))
    assert diff <= LOSS_ATOL, f"{name}: |{float(actual)} - {float(expected)}| = {diff}"


def _exact(actual: torch.Tensor, expected: torch.Tensor, name: str) -> None:
    assert actual.shape == expected.shape, f"{name}: {actual.shape} vs {expected.shape}"
    assert torch.equal(actual.to(expected.dtype), expected), f"{name} differs"


@pytest.fixture(scope="module")
def fx() -> dict:
    if not FIXTURE.is_file():
        pytest.fail(f"missing fixture {FIXTURE}")
    return torch.load(FIXTURE, weights_only=True)


@pytest.fixture(scope="module")
def model(fx: dict) -> CAVMAE:
    m = CAVMAE(**fx["config"])
    m.load_state_dict(_strip(fx["state_dict"]), strict=True)
    return m.eval()


@pytest.fixture(scope="module")
def ft_model(fx: dict) -> CAVMAEFT:
    m = CAVMAEFT(**fx["ft_config"])
    m.load_state_dict(_strip(fx["ft_state_dict"]), strict=True)
    return m.eval()


@pytest.fixture(scope="module")
def inputs(fx: dict) -> tuple[torch.Tensor, torch.Tensor]:
    return fx["inputs"]["audio"], fx["inputs"]["imgs"]


def test_state_dict_keys_and_order(fx: dict, model: CAVMAE, ft_model: CAVMAEFT) -> None:
    for m, key in ((model, "state_dict"), (ft_model, "ft_state_dict")):
        ours = [(k, tuple(v.shape)) for k, v in m.state_dict().items()]
        ref = [(k, tuple(v.shape)) for k, v in _strip(fx[key]).items()]
        assert ours == ref


def test_sincos_tables_match_official(fx: dict, model: CAVMAE) -> None:
    sd = _strip(fx["state_dict"])
    c = model.config
    for name, grid in (
        ("pos_embed_a", c.audio_grid),
        ("pos_embed_v", c.visual_grid),
        ("decoder_pos_embed_a", c.audio_grid),
        ("decoder_pos_embed_v", c.visual_grid),
    ):
        ref = sd[name][0]
        ours = sincos_2d(ref.shape[-1], grid).float()
        assert (ours - ref).abs().max() < 1e-6, name
    # A freshly built model fills the same tables (and keeps them frozen).
    fresh = CAVMAE(**fx["config"])
    assert torch.allclose(fresh.pos_embed_a, sd["pos_embed_a"], atol=1e-6)
    assert not fresh.pos_embed_a.requires_grad and not fresh.decoder_pos_embed_v.requires_grad
    assert CAVMAEFT(**fx["ft_config"]).pos_embed_a.requires_grad


@torch.no_grad()
def test_forward(fx: dict, model: CAVMAE, inputs) -> None:
    a, v = inputs
    na, nv = fx["noise"]["forward"]
    out = model(a, v, noise_a=na, noise_v=nv)
    ref = fx["outputs"]["forward"]
    for name in ("loss", "loss_mae", "loss_mae_a", "loss_mae_v", "loss_c"):
        _loss(getattr(out, name), ref[name], name)
    for name in ("mask_a", "mask_v", "c_acc"):
        _exact(getattr(out, name), ref[name], name)
    assert out.mask_a.sum(1).eq(128 - 32).all() and out.mask_v.sum(1).eq(16 - 4).all()


@torch.no_grad()
def test_forward_intermediates(fx: dict, model: CAVMAE, inputs) -> None:
    a, v = inputs
    na, nv = fx["noise"]["forward"]
    ref = fx["outputs"]["forward_intermediates"]
    enc = model.forward_encoder(a, v, 0.75, 0.75, noise_a=na, noise_v=nv)
    _close(enc.x, ref["latent"], "latent")
    _close(enc.ca, ref["latent_c_a"], "latent_c_a")
    _close(enc.cv, ref["latent_c_v"], "latent_c_v")
    _exact(enc.ids_restore_a, ref["ids_restore_a"], "ids_restore_a")
    _exact(enc.ids_restore_v, ref["ids_restore_v"], "ids_restore_v")
    # The official path (count read from mask_a[0]) and the shape-based path agree.
    for kw in ({}, {"num_kept_a": enc.ca.shape[1]}):
        pred_a, pred_v = model.forward_decoder(
            enc.x, enc.mask_a, enc.ids_restore_a, enc.mask_v, enc.ids_restore_v, **kw
        )
        _close(pred_a, ref["pred_a"], "pred_a")
        _close(pred_v, ref["pred_v"], "pred_v")


@torch.no_grad()
@pytest.mark.parametrize("bidirect", [False, True])
def test_contrastive(fx: dict, model: CAVMAE, bidirect: bool) -> None:
    ref = fx["outputs"]["contrastive"]
    inter = fx["outputs"]["forward_intermediates"]
    _close(inter["latent_c_a"].mean(1), ref["audio_rep"], "audio_rep")
    nce, acc = model.forward_contrastive(ref["audio_rep"], ref["video_rep"], bidirect)
    _loss(nce, ref[f"bidirect_{bidirect}"]["nce"], "nce")
    _exact(acc, ref[f"bidirect_{bidirect}"]["c_acc"], "c_acc")


@torch.no_grad()
def test_contrastive_gather_identity_is_local(fx: dict, model: CAVMAE) -> None:
    """A gather over one process (global == local, offset 0) gives the official values."""
    ref = fx["outputs"]["contrastive"]
    nce, acc = model.forward_contrastive(
        ref["audio_rep"], ref["video_rep"], True, gather=lambda x: (x, 0)
    )
    _loss(nce, ref["bidirect_True"]["nce"], "nce")
    _exact(acc, ref["bidirect_True"]["c_acc"], "c_acc")


@torch.no_grad()
def test_inpaint(fx: dict, model: CAVMAE, inputs) -> None:
    a, v = inputs
    na, nv = fx["noise"]["inpaint"]
    ref = fx["outputs"]["inpaint"]
    out = model.forward_inpaint(a, v, 0.5, 0.9, noise_a=na, noise_v=nv)
    _close(out.pred_a, ref["pred_a"], "pred_a")
    _close(out.pred_v, ref["pred_v"], "pred_v")
    _exact(out.mask_a, ref["mask_a"], "mask_a")
    _exact(out.mask_v, ref["mask_v"], "mask_v")
    assert out.mask_v.sum(1).eq(15).all()  # int(16 * 0.1) = 1 kept
    _loss(out.loss_a, ref["loss_pixel_a"], "loss_pixel_a")
    _loss(out.loss_v, ref["loss_pixel_v"], "loss_pixel_v")


@torch.no_grad()
def test_forward_feat(fx: dict, model: CAVMAE, inputs) -> None:
    a_tok, v_tok = model.forward_feat(*inputs)
    _close(a_tok, fx["outputs"]["forward_feat"]["a"], "feat a")
    _close(v_tok, fx["outputs"]["forward_feat"]["v"], "feat v")


@torch.no_grad()
@pytest.mark.parametrize(
    "mode", ["multimodal", "audioonly", "videoonly", "missingaudioonly", "missingvideoonly"]
)
@pytest.mark.parametrize("attn_impl", ["sdpa", "eager"])
def test_ft_modes(fx: dict, ft_model: CAVMAEFT, inputs, mode: str, attn_impl: str) -> None:
    ft_model.set_attn_impl(attn_impl)
    try:
        logits = ft_model(*inputs, mode)
        a, v = inputs
        staged = ft_model.forward_from_specific(
            ft_model.encode_audio_specific(a), ft_model.encode_visual_specific(v), mode
        )
    finally:
        ft_model.set_attn_impl("sdpa")
    _close(logits, fx["ft_outputs"][mode], mode)
    _close(staged, fx["ft_outputs"][mode], f"{mode} (staged)")


@torch.no_grad()
def test_ft_forward_feat(fx: dict, ft_model: CAVMAEFT, inputs) -> None:
    a_tok, v_tok = ft_model.forward_feat(*inputs, mode="av")
    _close(a_tok, fx["ft_outputs"]["feat_av"]["a"], "feat_av a")
    _close(v_tok, fx["ft_outputs"]["feat_av"]["v"], "feat_av v")
    _close(ft_model.forward_feat(inputs[0], None, mode="a"), fx["ft_outputs"]["feat_a"], "feat_a")


def test_ft_load_missing_unexpected(fx: dict) -> None:
    """Loading the pretrain state_dict into CAVMAEFT leaves exactly the official key sets."""
    ft = CAVMAEFT(**fx["ft_config"])
    res = ft.load_state_dict(_strip(fx["state_dict"]), strict=False)
    expected_missing = [k.removeprefix("module.") for k in fx["ft_load"]["missing_keys"]]
    expected_unexpected = [k.removeprefix("module.") for k in fx["ft_load"]["unexpected_keys"]]
    assert sorted(res.missing_keys) == sorted(expected_missing)
    assert sorted(res.unexpected_keys) == sorted(expected_unexpected)
    assert len(res.missing_keys) == 4 and len(res.unexpected_keys) == 53


# --------------------------------------------------------------------- structured masking
GEOMETRIES = {"L512_t64_f8": (8, 64), "Lcfg_t16_f8": (8, 16)}


def _replayed_noise(case: dict, mode: str) -> torch.Tensor:
    """The official marked noise, rebuilt from the stored base noise and random.sample lists."""
    f, t = case["f"], case["t"]
    noise = case["noise"][0]
    B = noise.shape[0]
    calls = case["random_sample_calls"]
    time_sel = freq_sel = None
    if mode == "time":
        time_sel = torch.zeros(B, t, dtype=torch.bool)
        for i in range(B):
            time_sel[i, calls[i]] = True
    elif mode == "freq":
        freq_sel = torch.zeros(B, f, dtype=torch.bool)
        for i in range(B):
            freq_sel[i, calls[i]] = True
    else:
        time_sel = torch.zeros(B, t, dtype=torch.bool)
        freq_sel = torch.zeros(B, f, dtype=torch.bool)
        for i in range(B):
            time_sel[i, calls[i]] = True
            freq_sel[i, calls[B + i]] = True
    return mark_structured(noise, (f, t), time_sel, freq_sel)


@pytest.mark.parametrize("geometry", list(GEOMETRIES))
@pytest.mark.parametrize("mode", ["time", "freq", "tf"])
def test_structured_replay(fx: dict, geometry: str, mode: str) -> None:
    """Replaying the official noise + selections reproduces the official masks."""
    case = fx["structured"][geometry][mode]
    res = random_masking(case["x"], case["mask_ratio"], noise=_replayed_noise(case, mode))
    if geometry == "L512_t64_f8" and mode == "tf":
        # 4 of the 388 marked (tied) tokens survive, chosen by argsort tie-breaking.
        assert res.mask.sum(1).eq(384).all()
        return
    _exact(res.mask, case["mask"], "mask")
    _exact(res.kept, case["x_masked"], "x_masked")


@pytest.mark.parametrize("geometry", list(GEOMETRIES))
@pytest.mark.parametrize("mode", ["time", "freq", "tf"])
def test_structured_properties(geometry: str, mode: str) -> None:
    """Our torch-RNG structured masking has the official structure on both fixture grids
    (PARITY.md 'structured' table)."""
    f, t = GEOMETRIES[geometry]
    B, L, ratio = 5, f * t, 0.75
    n_keep = int(L * (1 - ratio))
    x = torch.randn(B, L, 4)
    res = structured_masking(x, ratio, (f, t), mode, generator=torch.Generator().manual_seed(7))
    # The same draws, made step by step, expose the selection.
    g = torch.Generator().manual_seed(7)
    base = uniform_noise((B, L), None, g)
    time_sel, freq_sel = structured_selection(B, (f, t), ratio, mode, None, g)
    ref = random_masking(x, ratio, noise=mark_structured(base, (f, t), time_sel, freq_sel))
    _exact(res.mask, ref.mask, "mask")
    marked = torch.zeros(B, f, t, dtype=torch.bool)
    if time_sel is not None:
        marked |= time_sel[:, None, :]
    if freq_sel is not None:
        marked |= freq_sel[:, :, None]
    removed = res.mask.reshape(B, f, t).bool()
    assert res.mask.sum(1).eq(L - n_keep).all()
    assert not (removed & ~marked).any(), "an unmarked cell was removed"
    if mode == "time":
        assert time_sel.sum(1).eq(int(t * ratio)).all()
        assert torch.equal(removed, marked)  # whole columns removed, the others fully kept
        assert removed.all(dim=1).sum(1).eq(int(t * ratio)).all()
    elif mode == "freq":
        assert freq_sel.sum(1).eq(int(f * ratio)).all()
        assert torch.equal(removed, marked)
        assert removed.all(dim=2).sum(1).eq(int(f * ratio)).all()
    else:
        nt, nf = int(t * ratio * 0.7), int(f * ratio * 0.7)
        assert time_sel.sum(1).eq(nt).all() and freq_sel.sum(1).eq(nf).all()
        unmarked = (t - nt) * (f - nf)
        assert (~marked).sum((1, 2)).eq(unmarked).all()
        if geometry == "Lcfg_t16_f8":
            assert unmarked == n_keep
            assert torch.equal(removed, marked)  # exactly the unmarked block is kept
        else:
            assert (geometry, unmarked, n_keep) == ("L512_t64_f8", 124, 128)
            # 4 marked (tied) cells survive; each lies in a marked row or column by definition.
            assert (marked & ~removed).sum((1, 2)).eq(n_keep - unmarked).all()
