"""Checkpoint I/O: official parity fixture loads, architecture inference, strictness,
pretrained -> classifier, bad files, and the safetensors round trip."""

from __future__ import annotations

import argparse
import json
import logging
import random
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from cavmae.checkpoint import (
    HEAD_KEYS,
    convert_checkpoint,
    infer_config,
    load_checkpoint,
    load_model,
    normalise_keys,
    read_checkpoint,
    save_model,
    unwrap,
)
from cavmae.config import FeatureConfig, ModelConfig, cavmae_tiny
from cavmae.errors import CheckpointError, ConfigError
from cavmae.labels import LabelSet

HEADS = {"num_heads": 4, "decoder_num_heads": 4}


@pytest.fixture(scope="module")
def parity(fixtures_dir: Path) -> dict[str, Any]:
    return torch.load(fixtures_dir / "parity_a.pt", weights_only=True, map_location="cpu")


@pytest.fixture(scope="module")
def pt_sd(parity: dict[str, Any]) -> dict[str, torch.Tensor]:
    return dict(parity["state_dict"])  # official: every key prefixed "module."


@pytest.fixture(scope="module")
def ft_sd(parity: dict[str, Any]) -> dict[str, torch.Tensor]:
    return dict(parity["ft_state_dict"])


def _strip(keys: list[str]) -> list[str]:
    return [k.removeprefix("module.") for k in keys]


def _assert_weights_equal(model: nn.Module, sd: dict[str, torch.Tensor]) -> None:
    own = model.state_dict()
    bare = normalise_keys(sd)
    assert set(own) == set(bare)
    for k, v in bare.items():
        assert torch.equal(own[k], v), k


# --- official checkpoints -----------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["module.", "", "_orig_mod.", "module._orig_mod."])
def test_parity_state_dict_loads_with_any_prefix(
    pt_sd: dict[str, torch.Tensor], prefix: str
) -> None:
    sd = {prefix + k.removeprefix("module."): v for k, v in pt_sd.items()}
    model = load_model(sd, **HEADS)
    assert type(model).__name__ == "CAVMAE" and not model.training
    _assert_weights_equal(model, pt_sd)


