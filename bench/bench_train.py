"""Training throughput: pretraining steps (forward + backward + Adam) and the data loader.

Prints a table. On CPU: the full-size CAV-MAE at a small batch and the tiny/demo presets. With
CUDA: the full-size model with bf16 autocast and fused Adam, with and without
``torch.compile``, and the MFU (model FLOPs from the config, ~231 GFLOP per clip for the
full-size model at 75 % masking, against the GPU's dense bf16 peak). The data loader is
measured on a prepared dataset (``--data DIR``, or a small AV-Shapes set generated in a temp
directory) with the pretraining augmentation. Two demo rows draw the audio mask ratio per step
in 0.3-0.9, continuously and rounded to 0.05 (``--mask_ratio_a_step``); ``--ratio-steps 0``
skips them.

Usage::

    python bench/bench_train.py                   # everything that fits this machine
    python bench/bench_train.py --steps 5 --batch 4 --no-loader
    python bench/bench_train.py --data /data/prepared --workers 0 4 8
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

from cavmae.config import MODEL_PRESETS, ModelConfig  # noqa: E402

#: Dense bf16 tensor-core peaks (FLOP/s) by device-name fragment, for the MFU estimate.
PEAK_BF16 = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 70e12,
    "4090": 165e12,
    "3090": 71e12,
}


# ---------------------------------------------------------------------- FLOPs


def _block_macs(tokens: int, width: int, mlp_ratio: float) -> float:
    """Multiply-accumulates of one transformer block over ``tokens`` tokens."""
    linear = (4 + 2 * mlp_ratio) * width * width * tokens  # qkv, proj, fc1, fc2
    attention = 2 * tokens * tokens * width  # q k^T and attn v
    return linear + attention


def pretrain_flops_per_clip(
    cfg: ModelConfig, mask_ratio_a: float = 0.75, mask_ratio_v: float = 0.75
) -> float:
    """Model FLOPs of one pretraining clip, forward + backward (= 3 x forward).

    Counts the matrix products: patch embeddings (all patches), the modality-specific blocks
    on the kept tokens, the shared blocks on the joint, audio and visual streams, the decoder
    on all tokens and the prediction heads. Norms, softmax and losses are ignored.
    """
    la, lv = cfg.num_audio_patches, cfg.num_visual_patches
    ka, kv = int(la * (1 - mask_ratio_a)), int(lv * (1 - mask_ratio_v))  # official int()
    d, dd, r, p = cfg.embed_dim, cfg.decoder_embed_dim, cfg.mlp_ratio, cfg.patch_size
    macs = (la * p * p + lv * p * p * cfg.in_chans) * d  # patch embeddings
    macs += cfg.modality_specific_depth * (_block_macs(ka, d, r) + _block_macs(kv, d, r))
    macs += cfg.num_shared_blocks * (
        _block_macs(ka + kv, d, r) + _block_macs(ka, d, r) + _block_macs(kv, d, r)
    )
    macs += (ka + kv) * d * dd  # decoder_embed
    macs += cfg.decoder_depth * _block_macs(la + lv, dd, r)
    macs += (la * p * p + lv * p * p * cfg.in_chans) * dd  # decoder_pred_a / _v
    return 3 * 2 * macs


# ---------------------------------------------------------------------- measurements


@dataclass
class Row:
    what: str
    device: str
    batch: int
    per_s: float
    ms_per_step: float
    tflops: float | None = None
    mfu: float | None = None
    note: str = ""


def _peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def bench_step(
    preset: str,
    batch: int,
    steps: int,
    warmup: int,
    device: torch.device,
    amp: str,
    compile_model: bool,
    threads: int | None,
    ratio_draw: tuple[float, float, float] | None = None,
    **overrides: object,
) -> Row:
    """Samples/s of full pretraining steps on random inputs (``overrides``: preset changes).

    ``ratio_draw = (lo, hi, step)`` draws each step's audio mask ratio as the engine's
    ``mask_ratio_a_range`` / ``mask_ratio_a_step`` do (seeded); otherwise every step masks 75 %.
    """
    from cavmae.models import CAVMAE
    from training.pretrain import draw_mask_ratio

    if threads:
        torch.set_num_threads(threads)
    cfg = MODEL_PRESETS[preset](**overrides)
    torch.manual_seed(0)
    model = CAVMAE.from_config(cfg).to(device).train()
    frozen = model.unused_parameter_names()
    for n, p_ in model.named_parameters():
        if n in frozen:
            p_.requires_grad_(False)
    params = [p_ for p_ in model.parameters() if p_.requires_grad]
    fused = device.type == "cuda"
    opt = torch.optim.Adam(params, lr=1e-5, betas=(0.95, 0.999), weight_decay=5e-7, fused=fused)
    fwd = torch.compile(model) if compile_model else model
    audio = torch.randn(batch, cfg.audio_length, cfg.num_mel_bins, device=device)
    imgs = torch.randn(batch, 3, cfg.img_size, cfg.img_size, device=device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    draws = torch.Generator().manual_seed(0)

    def step() -> None:
        ratio_a = 0.75
        if ratio_draw is not None:
            ratio_a = draw_mask_ratio(*ratio_draw, float(torch.rand((), generator=draws)))
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            out = fwd(audio, imgs, ratio_a, 0.75, 1.0, 0.01, "unstructured")
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    dt = (time.perf_counter() - t0) / steps
    per_s = batch / dt
    flops = pretrain_flops_per_clip(cfg) * per_s
    peak = _peak(device)
    what = f"pretrain step {preset}" + (" +compile" if compile_model else "")
    what += "".join(f", {k}={v}" for k, v in overrides.items())
    if ratio_draw is not None:
        lo, hi, every = ratio_draw
        what += f", audio ratio in [{lo}, {hi}]" + (f" step {every}" if every else " continuous")
    return Row(
        what,
        device.type,
        batch,
        per_s,
        dt * 1e3,
        flops / 1e12,
        flops / peak if peak else None,
        f"amp={amp}" + (", fused Adam" if fused else ""),
    )


def _synthetic_dataset(out: Path, clips: int) -> Path:
    from training.data import prepare_synthetic

    prepare_synthetic(out, clips, seed=0, workers=2)
    return out


def bench_loader(data: Path, batch: int, workers: int, batches: int) -> Row:
    """Samples/s of the training DataLoader (pretraining augmentation: noise + roll).

    One untimed epoch starts the (persistent) workers; then whole epochs are timed until at
    least ``batches`` batches were loaded, so prefetching cannot flatter the number.
    """
    from torch.utils.data import DataLoader

    from training.augment import AugmentConfig
    from training.data import build_dataset
    from training.samplers import ResumableDistributedSampler

    ds = build_dataset(data, True, AugmentConfig.pretrain())
    sampler = ResumableDistributedSampler(ds, num_replicas=1, rank=0, shuffle=True, seed=0)
    loader = DataLoader(
        ds,
        batch_size=batch,
        sampler=sampler,
        num_workers=workers,
        drop_last=True,
        persistent_workers=workers > 0,
    )
    for _ in loader:  # warm-up epoch
        pass
    n, epoch = 0, 1
    t0 = time.perf_counter()
    while n < batches * batch:
        sampler.set_epoch(epoch)
        ds.set_epoch(epoch)
        for b in loader:
            n += b["fbank"].shape[0]
        epoch += 1
    dt = time.perf_counter() - t0
    fc = ds.feature_config
    return Row(
        f"data loader ({workers} workers)",
        "cpu",
        batch,
        n / dt,
        dt / (n / batch) * 1e3,
        note=f"{len(ds)} clips, {fc.target_length}x{fc.num_mel_bins} fbank, "
        f"{fc.img_size}px, noise+roll",
    )


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def print_table(rows: list[Row]) -> None:
    head = (
        f"{'benchmark':<34} {'device':<6} {'batch':>5} {'samples/s':>10} {'ms/step':>9} "
        f"{'TFLOP/s':>8} {'MFU':>6}  note"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r.what:<34} {r.device:<6} {r.batch:>5} {_fmt(r.per_s, '10.2f')} "
            f"{_fmt(r.ms_per_step, '9.1f')} {_fmt(r.tflops, '8.3f')} "
            f"{_fmt(None if r.mfu is None else 100 * r.mfu, '5.1f')}{'%' if r.mfu else ' '}  {r.note}"
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=3, help="timed steps per CPU configuration")
    ap.add_argument("--batch", type=int, default=2, help="CPU batch of the full-size model")
    ap.add_argument("--gpu-batch", type=int, default=64)
    ap.add_argument("--gpu-steps", type=int, default=20)
    ap.add_argument("--ratio-steps", type=int, default=30,
                    help="timed demo steps with drawn audio mask ratios (0 = skip)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    ap.add_argument("--data", type=Path, help="prepared dataset for the loader benchmark")
    ap.add_argument("--synthetic-clips", type=int, default=24)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--loader-batches", type=int, default=6)
    ap.add_argument("--no-loader", action="store_true")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile on GPU")
    args = ap.parse_args(argv)

    rows: list[Row] = []
    failed: list[str] = []
    cpu = torch.device("cpu")
    cfg = MODEL_PRESETS["cavmae_base"]()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads; full-size model: "
        f"{pretrain_flops_per_clip(cfg) / 1e9:.0f} GFLOP per clip (fwd+bwd, 75% masking)\n"
    )
    rows.append(bench_step("cavmae_tiny", 8, 10, 2, cpu, "fp32", False, args.threads))
    rows.append(bench_step("cavmae_demo", 4, args.steps, 1, cpu, "fp32", False, args.threads))
    # The demo recipe's step (batch 32, bf16 autocast) with the preset's 4 decoder heads and
    # with 2 wider ones: the 708-token decoder is the costliest attention of a step.
    for heads in (4, 2):
        rows.append(
            bench_step("cavmae_demo", 32, args.steps, 1, cpu, "bf16", False, args.threads,
                       decoder_num_heads=heads)
        )
    # The demo recipe's per-step audio mask ratios: drawn continuously, almost every step has a
    # token count not seen before; rounded to 0.05, 13 counts repeat (run past the warm-up).
    if args.ratio_steps:
        for every in (0.0, 0.05):
            rows.append(
                bench_step("cavmae_demo", 32, args.ratio_steps, 13, cpu, "bf16", False,
                           args.threads, ratio_draw=(0.3, 0.9, every))
            )
    rows.append(
        bench_step("cavmae_base", args.batch, args.steps, 1, cpu, "fp32", False, args.threads)
    )
    if torch.cuda.is_available():
        gpu = torch.device("cuda")
        torch.backends.cuda.matmul.allow_tf32 = True
        rows.append(
            bench_step("cavmae_base", args.gpu_batch, args.gpu_steps, 3, gpu, "bf16", False, None)
        )
        if not args.no_compile:
            try:
                rows.append(
                    bench_step(
                        "cavmae_base", args.gpu_batch, args.gpu_steps, 5, gpu, "bf16", True, None
                    )
                )
            except Exception as exc:  # noqa: BLE001 - a compiler failure must not lose the table
                failed.append(f"torch.compile pretrain step: {type(exc).__name__}: {exc}"[:300])
                torch.cuda.empty_cache()
        rows.append(
            bench_step("cavmae_demo", args.gpu_batch, args.gpu_steps, 3, gpu, "bf16", False, None)
        )
    if not args.no_loader:
        with tempfile.TemporaryDirectory() as tmp:
            data = args.data
            if data is None:
                t0 = time.perf_counter()
                data = _synthetic_dataset(Path(tmp) / "avshapes", args.synthetic_clips)
                print(
                    f"generated {args.synthetic_clips} AV-Shapes clips in "
                    f"{time.perf_counter() - t0:.1f}s for the loader benchmark\n"
                )
            for w in args.workers:
                rows.append(bench_loader(data, 8, w, args.loader_batches))
    print_table(rows)
    for f in failed:
        print(f"FAILED: {f}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
