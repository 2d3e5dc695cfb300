"""Training engine: configs and recipes, the loop, resume, accumulation, checkpoints, runs."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from cavmae.config import FeatureConfig, cavmae_tiny
from cavmae.errors import CheckpointError, ConfigError
from training import finetune, pretrain
from training.checkpointing import (
    capture_rng_state,
    epoch_model_path,
    load_state_dict_file,
    load_training_state,
    restore_rng_state,
    weight_average,
)
from training.config import FinetuneConfig, PretrainConfig, build_config, load_recipe, parse_cli
from training.distributed import DistEnv
from training.engine import Amp, NonFiniteLoss, StepOutput, train_one_epoch
from training.optim import build_optimizer
from training.recipes import list_recipes
from training.runs import list_runs, read_metrics, read_run, read_status, write_status
from training.schedules import LRSchedule


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run fastest single-threaded (and the machine is shared)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class RandomAV(Dataset):
    """Random clips in the tiny geometry, labels cycling over C classes (no augmentation)."""

    def __init__(self, n: int = 32, num_classes: int = 4, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        m = cavmae_tiny()
        self.fbank = torch.randn(n, m.audio_length, m.num_mel_bins, generator=g)
        self.image = torch.randn(n, 3, m.img_size, m.img_size, generator=g)
        self.labels_matrix = (
            nn.functional.one_hot(torch.arange(n) % num_classes, num_classes).float().numpy()
        )
        self.feature_config = FeatureConfig.for_model(m)
        self.label_names = [f"class{i}" for i in range(num_classes)]
        self.num_classes = num_classes

    def __len__(self) -> int:
        return len(self.fbank)

    def __getitem__(self, i: int) -> dict:
        return {
            "fbank": self.fbank[i],
            "image": self.image[i],
            "label": torch.from_numpy(self.labels_matrix[i]),
            "index": i,
        }


def _pt_cfg(out: Path, **kw) -> PretrainConfig:
    base = dict(out_dir=str(out), epochs=2, log_every=1, save_every=0, progress=False)
    base.update(kw)
    return build_config(PretrainConfig, "tiny_smoke", base)  # type: ignore[return-value]


# ---------------------------------------------------------------------- config


def test_every_recipe_resolves_and_official_values() -> None:
    names = list_recipes()
    assert {
        "as2m_pretrain_base",
        "as2m_pretrain_scale++",
        "as20k_ft",
        "as2m_ft",
        "vgg_ft",
        "tiny_smoke",
    } <= set(names)
    for name in names:
        cls = PretrainConfig if load_recipe(name)["kind"] == "pretrain" else FinetuneConfig
        cfg = build_config(cls, name)
        assert cfg.recipe == name
    base = build_config(PretrainConfig, "as2m_pretrain_base")
    assert (base.lr, base.batch_size, base.epochs) == (5e-5, 48, 25)
    assert base.betas == (0.95, 0.999) and base.weight_decay == 5e-7 and base.optimizer == "adam"
    assert (base.mask_ratio_a, base.contrast_loss_weight, base.mae_loss_weight) == (0.75, 0.01, 1.0)
    assert base.loss_scale_replicas == 4 and not base.gather_negatives
    assert base.model_args == {"norm_pix_loss": True, "tr_pos": False}
    vgg = build_config(FinetuneConfig, "vgg_ft")
    assert (vgg.loss, vgg.metric, vgg.head_lr_ratio, vgg.wa_start, vgg.wa_end) == (
        "ce",
        "acc",
        10.0,
        3,
        10,
    )
    assert vgg.balanced and vgg.augment["mixup"] == 0.5


def test_cli_overrides_are_typed(tmp_path: Path) -> None:
    cfg, print_only = parse_cli(
        PretrainConfig,
        [
            "--recipe",
            "tiny_smoke",
            "--data",
            "D",
            "--out",
            str(tmp_path),
            "--epochs",
            "3",
            "--no-tensorboard",
            "--gather-negatives",
            "--model_args.embed_dim",
            "64",
            "--model_args.shared_depth",
            "none",
            "--betas",
            "0.9",
            "0.99",
            "--no-augment.noise",
            "--lr",
            "2e-4",
        ],
    )
    assert not print_only
    assert cfg.epochs == 3 and cfg.out_dir == str(tmp_path) and cfg.lr == 2e-4
    assert cfg.tensorboard is False and cfg.gather_negatives is True
    assert cfg.model_args == {"embed_dim": 64, "shared_depth": None}
    assert cfg.betas == (0.9, 0.99) and cfg.augment == {"noise": False}
    assert cfg.recipe == "tiny_smoke" and cfg.model == "cavmae_tiny"  # from the recipe
    with pytest.raises(SystemExit):
        parse_cli(PretrainConfig, ["--epochs", "two"])
    with pytest.raises(SystemExit):
        parse_cli(PretrainConfig, ["--no-such-option", "1"])
    with pytest.raises(ConfigError, match="embed_dim"):
        build_config(PretrainConfig, None, {"model_args": {"embed_dim": "wide"}})
    with pytest.raises(ConfigError, match="unknown pretrain setting"):
        build_config(PretrainConfig, {"kind": "pretrain", "epoch": 3})
    with pytest.raises(ConfigError, match="finetune recipe"):
        build_config(PretrainConfig, "as20k_ft")
    with pytest.raises(ConfigError, match="true or false"):
        build_config(PretrainConfig, None, {"tensorboard": "yes"})


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match="nothing to learn"):
        PretrainConfig(mae_loss_weight=0.0, contrast_loss_weight=0.0)
    with pytest.raises(ConfigError, match="multiple of accum_steps"):
        PretrainConfig(batch_size=10, accum_steps=4)
    with pytest.raises(ConfigError, match="mode"):
        FinetuneConfig(mode="audio")
    with pytest.raises(ConfigError, match="split over 3"):
        PretrainConfig(batch_size=8).micro_batch(3)
    assert PretrainConfig(batch_size=48, accum_steps=2).micro_batch(4) == 6


# ---------------------------------------------------------------------- pretraining run


def test_pretrain_run_writes_the_run_directory(tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = _pt_cfg(out, tensorboard=True, val_fraction=0.0)
    res = pretrain.train(cfg, DistEnv(), RandomAV(24), RandomAV(8, seed=1))
    path = res.path
    assert path == out / "model.safetensors" and path.is_file()
    assert json.loads((out / "config.json").read_text())["epochs"] == 2
    steps = read_metrics(out, type="step")
    epochs = read_metrics(out, type="epoch")
    assert [r["step"] for r in steps] == list(range(1, 7))  # 24 clips / batch 8 = 3 steps x 2
    for key in (
        "epoch",
        "lr",
        "loss",
        "loss_mae_a",
        "loss_mae_v",
        "loss_c",
        "c_acc",
        "samples_per_s",
        "data_time",
        "max_mem_mb",
    ):
        assert key in steps[0]
    assert [r["epoch"] for r in epochs] == [1, 2] and "val_loss" in epochs[0]
    assert all(math.isfinite(r["loss"]) for r in steps)
    assert list((out / "tb").glob("events.out.tfevents.*"))
    state = torch.load(out / "last.pt", weights_only=True)  # plain data only
    assert state["epoch"] == 2 and state["global_step"] == 6
    from cavmae.checkpoint import load_checkpoint

    loaded = load_checkpoint(path)
    assert loaded.kind == "pretrain" and loaded.config == cavmae_tiny()
    sd = load_state_dict_file(path)
    assert all(torch.equal(sd[k], state["model"][k]) for k in sd)
    info = read_run(out)
    assert info.status == "finished" and info.kind == "pretrain" and info.has_model
    assert info.global_step == 6 and info.progress == 1.0
    assert [r.name for r in list_runs(tmp_path)] == ["run"]


@pytest.mark.slow
def test_resume_after_stop_continues_exactly(tmp_path: Path) -> None:
    """2 epochs straight == stop mid-epoch 1 (step 3 of 4) + stop mid-epoch 2 + resume."""
    data = RandomAV(32)
    pretrain.train(_pt_cfg(tmp_path / "a"), DistEnv(), data)
    assert pretrain.train(_pt_cfg(tmp_path / "b", max_steps=3), DistEnv(), data).path is None
    assert read_status(tmp_path / "b")["status"] == "stopped"
    assert pretrain.train(_pt_cfg(tmp_path / "b", max_steps=6), DistEnv(), data).path is None
    pretrain.train(_pt_cfg(tmp_path / "b"), DistEnv(), data)
    a = load_training_state(tmp_path / "a" / "last.pt")
    b = load_training_state(tmp_path / "b" / "last.pt")
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    for sa, sb in zip(
        a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True
    ):
        assert torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
    volatile = {
        "time",
        "samples_per_s",
        "data_time",
        "step_time",
        "max_mem_mb",
        "epoch_seconds",
        "eval_seconds",
    }

    def strip(recs: list[dict]) -> list[dict]:
        return [{k: v for k, v in r.items() if k not in volatile} for r in recs]

    assert strip(read_metrics(tmp_path / "a")) == strip(read_metrics(tmp_path / "b"))


def test_epoch_boundary_resume_with_more_epochs(tmp_path: Path) -> None:
    """1 epoch, then the same run extended to 2 epochs == 2 epochs straight."""
    data = RandomAV(16)
    pretrain.train(_pt_cfg(tmp_path / "a"), DistEnv(), data)
    pretrain.train(_pt_cfg(tmp_path / "b", epochs=1), DistEnv(), data)
    pretrain.train(_pt_cfg(tmp_path / "b", epochs=2), DistEnv(), data)
    a = load_state_dict_file(tmp_path / "a" / "model.safetensors")
    b = load_state_dict_file(tmp_path / "b" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_loss_scale_replicas_groups_negatives(tmp_path: Path) -> None:
    cfg = _pt_cfg(tmp_path, epochs=1, loss_scale_replicas=2, gather_negatives=False)
    pretrain.train(cfg, DistEnv(), RandomAV(16))
    steps = read_metrics(tmp_path, type="step")
    assert len(steps) == 2  # 16 clips / global batch 8; each step = 2 micro-steps of 4
    assert all(r["contrast_candidates"] == 4 for r in steps)  # negatives within a group of 4
    # the optimised and logged losses are the sum over the replicas (official 4-GPU sum)
    from cavmae.models import CAVMAE

    model = CAVMAE.from_config(cavmae_tiny())
    ds = RandomAV(4)
    batch = {k: torch.stack([ds[i][k] for i in range(4)]) for k in ("fbank", "image")}
    outs = [
        pretrain.PretrainObjective(cfg, None, torch.Generator().manual_seed(0), s)(model, batch)
        for s in (1.0, 2.0)
    ]
    assert outs[1].loss.item() == pytest.approx(2 * outs[0].loss.item())
    for k in ("loss_mae_a", "loss_c"):
        assert outs[1].logs[k].item() == pytest.approx(2 * outs[0].logs[k].item())
    assert outs[1].logs["c_acc"] == outs[0].logs["c_acc"]


# ---------------------------------------------------------------------- engine pieces


class _Regression(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 1)


def _reg_objective(nan_at: int | None = None):
    calls = {"n": 0}

    def obj(model: nn.Module, batch: dict) -> StepOutput:
        calls["n"] += 1
        pred = model.lin(batch["fbank"]).squeeze(-1)  # (B,)
        loss = ((pred - batch["label"]) ** 2).mean()
        aux = loss * 0.5
        if nan_at is not None and calls["n"] == nan_at:
            loss = loss * float("nan")
            aux = aux * float("nan")
        return StepOutput(loss, {"loss": loss.detach(), "aux_c": aux.detach()})

    return obj


def _batches(n: int, size: int, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n * size, 6, generator=g)
    y = x @ torch.arange(6.0) + 1.0
    return [
        {"fbank": x[i * size : (i + 1) * size], "label": y[i * size : (i + 1) * size]}
        for i in range(n)
    ]


def _run(model: nn.Module, batches: list[dict], accum: int, steps: int, nan_at=None) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    train_one_epoch(
        model,
        iter(batches),
        opt,
        _reg_objective(nan_at),
        env=DistEnv(),
        amp=Amp("cpu", None),
        schedule=LRSchedule("constant", 0.1, 1),
        epoch=0,
        steps_per_epoch=steps,
        accum_steps=accum,
        log_every=100,
    )


def test_gradient_accumulation_matches_the_full_batch() -> None:
    torch.manual_seed(0)
    m1 = _Regression()
    m2 = _Regression()
    m2.load_state_dict(m1.state_dict())
    full = _batches(4, 8)
    halves = [{k: v[s : s + 4] for k, v in b.items()} for b in full for s in (0, 4)]
    _run(m1, full, accum=1, steps=4)
    _run(m2, halves, accum=2, steps=4)
    for p1, p2 in zip(m1.parameters(), m2.parameters(), strict=True):
        torch.testing.assert_close(p1, p2, rtol=1e-5, atol=1e-6)
    assert not torch.equal(m1.lin.weight, _Regression().lin.weight)


def test_non_finite_loss_stops_with_step_and_terms() -> None:
    model = _Regression()
    before = model.lin.weight.detach().clone()
    with pytest.raises(NonFiniteLoss, match=r"epoch 1, step 2 .*micro-step 1.*aux_c=nan"):
        _run(model, _batches(4, 8), accum=1, steps=4, nan_at=2)
    assert torch.isfinite(model.lin.weight).all()  # the poisoned step was never applied
    assert not torch.equal(model.lin.weight, before)  # the first step was


@pytest.mark.parametrize(("mae", "contrast"), [(1.0, 0.01), (1.0, 0.0), (0.0, 0.01)])
def test_unused_parameters_frozen_every_other_gets_a_gradient(mae: float, contrast: float) -> None:
    from cavmae.models import CAVMAE

    model = CAVMAE.from_config(cavmae_tiny())
    cfg = PretrainConfig(model="cavmae_tiny", mae_loss_weight=mae, contrast_loss_weight=contrast)
    objective = pretrain.PretrainObjective(cfg)
    rng_before = torch.get_rng_state()
    probed = pretrain.probe_unused(
        model, objective, pretrain.probe_batch(model.config, torch.device("cpu"))
    )
    assert torch.equal(torch.get_rng_state(), rng_before)  # the probe leaves the RNG alone
    assert all(p.grad is None for p in model.parameters())
    declared = model.unused_parameter_names(mae=mae != 0, contrastive=contrast != 0)
    assert any(".norm1_a." in n for n in probed)  # side norms of blocks_a never run
    pretrain.freeze_unused(model, declared, probed)
    ds = RandomAV(4)
    batch = {k: torch.stack([ds[i][k] for i in range(4)]) for k in ("fbank", "image")}
    objective(model, batch).loss.backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None for _, p in trainable), [
        n for n, p in trainable if p.grad is None
    ]
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == declared | probed | {
        "pos_embed_a",
        "pos_embed_v",
        "decoder_pos_embed_a",
        "decoder_pos_embed_v",
    }  # tr_pos=False tables


@pytest.mark.parametrize("mode", ["multimodal", "audioonly", "videoonly"])
def test_finetune_modes_freeze_exactly_the_unused(mode: str) -> None:
    from cavmae.models import CAVMAEFT

    model = CAVMAEFT.from_config(cavmae_tiny(label_dim=3))
    objective = finetune.FinetuneObjective(mode, "bce")
    probed = pretrain.probe_unused(
        model, objective, pretrain.probe_batch(model.config, torch.device("cpu"), 3)
    )
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert probed == model.unused_parameter_names(mode) & trainable  # the declaration is exact
    pretrain.freeze_unused(model, model.unused_parameter_names(mode))
    ds = RandomAV(4, num_classes=3)
    batch = {k: torch.stack([ds[i][k] for i in range(4)]) for k in ("fbank", "image", "label")}
    finetune.FinetuneObjective(mode, "bce")(model, batch).loss.backward()
    for n, p in model.named_parameters():
        assert (p.grad is not None) == p.requires_grad, n
    visual = [p for n, p in model.named_parameters() if n.startswith("blocks_v")]
    assert any(p.requires_grad for p in visual) == (mode != "audioonly")


def test_optimizer_is_official_adam_with_head_group() -> None:
    from cavmae.models import CAVMAEFT

    model = CAVMAEFT.from_config(cavmae_tiny(label_dim=3))
    opt = build_optimizer(model, lr=5e-5, head_lr_ratio=100.0)
    assert type(opt) is torch.optim.Adam
    base, head = opt.param_groups
    assert (base["name"], head["name"]) == ("base", "head")
    assert head["lr"] == pytest.approx(5e-3) and base["betas"] == (0.95, 0.999)
    assert base["weight_decay"] == 5e-7
    assert {id(p) for p in head["params"]} == {id(p) for p in model.head_parameters()}


# ---------------------------------------------------------------------- fine-tuning run


def test_finetune_weight_average_and_linear_probe(tmp_path: Path) -> None:
    out = tmp_path / "ft"
    cfg = build_config(
        FinetuneConfig,
        "tiny_smoke_ft",
        {
            "out_dir": str(out),
            "epochs": 3,
            "wa_start": 2,
            "wa_end": 3,
            "freeze_base": True,
            "progress": False,
            "augment": {"freqm": 0, "timem": 0},
        },
    )
    torch.manual_seed(cfg.seed)
    init = finetune.build_finetune_model(cfg, 4).state_dict()
    res = finetune.train(cfg, DistEnv(), RandomAV(16), RandomAV(8, seed=1))
    path = res.path
    assert all(
        torch.equal(v, res.model.state_dict()[k]) for k, v in load_state_dict_file(path).items()
    )
    final = load_state_dict_file(path)
    avg = weight_average([epoch_model_path(out, e) for e in (2, 3)])
    for k in final:
        torch.testing.assert_close(final[k], avg[k])
        if k.startswith("mlp_head"):
            assert not torch.equal(final[k], init[k]), k  # the head trained
        else:
            assert torch.equal(final[k], init[k]), k  # the base stayed frozen
    rec = read_metrics(out, type="final")[-1]
    assert rec["selection"] == "wa" and rec["wa_models"] == 2 and rec["metric"] == "acc"
    assert 0.0 <= rec["final_acc"] <= 1.0 and rec["num_frames"] == 1
    from cavmae.checkpoint import load_checkpoint

    loaded = load_checkpoint(path)
    assert loaded.labels.names == ("class0", "class1", "class2", "class3")
    assert loaded.multi_label is False and loaded.mode == "multimodal"


# ---------------------------------------------------------------------- checkpoint helpers


def test_weight_average_is_the_uniform_mean() -> None:
    a = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor([3])}
    b = {"w": torch.tensor([3.0, 6.0]), "n": torch.tensor([3])}
    avg = weight_average([a, b])
    assert torch.equal(avg["w"], torch.tensor([2.0, 4.0])) and torch.equal(avg["n"], a["n"])
    with pytest.raises(CheckpointError, match="different keys"):
        weight_average([a, {"w": a["w"]}])
    with pytest.raises(CheckpointError):
        weight_average([])


def test_rng_state_roundtrip_through_weights_only_file(tmp_path: Path) -> None:
    import random

    import numpy as np

    state = capture_rng_state()
    torch.save(state, tmp_path / "rng.pt")
    first = (torch.rand(3), np.random.rand(3), random.random())
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    second = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], second[0]) and (first[1] == second[1]).all()
    assert first[2] == second[2]


def test_run_status_of_a_vanished_process(tmp_path: Path) -> None:
    write_status(tmp_path, "running", epoch=1, total_epochs=4)
    assert read_status(tmp_path)["status"] == "running"  # this very process
    st = json.loads((tmp_path / "status.json").read_text())
    st["pid"] = 2**22 + 12345  # beyond pid_max on Linux: surely not running
    (tmp_path / "status.json").write_text(json.dumps(st))
    info = read_run(tmp_path)
    assert info.status == "stopped" and "no longer running" in info.message
    assert info.progress == 0.25
    assert read_run(tmp_path / "missing").status == "unknown"
    assert os.getpid() != st["pid"]


# ---------------------------------------------------------------------- ImageNet MAE init


def _fake_mae(
    depth: int, width: int, dec_width: int, dec_depth: int, img: int, seed: int = 0
) -> dict:
    """A randomly initialised timm ViT plus a fake MAE decoder, with MAE's key names."""
    from timm.models.vision_transformer import Block as TimmBlock
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(seed)
    vit = VisionTransformer(
        img_size=img,
        patch_size=16,
        embed_dim=width,
        depth=depth,
        num_heads=2,
        num_classes=0,
        global_pool="token",
    )
    sd = {k: torch.randn_like(v) for k, v in vit.state_dict().items()}  # no 1/0 LayerNorms
    n = (img // 16) ** 2
    sd["mask_token"] = torch.randn(1, 1, dec_width)
    sd["decoder_embed.weight"] = torch.randn(dec_width, width)
    sd["decoder_embed.bias"] = torch.randn(dec_width)
    sd["decoder_pos_embed"] = torch.randn(1, n + 1, dec_width)
    for j in range(dec_depth):
        blk = TimmBlock(dec_width, 2, qkv_bias=True)  # MAE's decoder blocks have a qkv bias
        for name, v in blk.state_dict().items():
            sd[f"decoder_blocks.{j}.{name}"] = torch.randn_like(v)
    sd["decoder_norm.weight"] = torch.randn(dec_width)
    sd["decoder_norm.bias"] = torch.randn(dec_width)
    sd["decoder_pred.weight"] = torch.randn(16 * 16 * 3, dec_width)
    sd["decoder_pred.bias"] = torch.randn(16 * 16 * 3)
    return sd


def test_adapt_mae_vit_maps_every_tensor() -> None:
    from training.init import BLOCK_PARAMS, adapt_mae_vit

    cfg = cavmae_tiny()  # 1 modality-specific + 1 shared block, width 32, decoder 16 x 1
    mae = _fake_mae(depth=2, width=32, dec_width=16, dec_depth=1, img=32)
    out = adapt_mae_vit({f"module.{k}": v for k, v in mae.items()}, cfg)
    for name in BLOCK_PARAMS:
        assert torch.equal(out[f"blocks_a.0.{name}"], mae[f"blocks.0.{name}"])
        assert torch.equal(out[f"blocks_v.0.{name}"], mae[f"blocks.0.{name}"])
        assert torch.equal(out[f"blocks_u.0.{name}"], mae[f"blocks.1.{name}"])
        assert torch.equal(out[f"decoder_blocks.0.{name}"], mae[f"decoder_blocks.0.{name}"])
    for m in ("a", "v"):
        for norm in ("norm1", "norm2"):
            for p in ("weight", "bias"):
                assert torch.equal(out[f"blocks_u.0.{norm}_{m}.{p}"], mae[f"blocks.1.{norm}.{p}"])
    for dst in ("norm", "norm_a", "norm_v"):
        assert torch.equal(out[f"{dst}.weight"], mae["norm.weight"])
        assert torch.equal(out[f"{dst}.bias"], mae["norm.bias"])
    assert torch.equal(out["patch_embed_v.proj.weight"], mae["patch_embed.proj.weight"])
    assert out["patch_embed_a.proj.weight"].shape == (32, 1, 16, 16)
    torch.testing.assert_close(
        out["patch_embed_a.proj.weight"][:, 0], mae["patch_embed.proj.weight"].sum(dim=1)
    )  # RGB sum
    assert torch.equal(out["patch_embed_a.proj.bias"], mae["patch_embed.proj.bias"])
    assert torch.equal(out["pos_embed_v"], mae["pos_embed"][:, 1:])  # cls row dropped
    assert torch.equal(out["decoder_pos_embed_v"], mae["decoder_pos_embed"][:, 1:])
    assert torch.equal(out["decoder_pred_v.weight"], mae["decoder_pred.weight"])
    assert torch.equal(
        out["decoder_pred_a.weight"], mae["decoder_pred.weight"][:256]
    )  # first P_a rows
    assert torch.equal(out["decoder_pred_a.bias"], mae["decoder_pred.bias"][:256])
    for k in ("mask_token", "decoder_embed.weight", "decoder_norm.bias"):
        assert torch.equal(out[k], mae[k])
    assert not any("cls_token" in k for k in out)
    out["norm.weight"].add_(1.0)  # copies, not views of the source
    assert not torch.equal(out["norm.weight"], mae["norm.weight"])


def test_load_imagenet_mae_asserts_the_missing_set(tmp_path: Path) -> None:
    from cavmae.models import CAVMAE
    from training.init import expected_missing_keys, load_imagenet_mae

    mae = _fake_mae(depth=2, width=32, dec_width=16, dec_depth=1, img=32)
    torch.save({"model": mae}, tmp_path / "mae.pth")  # the facebookresearch/mae layout
    cfg = build_config(
        PretrainConfig, "tiny_smoke", {"init": f"imagenet-mae:{tmp_path / 'mae.pth'}"}
    )
    torch.manual_seed(1)
    fresh = CAVMAE.from_config(cavmae_tiny()).state_dict()
    torch.manual_seed(1)
    model = pretrain.build_pretrain_model(cfg)  # type: ignore[arg-type]
    sd = model.state_dict()
    missing = expected_missing_keys(model, with_decoder=True)
    assert "modality_a" in missing and "blocks_a.0.norm1_a.weight" in missing
    assert "decoder_blocks.0.norm2_v.bias" in missing and "pos_embed_a" in missing
    for k in sd:
        if k in missing:
            assert torch.equal(sd[k], fresh[k]), k  # fresh CAV-MAE initialisation kept
        else:
            assert not torch.equal(sd[k], fresh[k]), k  # everything else came from MAE
    # an encoder-only timm ViT leaves the whole decoder fresh
    encoder_only = {k: v for k, v in mae.items() if not k.startswith(("decoder", "mask_token"))}
    torch.manual_seed(1)
    model2 = CAVMAE.from_config(cavmae_tiny())
    load_imagenet_mae(model2, encoder_only)
    assert torch.equal(model2.decoder_pred_a.weight, fresh["decoder_pred_a.weight"])
    assert torch.equal(model2.blocks_u[0].attn.qkv.weight, mae["blocks.1.attn.qkv.weight"])
    with pytest.raises(ConfigError, match="needs 2 modality-specific"):
        load_imagenet_mae(CAVMAE.from_config(cavmae_tiny(modality_specific_depth=2)), encoder_only)
    with pytest.raises(CheckpointError, match="not a file"):
        pretrain.build_pretrain_model(
            build_config(  # type: ignore[arg-type]
                PretrainConfig, "tiny_smoke", {"init": f"imagenet-mae:{tmp_path / 'nope.pth'}"}
            )
        )


@pytest.mark.slow
def test_adapt_full_size_vit_b_covers_the_official_key_set() -> None:
    import timm

    from cavmae.config import cavmae_base
    from cavmae.models import CAVMAE
    from training.init import expected_missing_keys, load_imagenet_mae

    vit = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0)
    base = cavmae_base()
    model = CAVMAE.from_config(base)
    dec = {
        k.replace("decoder_pred_v", "decoder_pred"): v
        for k, v in model.state_dict().items()
        if k.startswith(
            ("decoder_embed", "decoder_blocks", "decoder_norm", "decoder_pred_v", "mask_token")
        )
    }
    dec["decoder_pos_embed"] = torch.zeros(1, 197, base.decoder_embed_dim)
    load_imagenet_mae(model, {**vit.state_dict(), **dec})  # raises on any unexpected gap
    missing = expected_missing_keys(model, with_decoder=True)
    assert len(model.state_dict()) == 647  # OFFICIAL_CAVMAE.md §3.3: the 647 CAVMAE keys
    # 11 blocks x 2 branches x 4 side norms x 2 + 8 decoder blocks x 8 + 6 tokens/tables
    assert len(missing) == 11 * 2 * 8 + 8 * 8 + 6
    assert torch.equal(
        model.blocks_a[10].mlp.fc2.weight, vit.state_dict()["blocks.10.mlp.fc2.weight"]
    )
    assert torch.equal(model.blocks_u[0].norm1_v.bias, vit.state_dict()["blocks.11.norm1.bias"])


