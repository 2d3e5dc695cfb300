"""GPU benchmarks of issue 7: training throughput, bf16 inference and the 10-frame ensemble.

Each table compares against the project's plain eager float32 path in the same run (eager
attention, no autocast, no TF32, unfused Adam):

(a) **Training** of the full-size CAV-MAE at 75 % masking (batches 64 and 256 by default; the
    float32 reference at the first): bf16 autocast, SDPA (flash) attention, fused Adam, then
    ``torch.compile``. Clips/s, model TFLOP/s and MFU (FLOPs counted from the config, see
    ``common.pretrain_step_flops``: ~234 GFLOP per clip), peak GPU memory; beside them the
    DataLoader rate on a prepared dataset with the pretraining augmentation (``--data DIR``,
    or by default 1,024 AV-Shapes clips, 1.7 GB, prepared into a temporary folder first).
(b) **Inference**: CAVMAEFT multimodal in bf16 (autocast, bf16 weights, compiled blocks),
    clips/s and MFU (~132 GFLOP per clip).
(c) **Ensemble**: K-frame classification, per-frame recomputation (official) against the
    Predictor's audio-once path; the float32 audio-once rows (eager and SDPA attention) must
    equal the per-frame reference to 1e-5 (the script exits 1 otherwise).

A variant that fails (out of memory, a compiler error) is reported in its row and the run goes
on; the script then exits 1.

Usage::

    python bench/bench_gpu.py                            # one H100: about 5-10 minutes
    python bench/bench_gpu.py --data /data/prepared --workers 16 --train-batch 64 128
    python bench/bench_gpu.py --quick --device cpu       # tiny model anywhere (smoke test)
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from bench_inference import clone_classifier, per_frame_probabilities
from common import (
    ft_forward_flops,
    in_memory_predictor,
    machine_description,
    max_abs_diff,
    peak_flops,
    pretrain_step_flops,
    print_table,
    synchronize,
    time_fn,
)

from cavmae.accel import (
    available_cores,
    compile_blocks,
    inference_autocast,
    optimize_for_inference,
)
from cavmae.config import ModelConfig, cavmae_base, cavmae_ft_base, cavmae_tiny
from cavmae.models import CAVMAE, CAVMAEFT

EXACT_TOL = 1e-5
TARGET_TRAIN = 1400.0  # clips/s on one H100 (issue 7)
TARGET_INFER = 3000.0
TARGET_ENSEMBLE = 3.0


@dataclass(frozen=True)
class Sizes:
    """Workload sizes of one run."""

    train_batches: tuple[int, ...]
    train_steps: int
    infer_batch: int
    infer_iters: int
    ens_batch: int
    frames: int


def _free(device: torch.device) -> None:
    """Release cached memory between variants and reset the peak counter."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**30


def _mfu(flops_per_s: float, peak: float | None) -> str:
    return "-" if peak is None else f"{100 * flops_per_s / peak:.1f} %"


