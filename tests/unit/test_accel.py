"""Tests for cavmae.accel, the audio-once ensemble and the bench helpers (FLOP counts, tables)."""

from __future__ import annotations

import functools
import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from cavmae.accel import (
    available_cores,
    compile_blocks,
    default_inference_dtype,
    inference_autocast,
    optimize_for_inference,
    set_cpu_threads,
)
from cavmae.checkpoint.loading import LoadedCheckpoint
from cavmae.config import FeatureConfig, ModelConfig, cavmae_tiny
from cavmae.errors import ConfigError
from cavmae.inference import Predictor
from cavmae.models import CAVMAE, CAVMAEFT

ROOT = Path(__file__).resolve().parents[2]


@functools.cache
def _bench_common() -> ModuleType:
    """bench/common.py loaded by path (bench/ is a folder of scripts, not a package)."""
    name = "_bench_common_under_test"
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / "common.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(mod)
    return mod


def _ft_cfg(**kw: object) -> ModelConfig:
    return cavmae_tiny(label_dim=7, tr_pos=True, **kw)


def _pair(cfg: ModelConfig) -> tuple[CAVMAEFT, CAVMAEFT]:
    """An eager-attention reference and an identical copy."""
    ref = CAVMAEFT.from_config(cfg, attn_impl="eager").eval()
    other = CAVMAEFT.from_config(cfg, attn_impl="eager")
    other.load_state_dict(ref.state_dict())
    return ref, other


def _inputs(cfg: ModelConfig, b: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    fbank = torch.randn(b, cfg.audio_length, cfg.num_mel_bins)
    frames = torch.randn(b, k, cfg.in_chans, cfg.img_size, cfg.img_size)
    return fbank, frames


@pytest.fixture
def restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


# ---------------------------------------------------------------------- optimize_for_inference


def test_optimize_for_inference_is_in_place_and_exact() -> None:
    cfg = _ft_cfg()
    ref, model = _pair(cfg)
    model.train()
    out = optimize_for_inference(model, "cpu")
    assert out is model
    assert not model.training
    assert model.attn_impl == "sdpa" and ref.attn_impl == "eager"
    assert not any(p.requires_grad for p in model.parameters())
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert list(model.state_dict()) == list(ref.state_dict())
    fbank, frames = _inputs(cfg, 3, 1)
    with torch.inference_mode():
        want = ref(fbank, frames[:, 0])
        got = model(fbank, frames[:, 0])
    assert torch.allclose(got, want, atol=1e-5, rtol=0)
    assert (want[0] - want[1]).abs().max() > 1e-3  # the inputs give distinct outputs


def test_threads_are_set_and_validated(restore_threads: None) -> None:
    cfg = _ft_cfg()
    optimize_for_inference(CAVMAEFT.from_config(cfg), "cpu", threads=1)
    assert torch.get_num_threads() == 1
    set_cpu_threads(2)
    assert torch.get_num_threads() == 2
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ConfigError, match="threads"):
            set_cpu_threads(bad)  # type: ignore[arg-type]


def test_available_cores_subtracts_foreign_load() -> None:
    cores = len(os.sched_getaffinity(0))
    assert available_cores(load=0.0) == cores
    assert available_cores(load=cores + 5.0) == 1
    assert available_cores(load=cores - 1.2) == 1
    assert available_cores(load=-3.0) == cores  # never more than the cores
    assert 1 <= available_cores() <= cores