# ---------------------------------------------------------------------- inits, stops, CLI


def test_pretrain_init_from_an_official_format_checkpoint(tmp_path: Path) -> None:
    """A DataParallel-style ``module.``-prefixed .pth starts a pretraining run unchanged."""
    from cavmae.models import CAVMAE

    torch.manual_seed(5)
    src = CAVMAE.from_config(cavmae_tiny()).state_dict()
    torch.save({f"module.{k}": v for k, v in src.items()}, tmp_path / "audio_model.3.pth")
    # official files carry no config: what the tensors cannot tell comes from model_args
    cfg = build_config(
        PretrainConfig,
        "tiny_smoke",
        {
            "init": str(tmp_path / "audio_model.3.pth"),
            "model_args": {"num_heads": 2, "decoder_num_heads": 2},
        },
    )
    model = pretrain.build_pretrain_model(cfg)  # type: ignore[arg-type]
    assert all(torch.equal(v, src[k]) for k, v in model.state_dict().items())
    with pytest.raises(CheckpointError):
        pretrain.build_pretrain_model(
            build_config(  # type: ignore[arg-type]
                PretrainConfig, "tiny_smoke", {"init": str(tmp_path / "missing.pth")}
            )
        )


class _DictData(Dataset):
    def __init__(self, n: int = 32) -> None:
        self.batches = _batches(1, n)[0]

    def __len__(self) -> int:
        return len(self.batches["fbank"])

    def __getitem__(self, i: int) -> dict:
        return {"fbank": self.batches["fbank"][i], "label": self.batches["label"][i], "index": i}


