"""Benchmark of cavmae.features and cavmae.inversion on CPU; prints a table.

    python bench/bench_features.py [--threads N] [--runs 50]

Targets (2-core CPU): Kaldi fbank of 10 s at 16 kHz <= 20 ms (median);
fbank_to_waveform of a 10 s spectrogram < 1 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from cavmae.config import FeatureConfig
from cavmae.features import (
    fbank_features,
    frames_to_tensor,
    jpeg_roundtrip,
    kaldi_fbank,
    resize_center_crop,
)
from cavmae.inversion import fbank_to_waveform


def _median_ms(fn: Callable[[], object], runs: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--runs", type=int, default=50, help="runs for the fbank medians")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    cfg = FeatureConfig()
    sr = cfg.sample_rate
    g = torch.Generator().manual_seed(0)
    t = torch.arange(10 * sr) / sr
    wave = 0.3 * torch.sin(2 * torch.pi * 1000.0 * t) + 0.01 * torch.randn(10 * sr, generator=g)
    batch = 0.1 * torch.randn(16, 10 * sr, generator=g)
    rng = np.random.default_rng(0)
    frames720 = rng.integers(0, 256, size=(10, 720, 1280, 3), dtype=np.uint8)
    feats = fbank_features(wave, sr, cfg)

    first_inv = time.perf_counter()
    fbank_to_waveform(feats, cfg, num_valid_frames=998)
    first_inv_ms = 1e3 * (time.perf_counter() - first_inv)

    rows: list[tuple[str, float, str]] = []
    ms = _median_ms(lambda: kaldi_fbank(wave, sr), args.runs)
    rows.append(
        ("kaldi_fbank 10 s @ 16 kHz (998 x 128)", ms, f"target <= 20 ms; {10e3 / ms:.0f}x RT")
    )
    ms = _median_ms(lambda: fbank_features(wave, sr, cfg), args.runs)
    rows.append(("fbank_features 10 s (pad + normalise)", ms, ""))
    ms = _median_ms(lambda: kaldi_fbank(batch, sr), max(5, args.runs // 10))
    rows.append(("kaldi_fbank batch 16 x 10 s", ms, f"{16e3 / ms:.0f} clips/s"))
    ms = _median_ms(lambda: frames_to_tensor(frames720, cfg), 5, warmup=1)
    rows.append(("frames_to_tensor 10 x 720p (resize+crop+norm)", ms, f"{ms / 10:.1f} ms/frame"))

    def official_frames() -> torch.Tensor:
        small = np.stack([jpeg_roundtrip(resize_center_crop(f, cfg.img_size)) for f in frames720])
        return frames_to_tensor(small, cfg)

    ms = _median_ms(official_frames, 5, warmup=1)
    rows.append(("  same + JPEG q75 round trip (official)", ms, f"{ms / 10:.1f} ms/frame"))
    ms = _median_ms(lambda: fbank_to_waveform(feats, cfg, num_valid_frames=998), 5, warmup=1)
    rows.append(
        (
            "fbank_to_waveform 10 s, 32 GL iterations",
            ms,
            f"target < 1000 ms; 1st {first_inv_ms:.0f}",
        )
    )

    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, load average {load}")
    print(f"{'benchmark':48s} {'median ms':>10s}  note")
    print("-" * 90)
    for name, value, note in rows:
        print(f"{name:48s} {value:10.2f}  {note}")


if __name__ == "__main__":
    main()
