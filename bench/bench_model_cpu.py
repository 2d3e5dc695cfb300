"""CPU throughput of the full-size models (random weights; speed does not depend on values).

Rows: CAVMAEFT multimodal forward (the classifier's main path) at batch 1 and 4 with "sdpa" and
"eager" attention, and CAVMAE's pretraining forward (75 % masking, encoder + decoder + losses).
GFLOP/s counts the matmul FLOPs of the transformer blocks and heads (2 per multiply-add).

Usage: ``python bench/bench_model_cpu.py [--iters 1] [--threads N]`` (about 2 CPU-minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from cavmae.config import ModelConfig, cavmae_base
from cavmae.models import CAVMAE, CAVMAEFT


def block_flops(n: int, d: int, mlp_ratio: float = 4.0) -> float:
    """Forward FLOPs of one transformer block on n tokens of width d."""
    linear = 2 * n * d * (3 * d + d + 2 * mlp_ratio * d)  # qkv, proj, fc1 + fc2
    attention = 2 * 2 * n * n * d  # q k^T and attn @ v
    return linear + attention


def ft_flops(c: ModelConfig) -> float:
    """Forward FLOPs per clip of CAVMAEFT 'multimodal'."""
    la, lv, d, p = c.num_audio_patches, c.num_visual_patches, c.embed_dim, c.patch_size
    embed = 2 * la * d * p * p + 2 * lv * d * p * p * c.in_chans
    depth = c.modality_specific_depth
    blocks = depth * (block_flops(la, d) + block_flops(lv, d))
    return embed + blocks + c.num_shared_blocks * block_flops(la + lv, d)


def pretrain_flops(c: ModelConfig, ratio: float) -> float:
    """Forward FLOPs per clip of CAVMAE.forward at one mask ratio (both modalities)."""
    la, lv, d, dd = c.num_audio_patches, c.num_visual_patches, c.embed_dim, c.decoder_embed_dim
    ka, kv = int(la * (1 - ratio)), int(lv * (1 - ratio))
    p = c.patch_size
    embed = 2 * la * d * p * p + 2 * lv * d * p * p * c.in_chans
    enc = c.modality_specific_depth * (block_flops(ka, d) + block_flops(kv, d))
    shared = c.num_shared_blocks * (
        block_flops(ka + kv, d) + block_flops(ka, d) + block_flops(kv, d)
    )
    dec = 2 * (ka + kv) * d * dd + c.decoder_depth * block_flops(la + lv, dd)
    heads = 2 * la * dd * p * p + 2 * lv * dd * p * p * c.in_chans
    return embed + enc + shared + dec + heads


def time_call(fn: Callable[[], object], iters: int) -> float:
    """Seconds per call: one warm-up call, then the mean of ``iters`` timed calls."""
    fn()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - start) / iters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iters", type=int, default=1, help="timed iterations per row")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = cavmae_base()
    torch.manual_seed(0)
    ft = CAVMAEFT.from_config(cfg, label_dim=527).eval()
    pre = CAVMAE.from_config(cfg).eval()
    rows: list[tuple[str, int, str, float, float]] = []
    with torch.inference_mode():
        for batch in (1, 4):
            a = torch.randn(batch, cfg.audio_length, cfg.num_mel_bins)
            v = torch.randn(batch, cfg.in_chans, cfg.img_size, cfg.img_size)
            for impl in ("sdpa", "eager"):
                ft.set_attn_impl(impl)
                sec = time_call(lambda a=a, v=v: ft(a, v, "multimodal"), args.iters)
                rows.append(("CAVMAEFT multimodal", batch, impl, sec, ft_flops(cfg) * batch))
            pre.set_attn_impl("sdpa")
            gen = torch.Generator().manual_seed(0)
            sec = time_call(lambda a=a, v=v, g=gen: pre(a, v, 0.75, 0.75, generator=g), args.iters)
            rows.append(
                ("CAVMAE forward, 75% mask", batch, "sdpa", sec, pretrain_flops(cfg, 0.75) * batch)
            )
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.iters} timed iters")
    print(f"| {'model / path':<26} | batch | attn  | s / call | clips / s | GFLOP/s |")
    print(f"|{'-' * 28}|-------|-------|----------|-----------|---------|")
    for name, batch, impl, sec, flops in rows:
        print(
            f"| {name:<26} | {batch:>5} | {impl:<5} | {sec:>8.3f} | {batch / sec:>9.2f} "
            f"| {flops / sec / 1e9:>7.1f} |"
        )


if __name__ == "__main__":
    main()