def test_stop_signal_saves_a_resumable_state(tmp_path: Path) -> None:
    """SIGTERM (the app's Stop button) ends the step, writes last.pt and status 'stopped'."""
    import signal

    from training.trainer import RunContext, Trainer

    def sends_sigterm_on_call(k: int):
        inner = _reg_objective()
        calls = {"n": 0}

        def obj(model: nn.Module, batch: dict) -> StepOutput:
            calls["n"] += 1
            if calls["n"] == k:
                signal.raise_signal(signal.SIGTERM)
            return inner(model, batch)

        return obj

    def trainer(out: Path, objective, epochs: int = 2) -> Trainer:
        cfg = build_config(
            PretrainConfig,
            "tiny_smoke",
            {
                "out_dir": str(out),
                "epochs": epochs,
                "lr": 0.05,
                "schedule": "constant",
                "progress": False,
                "save_every": 0,
            },
        )
        torch.manual_seed(0)
        run = RunContext.create(cfg, DistEnv())
        return Trainer(
            cfg,
            DistEnv(),
            run,
            _Regression(),
            _DictData(),
            objective,
            evaluate_fn=None,
            export_model=lambda m, p, meta: torch.save(m.state_dict(), p),
        )

    t = trainer(tmp_path / "a", sends_sigterm_on_call(3))
    res = t.fit()
    assert not res.completed and res.global_step == 3
    st = read_status(tmp_path / "a")
    assert st["status"] == "stopped" and "stop signal" in st["message"]
    assert signal.getsignal(signal.SIGTERM) is not t.stop_flag._handle  # handler restored
    state = load_training_state(tmp_path / "a" / "last.pt")
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (0, 3, 3)
    assert state["sampler"] == {"epoch": 0, "seed": 0, "consumed": 24}
    t.run.close()
    resumed = trainer(tmp_path / "a", _reg_objective())
    assert resumed.fit().completed
    straight = trainer(tmp_path / "b", _reg_objective())
    straight.fit()
    assert torch.equal(resumed.model.lin.weight, straight.model.lin.weight)