def test_official_file_gives_official_outputs(
    parity: dict[str, Any], pt_sd: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    path = tmp_path / "audio_model.3.pth"
    torch.save(OrderedDict(pt_sd), path)
    loaded = load_checkpoint(path, **HEADS)
    assert loaded.kind == "pretrain" and loaded.source == path and loaded.meta["format"] == "torch"
    assert loaded.config == ModelConfig(**parity["config"])
    inp = parity["inputs"]
    with torch.no_grad():
        a, v = loaded.model.forward_feat(inp["audio"], inp["imgs"])
    ref = parity["outputs"]["forward_feat"]
    torch.testing.assert_close(a, ref["a"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(v, ref["v"], atol=1e-5, rtol=1e-5)


def test_finetuned_state_dict_gives_official_logits(
    parity: dict[str, Any], ft_sd: dict[str, torch.Tensor]
) -> None:
    loaded = load_checkpoint(ft_sd, num_heads=4)
    assert loaded.kind == "finetune" and loaded.config.label_dim == 7
    assert loaded.config == ModelConfig(**parity["ft_config"], tr_pos=True)  # CAVMAEFT default
    assert loaded.model.config == loaded.config
    inp = parity["inputs"]
    with torch.no_grad():
        for mode in ("multimodal", "videoonly"):  # all modes: tests/parity
            out = loaded.model(inp["audio"], inp["imgs"], mode)
            torch.testing.assert_close(out, parity["ft_outputs"][mode], atol=1e-5, rtol=1e-5)


def test_wrapped_file_and_legacy_format(pt_sd: dict[str, torch.Tensor], tmp_path: Path) -> None:
    wrapped = tmp_path / "wrapped.pth"
    torch.save(
        {"model": pt_sd, "epoch": 3, "model_config": {"num_heads": 4, "decoder_num_heads": 4}},
        wrapped,
    )
    _assert_weights_equal(load_model(wrapped), pt_sd)  # heads come from the wrapper's config
    legacy = tmp_path / "legacy.pth"
    torch.save(pt_sd, legacy, _use_new_zipfile_serialization=False)
    _assert_weights_equal(load_model(legacy, **HEADS), pt_sd)


def test_parity_fixture_file_itself_loads(fixtures_dir: Path, parity: dict[str, Any]) -> None:
    # The fixture keeps the official kwargs under "config" beside "state_dict".
    loaded = load_checkpoint(fixtures_dir / "parity_a.pt")
    assert loaded.config == ModelConfig(**parity["config"])


def test_reference_fixture_layout_selects_the_classifier(
    fixtures_dir: Path, parity: dict[str, Any]
) -> None:
    # parity_a.pt holds state_dict/config and ft_state_dict/ft_config: label_dim picks the latter.
    loaded = load_checkpoint(fixtures_dir / "parity_a.pt", **parity["ft_config"])
    assert loaded.config == ModelConfig(**parity["ft_config"], tr_pos=True)
    assert not loaded.meta["initialised_head"]
    _assert_weights_equal(loaded.model, parity["ft_state_dict"])
    other = load_checkpoint(fixtures_dir / "parity_a.pt", label_dim=5, num_heads=4)
    assert other.meta["initialised_head"] and other.config.label_dim == 5  # from state_dict


def test_half_precision_checkpoint_is_cast(pt_sd: dict[str, torch.Tensor]) -> None:
    model = load_model({k: v.half() for k, v in pt_sd.items()}, **HEADS)
    w = model.state_dict()["blocks_u.0.attn.qkv.weight"]
    assert w.dtype == torch.float32
    assert torch.equal(w, pt_sd["module.blocks_u.0.attn.qkv.weight"].half().float())


def test_in_memory_state_dict_is_not_aliased(pt_sd: dict[str, torch.Tensor]) -> None:
    model = load_model(pt_sd, **HEADS)
    with torch.no_grad():
        model.norm.weight.add_(1.0)
    assert not torch.equal(model.norm.weight, pt_sd["module.norm.weight"])


def test_frozen_tables_stay_frozen(
    pt_sd: dict[str, torch.Tensor], ft_sd: dict[str, torch.Tensor]
) -> None:
    pt = load_model(pt_sd, **HEADS)
    assert not pt.pos_embed_a.requires_grad and not pt.decoder_pos_embed_v.requires_grad
    assert pt.blocks_u[0].attn.qkv.weight.requires_grad
    ft = load_model(ft_sd, num_heads=4)
    assert ft.pos_embed_a.requires_grad  # tr_pos=True for CAVMAEFT


def test_attn_impl_is_passed(ft_sd: dict[str, torch.Tensor]) -> None:
    assert load_model(ft_sd, num_heads=4, attn_impl="eager").attn_impl == "eager"


# --- architecture inference -----------------------------------------------------------------


def test_inferred_config_equals_fixture(
    parity: dict[str, Any], pt_sd: dict[str, torch.Tensor]
) -> None:
    assert infer_config(pt_sd, **HEADS) == ModelConfig(**parity["config"])


def test_num_heads_must_be_given_when_default_does_not_divide(
    pt_sd: dict[str, torch.Tensor],
) -> None:
    with pytest.raises(ConfigError, match=r"num_heads.*12.*embed_dim=64"):
        infer_config(pt_sd)
    # 16 divides the decoder width 32, so the official default is taken (the fixture used 4).
    assert infer_config(pt_sd, num_heads=4).decoder_num_heads == 16
    shapes = {k: tuple(v.shape) for k, v in normalise_keys(pt_sd).items()}
    shapes["decoder_embed.weight"] = (24, 64)
    with pytest.raises(ConfigError, match=r"decoder_num_heads.*16.*decoder_embed_dim=24"):
        infer_config(shapes, num_heads=4)
    with pytest.raises(ConfigError, match="num_heads"):
        load_model(pt_sd)


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ({"embed_dim": 128}, r"embed_dim=128 .* embed_dim=64"),
        ({"img_size": 224}, r"img_size=224 .* img_size=64"),
        ({"audio_length": 1024}, r"audio_length=1024 .* audio_length=256.*num_mel_bins"),
        (
            {"modality_specific_depth": 3},
            r"modality_specific_depth=3 .* modality_specific_depth=11",
        ),
        ({"shared_depth": 2}, r"shared_depth=2 .* shared_depth=1"),
        ({"decoder_depth": 8}, r"decoder_depth=8 .* decoder_depth=2"),
        ({"mlp_ratio": 2.0}, r"mlp_ratio=2.0 .* mlp_ratio=4.0"),
        ({"patch_size": 8}, r"patch_size=8 .* patch_size=16"),
        ({"num_mel_bins": 48}, r"num_mel_bins=48"),
        ({"colour": 1}, r"unknown model settings \['colour'\]"),
        ({"num_heads": 5}, r"embed_dim \(64\) must be divisible by num_heads \(5\)"),
    ],
)
def test_contradicting_override(
    pt_sd: dict[str, torch.Tensor], override: dict[str, Any], match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        infer_config(pt_sd, **{**HEADS, **override})


def test_consistent_overrides_are_accepted(
    parity: dict[str, Any], pt_sd: dict[str, torch.Tensor]
) -> None:
    cfg = infer_config(pt_sd, **parity["config"])  # every official kwarg at once
    assert cfg == ModelConfig(**parity["config"])
    cfg = infer_config(pt_sd, **HEADS, norm_pix_loss=True, tr_pos=True, num_mel_bins=64)
    assert cfg.norm_pix_loss and cfg.tr_pos and cfg.audio_length == 512  # 128 tokens = 4 x 32


def test_finetuned_label_dim_must_match(ft_sd: dict[str, torch.Tensor]) -> None:
    assert infer_config(ft_sd, num_heads=4, label_dim=7).label_dim == 7
    with pytest.raises(ConfigError, match=r"label_dim=10 .* 7 classes"):
        load_model(ft_sd, num_heads=4, label_dim=10)


def test_full_size_inference_from_key_shapes(fixtures_dir: Path) -> None:
    models = json.loads((fixtures_dir / "keys_full.json").read_text())["models"]
    shapes = {k: s for k, s in models["CAVMAE()"]["keys"]}
    cfg = infer_config(shapes)
    assert cfg == ModelConfig(norm_pix_loss=False, tr_pos=False)  # the official defaults
    assert (cfg.embed_dim, cfg.modality_specific_depth, cfg.num_shared_blocks) == (768, 11, 1)
    assert (cfg.decoder_depth, cfg.decoder_embed_dim, cfg.audio_length, cfg.img_size) == (
        8,
        512,
        1024,
        224,
    )
    assert (cfg.num_heads, cfg.decoder_num_heads, cfg.label_dim) == (12, 16, None)
    for name, classes in (("CAVMAEFT(label_dim=527)", 527), ("CAVMAEFT(label_dim=309)", 309)):
        ft = infer_config({k: s for k, s in models[name]["keys"]})
        assert ft == ModelConfig(label_dim=classes, tr_pos=True)
    as_classifier = infer_config(shapes, label_dim=527)
    assert as_classifier == ModelConfig(label_dim=527, tr_pos=True)


def test_inference_rejects_foreign_state_dicts() -> None:
    with pytest.raises(CheckpointError, match="not a CAV-MAE checkpoint"):
        infer_config({"head.weight": (10, 768), "blocks.0.attn.qkv.weight": (2304, 768)})
    cfg = cavmae_tiny()
    from cavmae.models import CAVMAE

    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in CAVMAE.from_config(cfg).state_dict().items()}
    both = {**shapes, "mlp_head.1.weight": (3, 32)}
    with pytest.raises(CheckpointError, match="both a decoder and mlp_head"):
        infer_config(both)
    gap = {k: s for k, s in shapes.items() if not k.startswith("blocks_u.0.") or "mlp.fc1" in k}
    gap.update(
        {
            k.replace("blocks_u.0.", "blocks_u.2."): s
            for k, s in shapes.items()
            if k.startswith("blocks_u.0.")
        }
    )
    with pytest.raises(CheckpointError, match="non-consecutive"):
        infer_config(gap)


# --- strictness -----------------------------------------------------------------------------


def test_unexpected_key_is_listed(pt_sd: dict[str, torch.Tensor]) -> None:
    sd = {**pt_sd, "module.extra_token": torch.zeros(1)}
    with pytest.raises(CheckpointError, match=r"1 unexpected: extra_token"):
        load_model(sd, **HEADS)


def test_missing_key_is_listed(pt_sd: dict[str, torch.Tensor]) -> None:
    sd = {k: v for k, v in pt_sd.items() if k != "module.blocks_a.3.norm1_v.bias"}
    with pytest.raises(CheckpointError, match=r"1 missing: blocks_a\.3\.norm1_v\.bias"):
        load_model(sd, **HEADS)


def test_wrong_shape_is_listed(pt_sd: dict[str, torch.Tensor]) -> None:
    sd = {**pt_sd, "module.modality_v": torch.zeros(1, 2, 64)}
    with pytest.raises(
        CheckpointError, match=r"wrong shape: modality_v \(1, 2, 64\) \(model \(1, 1, 64\)\)"
    ):
        load_model(sd, **HEADS)


def test_colliding_prefixes() -> None:
    with pytest.raises(CheckpointError, match="collide"):
        normalise_keys({"module.norm.weight": 1, "norm.weight": 2})


# --- pretrained -> classifier ----------------------------------------------------------------


def test_pretrained_into_classifier_matches_official_lists(
    parity: dict[str, Any], pt_sd: dict[str, torch.Tensor]
) -> None:
    loaded = load_checkpoint(pt_sd, label_dim=7, num_heads=4)
    official = parity["ft_load"]
    assert loaded.meta["dropped_keys"] == _strip(official["unexpected_keys"])  # 53, in order
    assert loaded.meta["initialised_keys"] == _strip(official["missing_keys"])  # the 4 head keys
    assert set(loaded.meta["initialised_keys"]) == HEAD_KEYS
    assert loaded.kind == "finetune" and loaded.meta["initialised_head"]
    assert loaded.config == ModelConfig(**parity["ft_config"], tr_pos=True)
    own = loaded.model.state_dict()
    for k, v in normalise_keys(parity["ft_state_dict"]).items():
        if k not in HEAD_KEYS:  # the backbone is the pretrained one
            assert torch.equal(own[k], v), k
    # The head keeps its fresh official initialisation: LayerNorm (1, 0), Linear bias 0.
    assert torch.equal(own["mlp_head.0.weight"], torch.ones(64))
    assert torch.equal(own["mlp_head.0.bias"], torch.zeros(64))
    assert torch.equal(own["mlp_head.1.bias"], torch.zeros(7))
    assert own["mlp_head.1.weight"].std() > 0


def test_pretrained_into_classifier_needs_complete_pretrained(
    pt_sd: dict[str, torch.Tensor],
) -> None:
    sd = {k: v for k, v in pt_sd.items() if k != "module.decoder_blocks.1.mlp.fc2.bias"}
    with pytest.raises(
        CheckpointError, match=r"not a complete CAVMAE.*decoder_blocks\.1\.mlp\.fc2\.bias"
    ):
        load_model(sd, label_dim=7, num_heads=4)


def test_labels_must_fit(
    pt_sd: dict[str, torch.Tensor], ft_sd: dict[str, torch.Tensor], caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(ConfigError, match="3 classes but the model has label_dim=7"):
        load_checkpoint(ft_sd, num_heads=4, labels=LabelSet.generic(3))
    with caplog.at_level(logging.WARNING, logger="cavmae.checkpoint"):
        assert load_checkpoint(pt_sd, labels=LabelSet.generic(7), **HEADS).labels is None
    assert "labels ignored" in caplog.text
    loaded = load_checkpoint(pt_sd, label_dim=7, num_heads=4, labels=LabelSet.generic(7))
    assert loaded.labels == LabelSet.generic(7)


# --- files that are not checkpoints -----------------------------------------------------------


def _noise(n: int, seed: int) -> bytes:
    """Deterministic random bytes (a failing case can be re-run)."""
    return random.Random(seed).randbytes(n)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (_noise(4096, 0), "not a checkpoint: it looks like unrecognised binary data"),
        (b"", "empty"),
        (b"\x00\x00\x00\x20ftypisom" + bytes(100), "MP4/MOV video"),
        (b"<!DOCTYPE html><html><body>Dropbox</body></html>", "HTML"),
        (b"hello, I am text", "text file"),
        (b"PK\x03\x04" + _noise(200, 1), "not a readable PyTorch checkpoint"),
        # A pickle header followed by garbage: the restricted unpickler fails in many ways
        # (UnpicklingError, IndexError on an empty stack, ...); every one is a CheckpointError.
        *[(b"\x80\x02" + _noise(200, seed), "not a readable PyTorch checkpoint") for seed in range(40)],
    ],
)
def test_not_a_checkpoint(tmp_path: Path, content: bytes, match: str) -> None:
    p = tmp_path / "model.pth"
    p.write_bytes(content)
    with pytest.raises(CheckpointError, match=match):
        load_model(p)


