"""Benchmark of the training-data formats: tar shards vs memory-mapped arrays; prints tables.

    python bench/bench_data.py [--clips 1024] [--workers 2] [--out DIR]

Renders ``--clips`` 10-s AV-Shapes clips at full size (224 x 224 frames, 1024 x 128 fbank,
K = 10) into both formats, then measures bytes per clip, preparation clips/s (render + write)
and loader clips/s on one core (one process, one torch thread, the pretraining augmentation:
random frame, noise and roll). A second table sweeps the JPEG quality on natural video frames
(../shared/media/bbb_5s_aac_5.1ch.mp4 when present): AV-Shapes frames are flat shapes and
compress far better than real video. A third table measures the stored fbank on natural 10-s
audio (the first 10 s of the speech, whale and music files there): plain float16 ``.npy`` (shard
version 1) against the lossless ``fbank.f16z`` that shards store now.

Targets (issue 12): <= 0.40 MB per clip with 10 frames; loader >= 150 clips/s per core.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import ROOT, machine_description, print_table

from cavmae.config import FeatureConfig
from training.augment import AugmentConfig
from training.data import PreparedDataset, prepare_synthetic
from training.data.prepare import raw_fbank
from training.data.shards import decode_fbank, decode_jpeg, encode_fbank, encode_jpeg
from training.data.streaming import ShardedDataset


def _bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _loader_rate(make, n: int, seconds: float = 4.0) -> float:
    """Clips/s of one process iterating ``make()`` (a fresh iterable) for ~``seconds``."""
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in make():
            done += 1
            if done >= n * 3:
                break
        if done >= n * 3:
            break
    return done / (time.perf_counter() - t0)


_NATURAL_AUDIO = ("speech_jfk.flac", "humpback_whale_65s.ogg", "bbb_5s_aac_5.1ch.mp4")


def _fbank_rows() -> tuple[list[list[object]], float]:
    """Rows of the fbank-storage table and the mean stored kB of a 10-s natural fbank."""
    from cavmae import media as cm

    rows, sizes = [], []
    for name in _NATURAL_AUDIO:
        path = ROOT.parent / "shared" / "media" / name
        if not path.is_file():
            continue
        wav = cm.decode_audio(path, duration_s=10.0)  # (N,) float32 at 16 kHz
        fb, n = raw_fbank(wav, FeatureConfig())  # (1024, 128) float16, n real rows
        fb = fb[:n]
        t0 = time.perf_counter()
        blob = encode_fbank(fb)
        t1 = time.perf_counter()
        decode_fbank(blob)
        t2 = time.perf_counter()
        rows.append([name, n, f"{fb.nbytes / 1e3:.1f}", f"{len(blob) / 1e3:.1f}",
                     f"{(t1 - t0) * 1e3:.1f}", f"{(t2 - t1) * 1e3:.2f}"])
        if n >= 990:  # a full 10-s clip
            sizes.append(len(blob) / 1e3)
    return rows, (float(np.mean(sizes)) if sizes else 998 * 128 * 2 / 1e3)


def _jpeg_sweep(fbank_kb: float) -> list[list[object]]:
    media = ROOT.parent / "shared" / "media" / "bbb_5s_aac_5.1ch.mp4"
    if not media.is_file():
        return []
    from cavmae import media as cm

    clip = cm.load_clip(media, FeatureConfig(), num_frames=10, frame_mode="official")
    frames = np.asarray(clip.frames_uint8)  # (K, 224, 224, 3)
    rows = []
    for q in (75, 85, 90, 95):
        enc = [encode_jpeg(f, q) for f in frames]
        dec = np.stack([decode_jpeg(e) for e in enc]).astype(np.float64)
        mse = float(((dec - frames.astype(np.float64)) ** 2).mean())
        psnr = 10 * np.log10(255.0**2 / max(mse, 1e-9))
        kb = sum(len(e) for e in enc) / len(enc) / 1e3
        rows.append([q, f"{kb:.1f}", f"{psnr:.1f}", f"{(10 * kb + fbank_kb) / 1e3:.3f}"])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=1024)
    ap.add_argument("--workers", type=int, default=2, help="preparation processes")
    ap.add_argument("--out", help="folder for the two datasets (default: a temp folder)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from training.synthetic import AVShapesConfig

    syn = AVShapesConfig(size=224, duration_s=10.0)
    feat = FeatureConfig()
    tmp = tempfile.TemporaryDirectory()
    root = Path(args.out or tmp.name)
    rows = []
    aug = AugmentConfig.pretrain()
    for fmt in ("mmap", "shards"):
        out = root / fmt
        t0 = time.perf_counter()
        prepare_synthetic(out, args.clips, 0, syn, args.workers, feature_config=feat,
                          output=fmt, resume=False)
        prep = args.clips / (time.perf_counter() - t0)
        size = _bytes(out) / args.clips
        if fmt == "mmap":
            ds = PreparedDataset(out, train=True, augment=aug)
            n = len(ds)
            make = lambda ds=ds, n=n: (ds[i] for i in torch.randperm(n).tolist())  # noqa: E731
        else:
            sds = ShardedDataset(out, train=True, augment=aug)
            make = lambda sds=sds: iter(sds)  # noqa: E731
        rate = _loader_rate(make, args.clips)
        rows.append([fmt, f"{size / 1e6:.3f}", f"{prep:.1f}", f"{rate:.0f}"])
    print(machine_description())
    print_table(
        f"{args.clips} AV-Shapes clips, K=10, 224 px, 1024 x 128 fbank",
        ["format", "MB/clip", "prepare clips/s", "loader clips/s/core"],
        rows,
    )
    fb_rows, fbank_kb = _fbank_rows()
    if fb_rows:
        print_table(
            "stored fbank of natural audio (first 10 s)",
            ["file", "rows", ".npy kB", ".f16z kB", "encode ms", "decode ms"],
            fb_rows,
        )
    sweep = _jpeg_sweep(fbank_kb)
    if sweep:
        print_table(
            "JPEG quality on natural frames (bbb_5s, 10 frames at 224 px)",
            ["quality", "kB/frame", "PSNR dB", "MB/clip incl. f16z fbank"],
            sweep,
        )


if __name__ == "__main__":
    main()