@pytest.mark.slow
def test_cli_end_to_end_on_prepared_synthetic_data(tmp_path: Path) -> None:
    """prepare (AV-Shapes) -> pretrain CLI -> fine-tune CLI with WA and the 10-frame ensemble."""
    from training.data import prepare_synthetic
    from training.synthetic import AVShapesConfig

    syn = AVShapesConfig(num_classes=3, duration_s=0.7, fps=15, size=32, mix_prob=0.3)
    fc = FeatureConfig(num_mel_bins=32, target_length=64, img_size=32)
    prepare_synthetic(tmp_path / "data", 20, seed=0, cfg=syn, workers=0, feature_config=fc)
    assert (
        pretrain.cli(
            [
                "--recipe",
                "tiny_smoke",
                "--data",
                str(tmp_path / "data"),
                "--out",
                str(tmp_path / "pt"),
                "--epochs",
                "1",
                "--val_fraction",
                "0.2",
                "--no-progress",
            ]
        )
        == 0
    )
    assert read_run(tmp_path / "pt").status == "finished"
    assert (
        finetune.cli(
            [
                "--recipe",
                "tiny_smoke_ft",
                "--data",
                str(tmp_path / "data"),
                "--out",
                str(tmp_path / "ft"),
                "--init",
                str(tmp_path / "pt" / "model.safetensors"),
                "--epochs",
                "2",
                "--wa_start",
                "1",
                "--wa_end",
                "2",
                "--val_fraction",
                "0.2",
                "--no-progress",
            ]
        )
        == 0
    )
    final = read_metrics(tmp_path / "ft", type="final")[-1]
    assert final["num_frames"] == 10 and final["metric"] == "mAP"  # mixtures: multi-label
    assert 0.0 <= final["final_mAP"] <= 1.0
    # the middle frame of the ensemble is the official single evaluation frame
    assert final["frame5_mAP"] == pytest.approx(final["final_single_mAP"])
    assert (
        finetune.cli(
            [
                "--recipe",
                "tiny_smoke_ft",
                "--data",
                str(tmp_path / "nowhere"),
                "--out",
                str(tmp_path / "bad"),
            ]
        )
        == 2
    )