def test_truncated_and_odd_files(pt_sd: dict[str, torch.Tensor], tmp_path: Path) -> None:
    good = tmp_path / "good.pth"
    torch.save(pt_sd, good)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_model(cut, **HEADS)
    zipped = tmp_path / "notes.zip"
    with zipfile.ZipFile(zipped, "w") as z:
        z.writestr("notes.txt", "hello")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_model(zipped)
    listy = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], listy)
    with pytest.raises(CheckpointError, match="holds a list"):
        load_model(listy)
    other = tmp_path / "other.pth"
    torch.save({"epoch": 3, "lr": 0.1}, other)
    with pytest.raises(CheckpointError, match="not a state_dict"):
        load_model(other)
    with pytest.raises(CheckpointError, match="directory"):
        load_model(tmp_path)


def test_pickle_with_python_objects_is_refused(
    pt_sd: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    p = tmp_path / "mae_style.pth"
    torch.save({"model": pt_sd, "args": argparse.Namespace(lr=0.1)}, p)
    with pytest.raises(CheckpointError, match=r"weights_only=True"):
        load_model(p, **HEADS)


def test_unknown_name_or_missing_path(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="neither an existing file nor a known model name"):
        load_model(tmp_path / "nothing.pth")
    with pytest.raises(CheckpointError, match="did you mean cav-mae-scale"):
        load_model("cav-mae-scael++", download=False)


# --- our format -------------------------------------------------------------------------------


def test_safetensors_round_trip_preserves_outputs_and_metadata(
    parity: dict[str, Any], ft_sd: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    loaded = load_checkpoint(ft_sd, num_heads=4)
    labels = LabelSet(
        tuple(f"sound, number {i}" for i in range(7)), tuple(f"/m/{i}" for i in range(7))
    )
    features = FeatureConfig.for_model(loaded.config, fbank_mean=-4.0, num_frames=4)
    path = save_model(
        nn.DataParallel(loaded.model),
        tmp_path / "out" / "ft.safetensors",
        features=features,
        labels=labels,
        multi_label=True,
        mode="audioonly",
        meta={"metrics": {"mAP": 0.42}, "provenance": {"training": {"epochs": 2}}, "note": "x"},
    )
    assert sorted(p.name for p in path.parent.iterdir()) == ["ft.safetensors"]  # no temp file left
    sd, meta = read_checkpoint(path)
    assert set(sd) == set(normalise_keys(ft_sd))  # bare keys, no "module."
    again = load_checkpoint(path)  # no overrides needed: the config travels with the weights
    assert again.config == loaded.config and again.kind == "finetune"
    assert again.labels == labels and again.features == features
    assert again.multi_label is True and again.mode == "audioonly"
    assert again.meta["format"] == "cavmae" and again.meta["metrics"] == {"mAP": 0.42}
    assert (
        again.meta["provenance"]["training"] == {"epochs": 2}
        and "created" in again.meta["provenance"]
    )
    assert again.meta["extra"] == {"note": "x"}
    _assert_weights_equal(again.model, ft_sd)
    inp = parity["inputs"]
    with torch.no_grad():
        for mode in ("multimodal", "audioonly"):
            a = loaded.model(inp["audio"], inp["imgs"], mode)
            b = again.model(inp["audio"], inp["imgs"], mode)
            assert torch.equal(a, b), mode


def test_convert_official_pth_round_trip(
    parity: dict[str, Any], pt_sd: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    src = tmp_path / "official.pth"
    torch.save(pt_sd, src)
    dst = convert_checkpoint(src, tmp_path / "ours.safetensors", **HEADS)
    official, ours = load_checkpoint(src, **HEADS), load_checkpoint(dst)
    assert ours.config == official.config
    prov = ours.meta["provenance"]
    assert prov["source"] == "official.pth" and prov["converted_from"] == "torch"
    from cavmae.hub import sha256_file

    assert prov["source_sha256"] == sha256_file(src)
    inp, noise = parity["inputs"], parity["noise"]["inpaint"]
    with torch.no_grad():
        outs = [
            m.forward_inpaint(
                inp["audio"], inp["imgs"], 0.5, 0.9, noise_a=noise[0], noise_v=noise[1]
            )
            for m in (official.model, ours.model)
        ]
        feats = [m.forward_feat(inp["audio"], inp["imgs"]) for m in (official.model, ours.model)]
    for x, y in zip(outs[0], outs[1], strict=True):
        assert torch.equal(x, y)
    for x, y in zip(feats[0], feats[1], strict=True):
        assert torch.equal(x, y)
    torch.testing.assert_close(
        outs[1].pred_a, parity["outputs"]["inpaint"]["pred_a"], atol=1e-5, rtol=1e-5
    )


def test_pretrained_safetensors_into_classifier(
    pt_sd: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    path = save_model(load_model(pt_sd, **HEADS, norm_pix_loss=True), tmp_path / "pt.safetensors")
    loaded = load_checkpoint(path, label_dim=5)
    assert loaded.config.label_dim == 5 and loaded.config.num_heads == 4
    assert loaded.config.tr_pos is True  # the pretraining model's tr_pos=False does not carry over
    assert loaded.multi_label is None and loaded.labels is None


def test_metadata_contradicting_tensors(pt_sd: dict[str, torch.Tensor], tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    path = save_model(load_model(pt_sd, **HEADS), tmp_path / "pt.safetensors")
    sd, meta = read_checkpoint(path)
    meta["model_config"]["decoder_depth"] = 8
    bad = tmp_path / "bad.safetensors"
    save_file(load_file(path), bad, metadata={"cavmae": json.dumps(meta)})
    with pytest.raises(
        CheckpointError, match=r"decoder_depth=8 from the stored metadata .* decoder_depth=2"
    ):
        load_model(bad)
    meta["format_version"] = 99
    save_file(load_file(path), bad, metadata={"cavmae": json.dumps(meta)})
    with pytest.raises(CheckpointError, match="format 99"):
        load_model(bad)
    save_file(load_file(path), bad, metadata={"cavmae": "{not json"})
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_model(bad)


def test_failed_save_keeps_old_file_and_leaves_no_temp(
    pt_sd: dict[str, torch.Tensor], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = load_model(pt_sd, **HEADS)
    path = save_model(model, tmp_path / "m.safetensors")
    before = path.read_bytes()

    def boom(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        save_model(model, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def test_save_validation(pt_sd: dict[str, torch.Tensor], tmp_path: Path) -> None:
    model = load_model(pt_sd, **HEADS)
    with pytest.raises(ConfigError, match="label_dim=None"):
        save_model(model, tmp_path / "a.safetensors", labels=LabelSet.generic(2))
    with pytest.raises(ConfigError, match="unknown mode"):
        save_model(model, tmp_path / "a.safetensors", mode="stereo")
    with pytest.raises(ConfigError, match="JSON"):
        save_model(model, tmp_path / "a.safetensors", meta={"metrics": {"x": object()}})
    with pytest.raises(ConfigError, match="no ModelConfig"):
        save_model(nn.Linear(2, 2), tmp_path / "a.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_unwrap_compiled_and_parallel(pt_sd: dict[str, torch.Tensor]) -> None:
    model = load_model(pt_sd, **HEADS)
    assert unwrap(nn.DataParallel(torch.compile(model))) is model
    assert all(
        not k.startswith(("module.", "_orig_mod."))
        for k in normalise_keys(torch.compile(model).state_dict())
    )
