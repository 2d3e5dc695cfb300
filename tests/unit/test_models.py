"""CAVMAE / CAVMAEFT behaviour on tiny configs: stages, attention, gradients, edge cases."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

from cavmae.config import ModelConfig, cavmae_tiny
from cavmae.errors import ConfigError
from cavmae.models import CAVMAE, CAVMAEFT, FT_MODES, build_model, random_masking
from cavmae.models.layers import Block


def _perturb(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Make every LayerNorm pair, bias and token distinct (as the parity fixture does)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def _inputs(cfg: ModelConfig, batch: int = 3, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(batch, cfg.audio_length, cfg.num_mel_bins, generator=g)
    v = torch.randn(batch, cfg.in_chans, cfg.img_size, cfg.img_size, generator=g)
    return a, v


@pytest.fixture
def cfg() -> ModelConfig:
    return cavmae_tiny()


@pytest.fixture
def pre(cfg: ModelConfig) -> CAVMAE:
    torch.manual_seed(0)
    return _perturb(CAVMAE.from_config(cfg)).eval()


@pytest.fixture
def ft(cfg: ModelConfig) -> CAVMAEFT:
    torch.manual_seed(0)
    return _perturb(CAVMAEFT.from_config(cfg, label_dim=5)).eval()


# --------------------------------------------------------------------------- construction
def test_from_config_and_config_attribute(cfg: ModelConfig) -> None:
    m = CAVMAE.from_config(cfg)
    assert m.config == cfg and m.config.label_dim is None
    assert (
        len(m.blocks_u) == cfg.num_shared_blocks and len(m.blocks_a) == cfg.modality_specific_depth
    )
    assert m.pos_embed_a.shape == (1, cfg.num_audio_patches, cfg.embed_dim)
    f = CAVMAEFT.from_config(cfg.replace(label_dim=4))
    assert f.config.label_dim == 4 and f.mlp_head[1].out_features == 4
    assert isinstance(build_model(cfg), CAVMAE) and isinstance(
        build_model(cfg, label_dim=3), CAVMAEFT
    )
    with pytest.raises(ConfigError):
        CAVMAE.from_config(cfg.replace(label_dim=4))
    with pytest.raises(ConfigError):
        CAVMAEFT.from_config(cfg)
    with pytest.raises(ValueError):
        CAVMAE.from_config(cfg, attn_impl="flash")


def test_construction_prints_nothing(cfg: ModelConfig, capsys: pytest.CaptureFixture) -> None:
    CAVMAE.from_config(cfg)
    CAVMAEFT.from_config(cfg, label_dim=3)
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""


def test_no_weight_decay_and_head_parameters(pre: CAVMAE, ft: CAVMAEFT) -> None:
    names = dict(pre.named_parameters())
    assert pre.no_weight_decay() <= set(names) and "mask_token" in pre.no_weight_decay()
    assert ft.no_weight_decay() == {"modality_a", "modality_v", "pos_embed_a", "pos_embed_v"}
    head = {id(p) for p in ft.head_parameters()}
    assert head == {id(p) for n, p in ft.named_parameters() if n.startswith("mlp_head.")}


def test_block_norm_selection() -> None:
    blk = _perturb(Block(16, 2)).eval()
    x = torch.randn(2, 5, 16)
    outs = [blk(x, m) for m in (None, "a", "v")]
    assert not torch.allclose(outs[0], outs[1]) and not torch.allclose(outs[1], outs[2])
    with torch.no_grad():
        manual = x + blk.attn(blk.norm1_v(x))
        manual = manual + blk.mlp(blk.norm2_v(manual))
    torch.testing.assert_close(outs[2], manual)
    with pytest.raises(ValueError):
        blk(x, "audio")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- attention
def test_eager_equals_sdpa(pre: CAVMAE, ft: CAVMAEFT, cfg: ModelConfig) -> None:
    a, v = _inputs(cfg)
    noise = dict(
        noise_a=torch.rand(3, cfg.num_audio_patches), noise_v=torch.rand(3, cfg.num_visual_patches)
    )
    with torch.no_grad():
        ref = pre(a, v, **noise)
        ref_ft = {m: ft(a, v, m) for m in FT_MODES}
        pre.set_attn_impl("eager")
        ft.set_attn_impl("eager")
        assert pre.attn_impl == "eager"
        out = pre(a, v, **noise)
        out_ft = {m: ft(a, v, m) for m in FT_MODES}
    for x, y in zip(ref, out, strict=True):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)
    for m in FT_MODES:
        torch.testing.assert_close(ref_ft[m], out_ft[m], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError):
        pre.set_attn_impl("flash")  # type: ignore[arg-type]


@pytest.mark.parametrize("stream", ["joint", "audio", "visual"])
def test_shared_attention(pre: CAVMAE, ft: CAVMAEFT, cfg: ModelConfig, stream: str) -> None:
    a, v = _inputs(cfg, batch=2)
    n = {
        "joint": cfg.num_audio_patches + cfg.num_visual_patches,
        "audio": cfg.num_audio_patches,
        "visual": cfg.num_visual_patches,
    }[stream]
    for model in (pre, ft):
        w = model.shared_attention(a, v, stream=stream)
        assert w.shape == (2, cfg.num_heads, n, n)
        assert (w >= 0).all()
        torch.testing.assert_close(w.sum(-1), torch.ones(2, cfg.num_heads, n))
    if stream == "audio":
        # Manual recomputation from the staged encoder (depth-1 shared stack).
        blk = pre.blocks_u[-1]
        with torch.no_grad():
            x = blk.norm1_a(pre.encode_audio_specific(a))
            q, k, _ = blk.attn.qkv(x).reshape(2, n, 3, cfg.num_heads, -1).permute(2, 0, 3, 1, 4)
            manual = (q @ k.transpose(-2, -1) / (q.shape[-1] ** 0.5)).softmax(-1)
        torch.testing.assert_close(pre.shared_attention(a, None, "audio"), manual)
    with pytest.raises(ValueError):
        pre.shared_attention(a, v, stream="both")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- chaining
def test_shared_depth_two_is_chained(cfg: ModelConfig) -> None:
    """The contrastive branch chains blocks_u (the official code re-feeds the input)."""
    torch.manual_seed(0)
    model = _perturb(CAVMAE.from_config(cfg.replace(shared_depth=2))).eval()
    assert len(model.blocks_u) == 2
    a, v = _inputs(cfg)
    na = torch.rand(3, cfg.num_audio_patches)
    nv = torch.rand(3, cfg.num_visual_patches)
    with torch.no_grad():
        enc = model.forward_encoder(a, v, 0.5, 0.5, noise_a=na, noise_v=nv)
        kept = random_masking(model.embed_audio(a), 0.5, noise=na).kept
        h = model.encode_modality(kept, model.blocks_a)
        chained = h
        for blk in model.blocks_u:
            chained = blk(chained, "a")
        chained = model.norm_a(chained)
        official_bug = None
        for blk in model.blocks_u:
            official_bug = blk(h, "a")  # every block on the original tokens
        official_bug = model.norm_a(official_bug)
    torch.testing.assert_close(enc.ca, chained)
    assert (enc.ca - official_bug).abs().max() > 1e-3
    # forward_feat and FT streams chain too.
    with torch.no_grad():
        feat_a, _ = model.forward_feat(a, v)
        full = model.encode_audio_specific(a)
        manual = model.norm_a(model.blocks_u[1](model.blocks_u[0](full, "a"), "a"))
    torch.testing.assert_close(feat_a, manual)


# --------------------------------------------------------------------------- CAVMAE paths
def test_forward_shapes_and_weights(pre: CAVMAE, cfg: ModelConfig) -> None:
    a, v = _inputs(cfg)
    g = torch.Generator().manual_seed(3)
    out = pre(a, v, generator=g)
    assert out.mask_a.shape == (3, cfg.num_audio_patches) and out.mask_v.shape == (
        3,
        cfg.num_visual_patches,
    )
    torch.testing.assert_close(out.loss, out.loss_mae + out.loss_c)
    torch.testing.assert_close(out.loss_mae, out.loss_mae_a + out.loss_mae_v)
    out2 = pre(a, v, mae_loss_weight=0.0, contrast_loss_weight=0.0)
    assert float(out2.loss) == 0.0 and float(out2.c_acc) == 0.0
    # Same generator seed -> same masks and losses.
    out3 = pre(a, v, generator=torch.Generator().manual_seed(3))
    assert torch.equal(out.mask_a, out3.mask_a) and torch.equal(out.loss, out3.loss)
    # norm_pix_loss changes the MAE target only.
    pre.norm_pix_loss = True
    out4 = pre(a, v, generator=torch.Generator().manual_seed(3))
    assert not torch.allclose(out4.loss_mae_a, out.loss_mae_a)
    torch.testing.assert_close(out4.loss_c, out.loss_c)


@pytest.mark.parametrize("mode", ["time", "freq", "tf"])
def test_forward_structured(cfg: ModelConfig, mode: str) -> None:
    c = cfg.replace(audio_length=256, num_mel_bins=128)  # grid 8 x 16
    model = CAVMAE.from_config(c).eval()
    a, v = _inputs(c, batch=2)
    with torch.no_grad():
        out = model(a, v, mask_mode=mode, generator=torch.Generator().manual_seed(0))
    assert out.mask_a.sum(1).eq(128 - 32).all() and torch.isfinite(out.loss)
    grid = out.mask_a.reshape(2, 8, 16)
    if mode == "time":
        assert grid.all(dim=1).sum(1).eq(12).all()
    elif mode == "freq":
        assert grid.all(dim=2).sum(1).eq(6).all()
    with pytest.raises(ValueError):
        model(a, v, mask_mode=mode, noise_a=torch.rand(2, 128))
    with pytest.raises(ValueError):
        model(a, v, mask_mode="random")  # type: ignore[arg-type]


@pytest.mark.parametrize("ratios", [(1.0, 0.75), (0.75, 1.0)])
def test_full_mask_of_one_modality(pre: CAVMAE, cfg: ModelConfig, ratios) -> None:
    a, v = _inputs(cfg)
    ra, rv = ratios
    with torch.no_grad():
        out = pre(a, v, ra, rv)
        inp = pre.forward_inpaint(a, v, ra, rv)
    for t in (*out, *inp):
        assert torch.isfinite(t).all()
    assert float(out.loss_c) == 0.0 and float(out.c_acc) == 0.0
    masked = inp.mask_a if ra == 1.0 else inp.mask_v
    assert masked.eq(1).all()
    # Reconstructing the fully masked modality depends on the other one only.
    a2, v2 = (a, v + 1.0) if ra == 1.0 else (a + 1.0, v)
    with torch.no_grad():
        inp2 = pre.forward_inpaint(a2, v2, ra, rv, generator=torch.Generator().manual_seed(0))
        inp3 = pre.forward_inpaint(a2, v2, ra, rv, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(inp2.pred_a, inp3.pred_a)
    with pytest.raises(ValueError):
        pre(a, v, 1.0, 1.0)


def test_zero_mask_ratio_loss_is_finite(pre: CAVMAE, cfg: ModelConfig) -> None:
    a, v = _inputs(cfg)
    with torch.no_grad():
        inp = pre.forward_inpaint(a, v, 0.0, 0.5)
    assert float(inp.loss_a) == 0.0 and torch.isfinite(inp.loss_v)


def test_contrast_gather_matches_global_batch(pre: CAVMAE) -> None:
    """Two simulated ranks with a gather average to the single-process loss over 2B."""
    g = torch.Generator().manual_seed(0)
    A, V = torch.randn(6, 32, generator=g), torch.randn(6, 32, generator=g)
    for bidirect in (False, True):
        full, full_acc = pre.forward_contrastive(A, V, bidirect)
        losses, accs = [], []
        for rank in range(2):
            sl = slice(3 * rank, 3 * rank + 3)

            def gather(x: torch.Tensor, sl=sl, rank=rank) -> tuple[torch.Tensor, int]:
                src = A if torch.allclose(x, F.normalize(A[sl], dim=-1)) else V
                out = F.normalize(src, dim=-1).clone()
                out[sl] = x  # keep autograd to the local rows
                return out, 3 * rank

            nce, acc = pre.forward_contrastive(A[sl], V[sl], bidirect, gather=gather)
            losses.append(nce)
            accs.append(acc)
        torch.testing.assert_close((losses[0] + losses[1]) / 2, full)
        torch.testing.assert_close((accs[0] + accs[1]) / 2, full_acc)


def test_forward_contrastive_direction(pre: CAVMAE) -> None:
    """Single direction = CE over audio for each video (softmax over dim 0 of A V^T)."""
    g = torch.Generator().manual_seed(1)
    A, V = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    nce, _ = pre.forward_contrastive(A, V)
    logits = F.normalize(V, dim=-1) @ F.normalize(A, dim=-1).t() / 0.05
    torch.testing.assert_close(nce, F.cross_entropy(logits, torch.arange(4)))
    nce2, _ = pre.forward_contrastive(A, V, True)
    torch.testing.assert_close(nce2, (nce + F.cross_entropy(logits.t(), torch.arange(4))) / 2)


# --------------------------------------------------------------------------- CAVMAEFT
def test_ft_modes_and_staging(ft: CAVMAEFT, cfg: ModelConfig) -> None:
    a, v = _inputs(cfg)
    with torch.no_grad():
        sa, sv = ft.encode_audio_specific(a), ft.encode_visual_specific(v)
        outs = {}
        for mode in FT_MODES:
            outs[mode] = ft(a, v, mode)
            assert outs[mode].shape == (3, 5)
            torch.testing.assert_close(ft.forward_from_specific(sa, sv, mode), outs[mode])
        torch.testing.assert_close(ft(a, None, "audioonly"), outs["audioonly"])
        torch.testing.assert_close(ft(None, v, "missingvideoonly"), outs["missingvideoonly"])
        # missingaudioonly = head of the mean of the joint and audio pooled features.
        u = ft.encode_shared(sa, "joint").mean(1)
        s = ft.encode_shared(sa, "audio").mean(1)
        torch.testing.assert_close(outs["missingaudioonly"], ft.mlp_head((u + s) / 2))
        feat_a = ft.forward_feat(a, mode="a")
        feat_av = ft.forward_feat(a, v, mode="av")
    torch.testing.assert_close(feat_a, feat_av[0])
    assert len({round(float(o.sum()), 4) for o in outs.values()}) == 5
    with pytest.raises(ValueError, match="unknown mode"):
        ft(a, v, "audio_only")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ft(None, v, "multimodal")
    with pytest.raises(ValueError):
        ft.forward_feat(a, v, mode="v")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- gradients
_SIDE = r"norm[12]_[av]\.(weight|bias)"
_EXPECTED_UNUSED_PRETRAIN = [rf"^blocks_[av]\.\d+\.{_SIDE}$", rf"^decoder_blocks\.\d+\.{_SIDE}$"]
_VISUAL = r"^(modality_v|pos_embed_v|patch_embed_v\..*|blocks_v\..*)$"
_AUDIO = r"^(modality_a|pos_embed_a|patch_embed_a\..*|blocks_a\..*)$"
_EXPECTED_UNUSED_FT = {
    "multimodal": [rf"^blocks_u\.\d+\.{_SIDE}$", r"^norm_[av]\."],
    "audioonly": [
        _VISUAL,
        r"^blocks_u\.\d+\.norm[12]_v\.",
        r"^blocks_u\.\d+\.norm[12]\.",
        r"^norm\.",
        r"^norm_v\.",
    ],
    "videoonly": [
        _AUDIO,
        r"^blocks_u\.\d+\.norm[12]_a\.",
        r"^blocks_u\.\d+\.norm[12]\.",
        r"^norm\.",
        r"^norm_a\.",
    ],
    "missingaudioonly": [_VISUAL, r"^blocks_u\.\d+\.norm[12]_v\.", r"^norm_v\."],
    "missingvideoonly": [_AUDIO, r"^blocks_u\.\d+\.norm[12]_a\.", r"^norm_a\."],
}


def _no_grad_names(model: torch.nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad and p.grad is None}


def _expected(model: torch.nn.Module, patterns: list[str]) -> set[str]:
    side_in_specific = rf"^blocks_[av]\.\d+\.{_SIDE}$"  # always unused
    pats = [re.compile(p) for p in [*patterns, side_in_specific]]
    return {n for n, _ in model.named_parameters() if any(p.search(n) for p in pats)}


def test_pretrain_gradients(cfg: ModelConfig) -> None:
    torch.manual_seed(0)
    model = CAVMAE.from_config(cfg.replace(shared_depth=2))
    a, v = _inputs(cfg)
    model(a, v, generator=torch.Generator().manual_seed(0)).loss.backward()
    expected = _expected(model, _EXPECTED_UNUSED_PRETRAIN)
    assert _no_grad_names(model) == expected == model.unused_parameter_names()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert {n for n, p in model.named_parameters() if not p.requires_grad} == {
        "pos_embed_a",
        "pos_embed_v",
        "decoder_pos_embed_a",
        "decoder_pos_embed_v",
    }


@pytest.mark.parametrize("mode", FT_MODES)
def test_ft_gradients(cfg: ModelConfig, mode: str) -> None:
    torch.manual_seed(0)
    model = CAVMAEFT.from_config(cfg, label_dim=4, tr_pos=True)
    a, v = _inputs(cfg)
    model(a, v, mode).square().mean().backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    expected = _expected(model, _EXPECTED_UNUSED_FT[mode]) & trainable
    assert _no_grad_names(model) == expected == model.unused_parameter_names(mode) & trainable


# --------------------------------------------------------------------------- dtypes / compile
def test_bf16_autocast_cpu(pre: CAVMAE, ft: CAVMAEFT, cfg: ModelConfig) -> None:
    a, v = _inputs(cfg)
    na, nv = torch.rand(3, cfg.num_audio_patches), torch.rand(3, cfg.num_visual_patches)
    with torch.no_grad():
        ref = pre(a, v, noise_a=na, noise_v=nv)
        ref_ft = ft(a, v, "multimodal")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = pre(a, v, noise_a=na, noise_v=nv)
            inp = pre.forward_inpaint(a, v, noise_a=na, noise_v=nv)
            logits = ft(a, v, "multimodal")
            pre.set_attn_impl("eager")
            out_eager = pre(a, v, noise_a=na, noise_v=nv)
    assert torch.equal(out.mask_a, ref.mask_a)
    assert inp.pred_a.dtype == torch.bfloat16 and torch.isfinite(inp.pred_a.float()).all()
    for x in (out.loss, out_eager.loss, logits.float()):
        assert torch.isfinite(x).all()
    assert abs(float(out.loss) - float(ref.loss)) < 0.05 * abs(float(ref.loss)) + 0.05
    torch.testing.assert_close(logits.float(), ref_ft, atol=0.1, rtol=0.05)
    # autocast training step produces gradients
    pre.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = pre(a, v, noise_a=na, noise_v=nv).loss
    loss.backward()
    assert torch.isfinite(pre.decoder_pred_a.weight.grad).all()


@pytest.mark.slow
def test_torch_compile_no_graph_breaks(cfg: ModelConfig) -> None:
    dynamo = pytest.importorskip("torch._dynamo")
    torch.manual_seed(0)
    pre = CAVMAE.from_config(cfg).eval()
    ft = CAVMAEFT.from_config(cfg, label_dim=3).eval()
    a, v = _inputs(cfg, batch=2)
    na, nv = torch.rand(2, cfg.num_audio_patches), torch.rand(2, cfg.num_visual_patches)
    dynamo.reset()
    calls = {
        "pretrain": (lambda a, v: pre(a, v, noise_a=na, noise_v=nv), (a, v)),
        "inpaint": (lambda a, v: pre.forward_inpaint(a, v, 0.5, 0.5), (a, v)),
        "ft": (lambda a, v: ft(a, v, "multimodal"), (a, v)),
        "ft_missing": (lambda a, v: ft(a, v, "missingaudioonly"), (a, v)),
        "feat": (lambda a, v: pre.forward_feat(a, v), (a, v)),
    }
    for name, (fn, args) in calls.items():
        explanation = dynamo.explain(fn)(*args)
        assert explanation.graph_break_count == 0, (name, explanation.break_reasons)
        assert explanation.graph_count == 1, name