def test_balanced_sampling_uses_the_official_weights() -> None:
    from training.samplers import DistributedWeightedSampler, balanced_weights

    ds = RandomAV(12, num_classes=3)
    ds.labels_matrix[:6] = 0.0
    ds.labels_matrix[:6, 0] = 1.0  # class 0 is now twice as frequent as 1 and 2 together
    sampler = finetune._balanced_sampler_factory(ds, DistEnv(), 0)
    assert isinstance(sampler, DistributedWeightedSampler) and len(sampler) == 12
    torch.testing.assert_close(sampler.weights, torch.as_tensor(balanced_weights(ds.labels_matrix)))
    assert finetune.dataset_is_multi_label(ds) is False
    ds.labels_matrix[0, 1] = 1.0
    assert finetune.dataset_is_multi_label(ds) is True


class _RecordingAV(RandomAV):
    """RandomAV that remembers the order in which the loader asked for its clips."""

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.asked: list[int] = []

    def __getitem__(self, i: int) -> dict:
        self.asked.append(int(i))
        return super().__getitem__(i)


@pytest.mark.parametrize("groups", [0, 4])
def test_pretrain_class_groups_build_same_class_batches(tmp_path: Path, groups: int) -> None:
    data = _RecordingAV(48, num_classes=6)
    cfg = _pt_cfg(tmp_path / "run", epochs=1, val_fraction=0.0, class_groups=groups)
    assert pretrain.train(cfg, DistEnv(), data).path is not None
    labels = data.labels_matrix.argmax(1)
    quads = np.asarray(data.asked[:48]).reshape(-1, 4)  # the epoch's 6 batches of 8, in quarters
    one_class = [len(set(labels[q].tolist())) == 1 for q in quads]
    if groups:
        assert all(one_class)
    else:  # a plain shuffle of 6 classes rarely puts 4 of one class side by side
        assert sum(one_class) <= 2