def test_bf16_weights_run_under_autocast_close_to_fp32() -> None:
    cfg = _ft_cfg()
    ref, model = _pair(cfg)
    optimize_for_inference(model, "cpu", dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    fbank, frames = _inputs(cfg, 2, 1)
    with torch.inference_mode():
        want = ref(fbank, frames[:, 0])
        with inference_autocast("cpu", torch.bfloat16):
            got = model(fbank, frames[:, 0]).float()
    err = (got - want).abs().max()
    assert 0 < err < 0.1 * want.abs().max()


def test_unsupported_dtypes_are_rejected() -> None:
    model = CAVMAEFT.from_config(_ft_cfg())
    with pytest.raises(ConfigError, match="float16"):
        optimize_for_inference(model, "cpu", dtype=torch.float16)
    with pytest.raises(ConfigError, match="unsupported"):
        inference_autocast("cpu", torch.int8)


def test_inference_autocast_policy_on_cpu() -> None:
    assert default_inference_dtype("cpu") == torch.float32
    with inference_autocast("cpu"):
        assert not torch.is_autocast_enabled("cpu")
    with inference_autocast("cpu", torch.bfloat16):
        assert torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16


@pytest.mark.slow
def test_compiled_blocks_keep_outputs_and_keys() -> None:
    # "aot_eager" traces like inductor but generates no C++ (inductor runs in the bench).
    cfg = _ft_cfg()
    ref, model = _pair(cfg)
    keys = list(model.state_dict())
    optimize_for_inference(model, "cpu")
    n = compile_blocks(model, backend="aot_eager")
    assert n == 2 * cfg.modality_specific_depth + cfg.num_shared_blocks
    assert list(model.state_dict()) == keys  # no _orig_mod. prefix
    fbank, frames = _inputs(cfg, 2, 1)
    with torch.inference_mode():
        want = ref(fbank, frames[:, 0])
        got = model(fbank, frames[:, 0])
    assert torch.allclose(got, want, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------- ensemble (audio once)


def _per_frame(
    model: CAVMAEFT, fbank: torch.Tensor, frames: torch.Tensor, multi: bool
) -> torch.Tensor:
    """The official K-frame evaluation: a full forward per frame, averaged probabilities."""
    act = torch.sigmoid if multi else (lambda x: torch.softmax(x, dim=-1))
    with torch.inference_mode():
        return torch.stack([act(model(fbank, frames[:, k])) for k in range(frames.shape[1])]).mean(
            0
        )


@pytest.mark.parametrize("multi_label", [True, False])
def test_audio_once_ensemble_equals_per_frame_recomputation(multi_label: bool) -> None:
    cfg = _ft_cfg()
    ref, model = _pair(cfg)
    loaded = LoadedCheckpoint(
        model=optimize_for_inference(model, "cpu"),
        config=cfg,
        features=FeatureConfig.for_model(cfg),
        labels=None,
        multi_label=multi_label,
        kind="finetune",
        source=None,
    )
    pred = Predictor(classifier=loaded, device="cpu")
    fbank, frames = _inputs(cfg, 2, 4)
    want = _per_frame(ref, fbank, frames, multi_label)  # (B, C)
    got = pred.class_probabilities(fbank, frames, "multimodal")
    assert got.shape == (2, cfg.label_dim)
    assert (got - want).abs().max() <= 1e-5
    # The check can fail: the ensemble differs from one frame, and clips differ from each other.
    one = _per_frame(ref, fbank, frames[:, :1], multi_label)
    assert (one - want).abs().max() > 1e-4
    assert (want[0] - want[1]).abs().max() > 1e-4


# ---------------------------------------------------------------------- bench helpers


@pytest.mark.parametrize("kw", [{}, {"modality_specific_depth": 2, "shared_depth": 2}])
def test_ft_flops_match_flop_counter(kw: dict[str, int]) -> None:
    common = _bench_common()
    cfg = _ft_cfg(**kw)
    # Eager attention: FlopCounterMode sees its matmuls (CPU SDPA kernels are not counted).
    model = CAVMAEFT.from_config(cfg, attn_impl="eager").eval()
    fbank, frames = _inputs(cfg, 3, 1)
    for mode in ("multimodal", "audioonly", "videoonly"):
        with FlopCounterMode(display=False) as fc, torch.inference_mode():
            model(fbank, frames[:, 0], mode)
        assert fc.get_total_flops() == 3 * common.ft_forward_flops(cfg, mode), mode
    with pytest.raises(ValueError, match="mode"):
        common.ft_forward_flops(cfg, "missingaudioonly")


@pytest.mark.parametrize("ratio", [0.75, 0.5])
def test_pretrain_flops_match_flop_counter(ratio: float) -> None:
    common = _bench_common()
    cfg = cavmae_tiny(decoder_depth=2)
    model = CAVMAE.from_config(cfg, attn_impl="eager")
    b = 4
    fbank, frames = _inputs(cfg, b, 1)
    with FlopCounterMode(display=False) as fwd:
        model(fbank, frames[:, 0], ratio, ratio)
    assert fwd.get_total_flops() == b * common.pretrain_forward_flops(cfg, ratio, ratio, b)
    with FlopCounterMode(display=False) as step:
        model(fbank, frames[:, 0], ratio, ratio).loss.backward()
    assert step.get_total_flops() == pytest.approx(
        b * common.pretrain_step_flops(cfg, ratio, ratio, b), rel=1e-9
    )


def test_full_size_flops_agree_with_the_issue() -> None:
    common = _bench_common()
    from cavmae.config import cavmae_base, cavmae_ft_base

    # Issue 7 quotes ~231 GFLOP per clip (fwd + bwd) at 75 % masking.
    assert common.pretrain_step_flops(cavmae_base(), batch=64) / 1e9 == pytest.approx(231, rel=0.02)
    assert common.ft_forward_flops(cavmae_ft_base(527)) / 1e9 == pytest.approx(132.4, rel=1e-3)


def test_format_table_is_markdown() -> None:
    common = _bench_common()
    text = common.format_table(["a", "b"], [["x", 1.23456], ["yy", None], ["z", 12345.6]])
    lines = text.splitlines()
    assert lines[0].startswith("| a ") and lines[1].startswith("|---")
    assert [ln.count("|") for ln in lines] == [3] * 5
    assert "1.23" in lines[2] and "-" in lines[3] and "12,346" in lines[4]


def test_interleaved_timing_runs_each_variant_each_round() -> None:
    common = _bench_common()
    calls: list[str] = []
    t = common.time_interleaved(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
        rounds=3,
        warmup=1,
        before={"b": lambda: calls.append("setup")},
    )
    assert calls == ["a", "setup", "b"] + ["a", "setup", "b"] * 3
    assert len(t["a"].runs) == 3 and t["b"].median >= 0


@pytest.mark.slow
@pytest.mark.parametrize(
    "argv",
    [
        ["bench/bench_gpu.py", "--quick", "--device", "cpu", "--no-compile"],
        ["bench/bench_inference.py", "--quick", "--no-compile", "--thread-variants"],
        ["bench/bench_index_build.py", "--files", "2", "--skip-full", "--workers", "2"],
    ],
)
def test_bench_scripts_run_quick(argv: list[str]) -> None:
    res = subprocess.run(
        [sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "| variant" in res.stdout and "passed" in res.stdout
    if "bench_gpu.py" in argv[0]:
        assert "data loader, 0 workers" in res.stdout  # the loader rate beside the training rate


@pytest.mark.slow
def test_gpu_bench_reports_a_failing_variant_and_goes_on() -> None:
    """A variant that fails (here: a torch.compile mode that does not exist) gets its error in
    its row; the other variants still run and the script exits 1."""
    res = subprocess.run(
        [
            sys.executable,
            "bench/bench_gpu.py",
            "--quick",
            "--device",
            "cpu",
            "--sections",
            "infer",
            "--compile-mode",
            "no-such-mode",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 1, res.stdout[-2000:] + res.stderr[-2000:]
    rows = [ln for ln in res.stdout.splitlines() if ln.startswith("| ")]
    failed = [ln for ln in rows if "FAILED: RuntimeError" in ln and "no-such-mode" in ln]
    assert len(failed) == 2  # compiled blocks and the whole-model compile
    assert any(
        ln.startswith("| bf16 weights, sdpa (optimize_for_inference)") and "FAILED" not in ln
        for ln in rows
    )
    assert "Traceback" not in res.stderr
