"""A new user's training session, run as subprocesses with the commands of docs/TRAINING.md.

Scaled down to seconds: a generated folder of 2 classes x 3 short mp4 clips, prepared in the
geometry of the ``tiny_smoke`` recipes (64 x 32 fbank, 32 x 32 frames: ``--model cavmae_tiny``),
then

1. pretraining (``python -m training.pretrain --recipe tiny_smoke``), the reference run;
2. the same pretraining killed with SIGKILL in the middle and started again with the same
   command: it must say it resumed, finish, and end with exactly the reference model;
3. fine-tuning from the pretraining run's ``model.safetensors`` as a 2-process
   ``torchrun`` (gloo) run, with weight averaging and the 10-frame evaluation;
4. ``cavmae classify FILE --model RUN_DIR --json`` and ``cavmae evaluate retrieval``;
5. fine-tuning (linear probe) from a checkpoint in the official format: a ``torch.save``-d
   CAVMAE state_dict with the ``module.`` prefix of DataParallel, as ``--init x.pth``.

The steps share one module-scoped workspace; each test checks one documented promise.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

CLASSES = ["blue square + rising chirp", "red circle + 440 Hz tone"]  # AV-Shapes classes 0, 1
# Pretraining settings shared by the reference and the killed run (6 epochs x 2 steps).
PRETRAIN_ARGS = ["--recipe", "tiny_smoke", "--batch_size", "2", "--epochs", "6"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="1",  # tiny models; two processes share the CI machine's 2 cores
        PYTHONUNBUFFERED="1",
        GRADIO_ANALYTICS_ENABLED="False",
    )
    return env


def _module(name: str) -> list[str]:
    return [sys.executable, "-m", name]


def _console(script: str, module: str) -> list[str]:
    """The installed console script (as a user types it), else its module."""
    exe = BIN / script
    return [str(exe)] if exe.is_file() else _module(module)


def _run(cmd: list[str], timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """Run a documented command from the repository root; fail with its stderr on error."""
    proc = subprocess.run(
        cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        pytest.fail(
            f"{' '.join(cmd)} exited with {proc.returncode}\n--- stderr (tail) ---\n"
            f"{proc.stderr[-4000:]}\n--- stdout (tail) ---\n{proc.stdout[-2000:]}"
        )
    return proc


def _metrics(run_dir: Path, kind: str) -> list[dict[str, Any]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["type"] == kind]


def _status(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "status.json").read_text())


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


# ---------------------------------------------------------------------- workspace


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """videos/ (generated) and data/ (prepared), shared by every step."""
    root = tmp_path_factory.mktemp("e2e")
    _run(
        _module("training.synthetic")
        + [str(root / "videos"), "--per-class", "3", "--num-classes", "2"]
        + ["--duration", "2", "--size", "64", "--fps", "10"]
    )
    _run(
        _module("training.prepare")
        + [str(root / "videos"), str(root / "data"), "--model", "cavmae_tiny", "--workers", "1"]
    )
    return root


@pytest.fixture(scope="module")
def pretrain_run(ws: Path) -> Path:
    out = ws / "runs" / "pt"
    _run(
        _module("training.pretrain")
        + PRETRAIN_ARGS
        + ["--data", str(ws / "data"), "--out", str(out)]
    )
    return out


@pytest.fixture(scope="module")
def finetune_run(ws: Path, pretrain_run: Path) -> Path:
    out = ws / "runs" / "ft"
    torchrun = (
        [str(BIN / "torchrun")]
        if (BIN / "torchrun").is_file()
        else _module("torch.distributed.run")
    )
    _run(
        torchrun
        + ["--standalone", "--nproc_per_node", "2", "-m", "training.finetune"]
        + ["--recipe", "tiny_smoke_ft", "--data", str(ws / "data"), "--out", str(out)]
        + ["--init", str(pretrain_run / "model.safetensors")]
        + ["--batch_size", "2", "--val_fraction", "0.34", "--tensorboard"],
        timeout=180.0,
    )
    return out


# ---------------------------------------------------------------------- steps


def test_prepare_writes_class_folders_in_the_tiny_geometry(ws: Path) -> None:
    """The default format: webdataset tar shards of float16 fbanks and JPEG frames."""
    import tarfile

    from training.data.shards import SHARD_FORMAT, decode_fbank, decode_jpeg

    videos = sorted(p.relative_to(ws / "videos") for p in (ws / "videos").rglob("*.mp4"))
    assert [p.parent.name for p in videos] == [CLASSES[0]] * 3 + [CLASSES[1]] * 3
    data = ws / "data"
    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["format"] == SHARD_FORMAT
    assert manifest["complete"] and manifest["count"] == 6 and manifest["skipped"] == []
    assert (manifest["target_length"], manifest["num_mel_bins"], manifest["image_size"]) == (
        64,
        32,
        32,
    )
    assert manifest["num_classes"] == 2 and manifest["frames_per_clip"] == 10
    labels = (data / "labels.csv").read_text().splitlines()
    assert labels == ["index,mid,display_name"] + [f"{i},{c},{c}" for i, c in enumerate(CLASSES)]
    assert sum(s["count"] for s in manifest["shards"]) == 6
    members: dict[str, dict[str, bytes]] = {}
    for shard in manifest["shards"]:
        with tarfile.open(data / shard["name"]) as tar:
            for m in tar.getmembers():
                key, ext = m.name.split(".", 1)
                members.setdefault(key, {})[ext] = tar.extractfile(m).read()  # type: ignore[union-attr]
    assert len(members) == 6
    for sample in members.values():
        assert set(sample) == {"fbank.f16z", "json"} | {f"f{k}.jpg" for k in range(10)}
        fbank = decode_fbank(sample["fbank.f16z"])  # (n, F) raw log-mel, real rows only
        # 2 s of audio fill 2 s / 10 ms = ~200 frames > 64: no zero padding, real content
        assert fbank.dtype == np.float16 and fbank.shape[1] == 32 and fbank.shape[0] >= 64
        assert np.isfinite(fbank).all() and float(np.abs(fbank).min()) > 0
        frame = decode_jpeg(sample["f0.jpg"])  # (S, S, 3) uint8
        assert frame.shape == (32, 32, 3) and frame.std() > 5  # shapes, not a blank frame
        record = json.loads(sample["json"])
        assert record["has_audio"] and record["has_video"] and len(record["labels"]) == 1


def test_pretrain_writes_the_documented_run_directory(pretrain_run: Path) -> None:
    cfg = json.loads((pretrain_run / "config.json").read_text())
    assert (cfg["kind"], cfg["recipe"], cfg["model"], cfg["batch_size"], cfg["epochs"]) == (
        "pretrain",
        "tiny_smoke",
        "cavmae_tiny",
        2,
        6,
    )
    st = _status(pretrain_run)
    assert (st["status"], st["epoch"], st["global_step"], st["total_steps"]) == (
        "finished",
        6,
        12,
        12,
    )
    steps, epochs = _metrics(pretrain_run, "step"), _metrics(pretrain_run, "epoch")
    assert [r["step"] for r in steps] == list(range(1, 13))
    assert [r["epoch"] for r in epochs] == list(range(1, 7))
    assert all(np.isfinite(r["loss"]) for r in steps)
    # the validation loss uses fixed masks: it must fall while the model learns
    assert epochs[-1]["val_loss_mae"] < epochs[0]["val_loss_mae"]
    assert (pretrain_run / "last.pt").is_file() and (pretrain_run / "train.log").is_file()
    assert (pretrain_run / "checkpoints" / "epoch_006.safetensors").is_file()

    from cavmae.checkpoint import load_checkpoint

    loaded = load_checkpoint(pretrain_run / "model.safetensors")
    assert loaded.kind == "pretrain" and loaded.features.num_mel_bins == 32
    assert loaded.features.target_length == 64 and loaded.features.img_size == 32


def test_pretrain_resumes_after_sigkill_exactly(ws: Path, pretrain_run: Path) -> None:
    out = ws / "runs" / "pt_killed"
    cmd = (
        _module("training.pretrain")
        + PRETRAIN_ARGS
        + ["--data", str(ws / "data"), "--out", str(out)]
    )
    cmd += ["--save_every_steps", "1"]  # last.pt inside epochs too
    log = ws / "pt_killed.stderr"
    with log.open("w") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=err)
    killed_at = None
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                step = json.loads((out / "status.json").read_text()).get("global_step", 0)
            except (FileNotFoundError, json.JSONDecodeError):
                step = 0
            if step >= 3 and (out / "last.pt").is_file():
                os.kill(proc.pid, signal.SIGKILL)
                killed_at = step
                break
            time.sleep(0.01)
    finally:
        if proc.poll() is None and killed_at is None:
            proc.kill()
        proc.wait(timeout=60)
    assert killed_at is not None, f"the run ended before it was killed:\n{log.read_text()[-3000:]}"
    assert proc.returncode == -signal.SIGKILL

    from training.runs import read_run

    info = read_run(out)
    assert info.status == "stopped" and "run the same command again" in info.message
    assert not (out / "model.safetensors").exists()
    from training.checkpointing import load_training_state

    assert load_training_state(out / "last.pt")["global_step"] >= 1  # never a torn file

    resumed = _run(cmd)  # the same command again
    assert "resumed from" in resumed.stderr
    assert "resumed from" in (out / "train.log").read_text()
    assert _status(out)["status"] == "finished"
    # one record per step, and the numbers of an uninterrupted run, bit for bit
    ref_steps, steps = _metrics(pretrain_run, "step"), _metrics(out, "step")
    assert [r["step"] for r in steps] == list(range(1, 13))
    assert [r["loss"] for r in steps] == [r["loss"] for r in ref_steps]
    ref, got = _tensors(pretrain_run / "model.safetensors"), _tensors(out / "model.safetensors")
    assert ref.keys() == got.keys()
    assert all(torch.equal(ref[k], got[k]) for k in ref)


def test_two_process_finetune_from_the_pretrained_model(finetune_run: Path) -> None:
    st = _status(finetune_run)
    assert st["status"] == "finished" and st["world_size"] == 2
    cfg = json.loads((finetune_run / "config.json").read_text())
    assert cfg["init"].endswith("pt/model.safetensors") and cfg["mode"] == "multimodal"
    epochs = _metrics(finetune_run, "epoch")
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    assert all("val_acc" in r and "val_mAP" in r for r in epochs)
    final = _metrics(finetune_run, "final")[-1]
    # weight averaging of epochs 2..3 (tiny_smoke_ft), then the 10-frame ensemble
    assert (final["selection"], final["wa_start"], final["wa_end"]) == ("wa", 2, 3)
    assert final["num_frames"] == 10 and final["metric"] == "acc"
    assert final["final_acc"] in (0.0, 0.5, 1.0)  # 2 held-out clips
    assert final["frame5_acc"] == pytest.approx(final["final_single_acc"])
    assert list((finetune_run / "tb").glob("events.out.tfevents.*"))

    from cavmae.checkpoint import load_checkpoint

    loaded = load_checkpoint(finetune_run / "model.safetensors")
    assert loaded.kind == "finetune" and loaded.multi_label is False
    assert loaded.labels is not None and list(loaded.labels.names) == CLASSES


def test_classify_and_evaluate_with_the_trained_runs(
    ws: Path, pretrain_run: Path, finetune_run: Path
) -> None:
    clip = ws / "videos" / CLASSES[1] / "avs_000000.mp4"
    cavmae = _console("cavmae", "cavmae.cli")
    proc = _run(cavmae + ["classify", str(clip), "--model", str(finetune_run), "--json"])
    (result,) = json.loads(proc.stdout)
    assert result["file"] == str(clip) and result["mode"] == "multimodal"
    assert result["frames"] == 10 and result["multi_label"] is False
    preds = result["predictions"]
    assert sorted(p["label"] for p in preds) == CLASSES
    scores = [p["score"] for p in preds]
    assert scores == sorted(scores, reverse=True) and sum(scores) == pytest.approx(1.0, abs=1e-4)

    proc = _run(
        cavmae
        + ["evaluate", "retrieval", str(ws / "videos"), "--model", str(pretrain_run), "--json"]
    )
    report = json.loads(proc.stdout)
    assert report["clips"] == 6
    for direction in ("audio->visual", "visual->audio"):
        m = report["metrics"][direction]
        assert 0.0 <= m["R@1"] <= m["R@5"] <= m["R@10"] == 1.0  # 6 clips: always in the top 10
        assert 1.0 <= m["MR"] <= 6.0


def test_finetune_from_an_official_format_checkpoint(ws: Path) -> None:
    from cavmae.config import cavmae_tiny
    from cavmae.models import CAVMAE

    torch.manual_seed(0)
    official = {f"module.{k}": v for k, v in CAVMAE.from_config(cavmae_tiny()).state_dict().items()}
    pth = ws / "official_tiny.pth"
    torch.save(official, pth)  # what DataParallel training scripts save
    out = ws / "runs" / "probe"
    _run(
        _module("training.finetune")
        + ["--recipe", "tiny_smoke_ft", "--data", str(ws / "data"), "--out", str(out)]
        + ["--init", str(pth), "--model_args.num_heads", "2", "--model_args.num_mel_bins", "32"]
        + ["--freeze_base", "--batch_size", "2", "--epochs", "1", "--no-wa"]
    )
    assert _status(out)["status"] == "finished"
    got = _tensors(out / "model.safetensors")
    # linear probing: every encoder tensor is the official checkpoint's, only the head trained
    base = [k for k in got if not k.startswith("mlp_head.")]
    assert len(base) > 40 and all(torch.equal(got[k], official[f"module.{k}"]) for k in base)
    assert got["mlp_head.1.weight"].shape == (2, 32)
    assert not any(k.startswith("decoder") for k in got)


def test_init_from_a_run_folder_and_errors_that_name_the_fix(ws: Path, pretrain_run: Path) -> None:
    from cavmae.config import FeatureConfig, cavmae_tiny
    from cavmae.errors import CheckpointError, ConfigError
    from training.config import FinetuneConfig, build_config
    from training.init import resolve_init_checkpoint
    from training.pretrain import check_geometry

    # --init RUN_DIR means its final model; an unfinished run is refused with a way out
    assert resolve_init_checkpoint(str(pretrain_run)) == str(pretrain_run / "model.safetensors")
    assert resolve_init_checkpoint("cav-mae-scale++") == "cav-mae-scale++"
    unfinished = ws / "runs" / "unfinished"
    shutil.copytree(pretrain_run, unfinished)
    (unfinished / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="not a finished training run"):
        resolve_init_checkpoint(str(unfinished))
    # weight averaging outside the planned epochs fails at start-up, not after training
    with pytest.raises(ConfigError, match="--no-wa"):
        build_config(FinetuneConfig, "tiny_smoke_ft", {"epochs": 1})
    # an official .pth read with the default 128 mel bins: the mel count is what to fix
    wrong = cavmae_tiny(num_mel_bins=128, audio_length=16)
    with pytest.raises(ConfigError, match="num_mel_bins=32 but the model has num_mel_bins=128"):
        check_geometry(wrong, FeatureConfig.for_model(cavmae_tiny()), "dataset data")