def _failure(exc: BaseException) -> str:
    """One table cell describing why a variant did not run."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return "FAILED: out of GPU memory"
    msg = " ".join(str(exc).split())
    return f"FAILED: {type(exc).__name__}: {msg[:160]}"


# ---------------------------------------------------------------------- (a) training


@dataclass(frozen=True)
class TrainVariant:
    name: str
    amp: torch.dtype | None
    attn: str
    fused: bool
    compile: bool


def train_variants(device: torch.device, compile_ok: bool) -> list[TrainVariant]:
    """The reference path first, then the optimisations added one at a time."""
    fused = True  # fused Adam exists on CUDA and (torch >= 2.4) on CPU
    out = [
        TrainVariant("fp32, eager attn, Adam (reference)", None, "eager", False, False),
        TrainVariant("bf16 autocast, sdpa, fused Adam", torch.bfloat16, "sdpa", fused, False),
    ]
    if compile_ok:
        out.append(
            TrainVariant(
                "bf16, sdpa, fused Adam, torch.compile", torch.bfloat16, "sdpa", fused, True
            )
        )
    return out


def bench_train(
    cfg: ModelConfig,
    v: TrainVariant,
    device: torch.device,
    batch: int,
    steps: int,
    compile_mode: str | None = None,
) -> dict[str, object]:
    """Clips/s of full pretraining steps (forward, backward, optimizer) on random inputs."""
    from training.optim import build_optimizer

    _free(device)
    torch.manual_seed(0)
    model = CAVMAE.from_config(cfg, attn_impl=v.attn).to(device).train()
    frozen = model.unused_parameter_names()
    for name, p in model.named_parameters():
        if name in frozen:  # unused by design; no gradient, no optimizer state
            p.requires_grad_(False)
    opt = build_optimizer(model, lr=1e-4, fused=v.fused)
    fwd = torch.compile(model, mode=compile_mode) if v.compile else model
    audio = torch.randn(batch, cfg.audio_length, cfg.num_mel_bins, device=device)
    imgs = torch.randn(batch, cfg.in_chans, cfg.img_size, cfg.img_size, device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=v.amp or torch.float32, enabled=v.amp is not None):
            out = fwd(audio, imgs, 0.75, 0.75, 1.0, 0.01, "unstructured")
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    t0 = time.perf_counter()
    step()  # compiles when asked
    synchronize(device)
    first_s = time.perf_counter() - t0
    t = time_fn(step, runs=steps, warmup=2, device=device)
    per_s = batch / t.median
    flops = pretrain_step_flops(cfg, 0.75, 0.75, batch) * per_s
    row = {
        "clips/s": per_s,
        "ms/step": 1e3 * t.median,
        "TFLOP/s": flops / 1e12,
        "flops": flops,
        "peak GiB": _peak_gib(device),
        "first step s": first_s,
    }
    return row


def loader_rate(data: Path, batch: int, workers: int, batches: int, device: torch.device) -> float:
    """Clips/s delivered by the training DataLoader (pretraining augmentation, pinned memory).

    The first ``workers + 1`` batches (worker start-up) are not timed; epochs repeat until
    ``batches`` batches were timed.
    """
    from torch.utils.data import DataLoader

    from training.augment import AugmentConfig
    from training.data import build_dataset

    ds = build_dataset(data, True, AugmentConfig.pretrain())
    loader = DataLoader(
        ds,
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        drop_last=len(ds) >= batch,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
    )
    skip, n, t0 = workers + 1, 0, 0.0
    while True:
        for b in loader:
            if skip > 0:
                skip -= 1
                if skip == 0:
                    t0 = time.perf_counter()
                continue
            n += b["fbank"].shape[0]
            if n >= batches * batch:
                return n / (time.perf_counter() - t0)


def _synthetic_dataset(folder: Path, clips: int, workers: int) -> Path:
    """A prepared AV-Shapes dataset (full-size features) for the loader rate."""
    from training.data import prepare_synthetic

    t0 = time.perf_counter()
    prepare_synthetic(folder, clips, seed=0, workers=workers)
    print(f"prepared {clips} synthetic clips in {time.perf_counter() - t0:.0f} s", flush=True)
    return folder


def section_train(
    args: argparse.Namespace, device: torch.device, sizes: Sizes, peak: float | None
) -> list[str]:
    cfg = cavmae_tiny() if args.quick else cavmae_base()
    rows: list[list[object]] = []
    ref = None
    best = 0.0
    failed: list[str] = []
    variants = train_variants(device, not args.no_compile)
    for i, batch in enumerate(sizes.train_batches):
        # The float32 reference runs at the first batch only (the speed-up is per clip).
        for v in variants if i == 0 else variants[1:]:
            try:
                r = bench_train(cfg, v, device, batch, sizes.train_steps, args.compile_mode)
            except Exception as exc:  # noqa: BLE001 - reported in the table, the run goes on
                failed.append(f"{v.name} @ {batch}")
                rows.append([v.name, batch, None, None, None, None, None, None, _failure(exc)])
                _free(device)
                continue
            ref = ref or r["clips/s"]
            best = max(best, float(r["clips/s"]))  # type: ignore[arg-type]
            rows.append(
                [
                    v.name,
                    batch,
                    r["clips/s"],
                    r["ms/step"],
                    r["TFLOP/s"],
                    _mfu(float(r["flops"]), peak),
                    r["peak GiB"],
                    float(r["clips/s"]) / float(ref),
                    f"{r['first step s']:.1f}",
                ]
            )
    gflop = pretrain_step_flops(cfg, 0.75, 0.75, 1) / 1e9
    data = args.data
    tmp = None
    workers = args.workers if args.workers is not None else (0 if args.quick else min(32, available_cores(load=0)))
    clips = args.synthetic_clips
    if clips is None:
        clips = 4 if args.quick else 1024
    loader_batch = sizes.train_batches[0]
    rate = None
    try:
        if data is None and clips:
            tmp = tempfile.TemporaryDirectory()
            data = _synthetic_dataset(Path(tmp.name) / "avshapes", clips, workers)
        if data is not None:
            rate = loader_rate(data, loader_batch, workers, args.loader_batches, device)
    except Exception as exc:  # noqa: BLE001 - reported in the table
        failed.append("data loader")
        rows.append(
            ["data loader", loader_batch, None, None, None, None, None, None, _failure(exc)]
        )
    finally:
        if tmp is not None:
            tmp.cleanup()
    if rate is not None and data is not None:
        keeps_up = "keeps up" if rate >= best else f"too slow: {best / rate:.1f}x short"
        rows.append(
            [
                f"data loader, {workers} workers ({data.name})",
                loader_batch,
                rate,
                None,
                None,
                None,
                None,
                None,
                keeps_up,
            ]
        )
    print_table(
        f"(a) pretraining steps, {'tiny' if args.quick else 'full-size'} CAV-MAE, 75 % masking "
        f"({gflop:.1f} GFLOP per clip, fwd+bwd)",
        [
            "variant",
            "batch",
            "clips/s",
            "ms/step",
            "TFLOP/s",
            "MFU",
            "peak GiB",
            "speed-up",
            "first step s",
        ],
        rows,
    )
    notes = [f"training: {best:,.0f} clips/s (target {TARGET_TRAIN:,.0f} on one H100)"]
    if rate is not None:
        notes.append(f"data loader: {rate:,.0f} clips/s with {workers} workers")
    elif data is None:
        notes.append(
            "data loader: not measured (pass --data DIR with a prepared dataset, "
            "or --synthetic-clips N to generate one)"
        )
    notes += [f"FAILED: {f}" for f in failed]
    return notes


# ---------------------------------------------------------------------- (b) inference


def section_infer(
    args: argparse.Namespace, device: torch.device, sizes: Sizes, peak: float | None
) -> list[str]:
    cfg = cavmae_tiny(label_dim=527, tr_pos=True) if args.quick else cavmae_ft_base(527)
    torch.manual_seed(0)
    base = CAVMAEFT.from_config(cfg).eval()
    b = sizes.infer_batch
    g = torch.Generator().manual_seed(1)
    fbank = torch.randn(b, cfg.audio_length, cfg.num_mel_bins, generator=g).to(device)
    imgs = torch.randn(b, cfg.in_chans, cfg.img_size, cfg.img_size, generator=g).to(device)
    low = torch.bfloat16

    def variant(name: str) -> tuple[CAVMAEFT, torch.dtype]:
        m = clone_classifier(base)
        if name.startswith("fp32"):
            m.set_attn_impl("eager")
            return m.to(device).requires_grad_(False), torch.float32
        if name.startswith("bf16 autocast"):
            return m.to(device).requires_grad_(False), low
        m = optimize_for_inference(m, device, dtype=low)
        if "whole" in name:
            return torch.compile(m, mode=args.compile_mode), low  # type: ignore[return-value]
        if "compile" in name:
            compile_blocks(m, mode=args.compile_mode)
        return m, low

    names = [
        "fp32, eager attn (reference)",
        "bf16 autocast, sdpa, fp32 weights",
        "bf16 weights, sdpa (optimize_for_inference)",
    ]
    if not args.no_compile:
        names += ["bf16 weights, sdpa, compiled blocks", "bf16 weights, sdpa, torch.compile whole"]
    rows: list[list[object]] = []
    ref_out = None
    ref_rate = None
    best = 0.0
    failed: list[str] = []
    for name in names:
        _free(device)
        try:
            m, dtype = variant(name)

            def call(m: CAVMAEFT = m, dtype: torch.dtype = dtype) -> torch.Tensor:
                with torch.inference_mode(), inference_autocast(device, dtype):
                    return torch.sigmoid(m(fbank, imgs, "multimodal").float())

            t0 = time.perf_counter()
            out = call()
            synchronize(device)
            first_s = time.perf_counter() - t0
            t = time_fn(call, runs=sizes.infer_iters, warmup=2, device=device)
        except Exception as exc:  # noqa: BLE001 - reported in the table, the run goes on
            failed.append(name)
            rows.append([name, b, None, None, None, None, None, None, None, _failure(exc)])
            continue
        rate = b / t.median
        ref_out = out if ref_out is None else ref_out
        ref_rate = ref_rate or rate
        best = max(best, rate)
        flops = ft_forward_flops(cfg) * rate
        rows.append(
            [
                name,
                b,
                rate,
                1e3 * t.median,
                flops / 1e12,
                _mfu(flops, peak),
                _peak_gib(device),
                rate / ref_rate,
                max_abs_diff(out, ref_out),
                f"{first_s:.1f}",
            ]
        )
        del m
    print_table(
        f"(b) CAVMAEFT multimodal inference ({ft_forward_flops(cfg) / 1e9:.1f} GFLOP per clip)",
        [
            "variant",
            "batch",
            "clips/s",
            "ms/batch",
            "TFLOP/s",
            "MFU",
            "peak GiB",
            "speed-up",
            "max abs dp",
            "first call s",
        ],
        rows,
    )
    notes = [f"inference: {best:,.0f} clips/s (target {TARGET_INFER:,.0f} on one H100)"]
    return notes + [f"FAILED: {f}" for f in failed]


# ---------------------------------------------------------------------- (c) ensemble


@torch.inference_mode()
def audio_once_probabilities(
    model: CAVMAEFT, fbank: torch.Tensor, frames: torch.Tensor
) -> torch.Tensor:
    """The Predictor's ensemble algorithm in float32 on any device (for the exactness check):
    audio branch once, the K frames as one batch, mean of the K sigmoid outputs.

    Args:
        fbank: (B, T, F); frames: (B, K, 3, S, S).

    Returns:
        (B, C) float32 probabilities on CPU.
    """
    b, k = frames.shape[:2]
    a = model.encode_audio_specific(fbank).repeat_interleave(k, dim=0)  # (B*K, L_a, D)
    v = model.encode_visual_specific(frames.flatten(0, 1))  # (B*K, L_v, D)
    logits = model.forward_from_specific(a, v, "multimodal")  # (B*K, C)
    return torch.sigmoid(logits.float()).reshape(b, k, -1).mean(1).cpu()  # (B, C)


def section_ensemble(
    args: argparse.Namespace, device: torch.device, sizes: Sizes
) -> tuple[list[str], bool]:
    cfg = cavmae_tiny(label_dim=527, tr_pos=True) if args.quick else cavmae_ft_base(527)
    torch.manual_seed(0)
    ref_model = CAVMAEFT.from_config(cfg).eval().requires_grad_(False)
    ref_model.set_attn_impl("eager")
    ref_model.to(device)
    sdpa_model = clone_classifier(ref_model).requires_grad_(False).to(device)  # float32, sdpa
    fast = optimize_for_inference(clone_classifier(ref_model), device)  # bf16 on CUDA
    pred = in_memory_predictor(fast, device)
    g = torch.Generator().manual_seed(1)
    b, k = sizes.ens_batch, sizes.frames
    fbank = torch.randn(b, cfg.audio_length, cfg.num_mel_bins, generator=g).to(device)
    frames = torch.randn(b, k, cfg.in_chans, cfg.img_size, cfg.img_size, generator=g).to(device)

    def per_frame_fast() -> torch.Tensor:
        with inference_autocast(device):
            return per_frame_probabilities(fast, fbank, frames)

    variants: list[tuple[str, Callable[[], torch.Tensor], bool]] = [
        (
            "per-frame (official), fp32 eager",
            lambda: per_frame_probabilities(ref_model, fbank, frames),
            True,
        ),
        (
            "audio once, fp32 eager",
            lambda: audio_once_probabilities(ref_model, fbank, frames),
            True,
        ),
        (
            "audio once, fp32 sdpa",
            lambda: audio_once_probabilities(sdpa_model, fbank, frames),
            True,
        ),
        ("per-frame, optimized (bf16 on GPU)", per_frame_fast, device.type != "cuda"),
        (
            "audio once (Predictor), optimized",
            lambda: pred.class_probabilities(fbank, frames, "multimodal"),
            device.type != "cuda",
        ),
    ]
    rows: list[list[object]] = []
    ok = True
    ref_t = ref_out = None
    times: dict[str, float] = {}
    for name, fn, exact in variants:
        _free(device)
        try:
            out = fn()
            t = time_fn(fn, runs=args.ens_runs, warmup=1, device=device)
        except Exception as exc:  # noqa: BLE001 - reported in the table, the run goes on
            ok = False
            rows.append([name, b, k, None, None, None, None, _failure(exc)])
            continue
        ref_t = ref_t or t.median
        ref_out = out if ref_out is None else ref_out
        times[name] = t.median
        diff = max_abs_diff(out, ref_out)
        check = ("ok" if diff <= EXACT_TOL else "FAIL") if exact else "bf16 (not exact)"
        ok &= diff <= EXACT_TOL or not exact
        rows.append([name, b, k, b / t.median, 1e3 * t.median, ref_t / t.median, diff, check])
    print_table(
        f"(c) {k}-frame ensemble classification (batch = clips)",
        ["variant", "batch", "K", "clips/s", "ms/batch", "speed-up", "max abs dp", "check"],
        rows,
    )
    ref_name = "per-frame (official), fp32 eager"
    notes = []
    if ref_name in times and "audio once, fp32 sdpa" in times:
        exact = times[ref_name] / min(
            times.get("audio once, fp32 eager", float("inf")), times["audio once, fp32 sdpa"]
        )
        notes.append(
            f"ensemble at equal float32 outputs: {exact:.2f}x the official per-frame path "
            f"(target {TARGET_ENSEMBLE:g}x)"
        )
    fast_names = ("per-frame, optimized (bf16 on GPU)", "audio once (Predictor), optimized")
    if all(n in times for n in fast_names) and ref_name in times:
        algo = times[fast_names[0]] / times[fast_names[1]]
        total = times[ref_name] / times[fast_names[1]]
        notes.append(
            f"ensemble, optimized: audio once {algo:.2f}x per-frame at the same settings, "
            f"{total:.2f}x the official fp32 per-frame path"
        )
    if not ok:
        notes.append("FAILED: an ensemble row did not run or did not match")
    return notes, ok


# ---------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    ap.add_argument("--quick", action="store_true", help="tiny model, tiny batches (smoke test)")
    ap.add_argument(
        "--sections",
        nargs="+",
        default=["train", "infer", "ensemble"],
        choices=["train", "infer", "ensemble"],
    )
    ap.add_argument(
        "--train-batch", type=int, nargs="+", default=[64, 256], help="training batch sizes"
    )
    ap.add_argument("--train-steps", type=int, default=20)
    ap.add_argument("--infer-batch", type=int, default=256)
    ap.add_argument("--infer-iters", type=int, default=20)
    ap.add_argument("--ens-batch", type=int, default=32, help="clips per ensemble call")
    ap.add_argument("--frames", type=int, default=10)
    ap.add_argument("--ens-runs", type=int, default=5)
    ap.add_argument("--data", type=Path, help="prepared dataset for the loader rate")
    ap.add_argument("--workers", type=int, default=None, help="loader workers (default: cores)")
    ap.add_argument("--loader-batches", type=int, default=20)
    ap.add_argument(
        "--synthetic-clips",
        type=int,
        default=None,
        help="without --data: prepare N AV-Shapes clips for the loader rate "
        "(default 1024; 0 skips the loader)",
    )
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument(
        "--compile-mode", default=None, help="torch.compile mode, e.g. max-autotune-no-cudagraphs"
    )
    ap.add_argument("--peak-tflops", type=float, default=None, help="override the bf16 peak")
    args = ap.parse_args(argv)

    if args.device is None:
        if not torch.cuda.is_available():
            print("no CUDA device: run on a GPU, or use --device cpu --quick for a smoke test")
            return 2
        args.device = "cuda"
    device = torch.device(args.device)
    if args.quick:
        sizes = Sizes((4,), 2, 2, 2, 2, min(args.frames, 3))
        args.ens_runs, args.loader_batches = 1, 2
    else:
        sizes = Sizes(
            tuple(args.train_batch),
            args.train_steps,
            args.infer_batch,
            args.infer_iters,
            args.ens_batch,
            args.frames,
        )
    # The reference path is plain float32: no TF32 (bf16 autocast is unaffected).
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.allow_tf32 = False
    peak = peak_flops(device, args.peak_tflops)
    print(machine_description(device))
    print(
        f"bf16 peak for MFU: {'-' if peak is None else f'{peak / 1e12:.0f} TFLOP/s'}\n", flush=True
    )
    notes: list[str] = []
    ok = True
    if "train" in args.sections:
        notes += section_train(args, device, sizes, peak)
    if "infer" in args.sections:
        notes += section_infer(args, device, sizes, peak)
    if "ensemble" in args.sections:
        n, ok = section_ensemble(args, device, sizes)
        notes += n
    print("\n".join(notes))
    print(f"float32 equality check (<= {EXACT_TOL:g}): {'passed' if ok else 'FAILED'}")
    failed = any(n.startswith("FAILED") for n in notes)
    return 0 if ok and not failed else 1


if __name__ == "__main__":
    sys.exit(main())
