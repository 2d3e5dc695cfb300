"""Index-building throughput (issue 7.5): media files embedded per second for a retrieval index.

Each file goes through decoding (audio + frame), features and the model's retrieval embedding,
as ``cavmae index build`` and the app's Retrieve tab do it. Variants, timed on the same files:

* **10 frames, one file at a time**: ``embed(prepare(path))``, the path before 2026-12-02
  (decodes the 10 classification frames although the embedding uses one);
* **middle frame, one file at a time**: ``embed_file(path)`` (the official evaluation frame
  alone: the same pixels, about half the decoding);
* **``embed_files``, N decoding threads**: the next files decode while the model embeds the
  current one (what the index build uses now, with the usable cores, at most 4).

Every variant's embeddings must equal the first variant's exactly (the script exits 1
otherwise). The files are 10 s 1280x720 30 fps H.264 + AAC clips generated once into
``$CAVMAE_BENCH_DIR`` (default ``/tmp/cavmae_bench_media``). Usage::

    python bench/bench_index_build.py                      # demo + full-size model, 24 files
    python bench/bench_index_build.py --files 48 --skip-full --workers 1 2 4 8
    python bench/bench_index_build.py --precision bfloat16 # full-size model in bf16 on CPU
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from common import in_memory_predictor, machine_description, print_table, synth_clip

from cavmae.config import PRECISIONS, cavmae_base
from cavmae.inference import Predictor
from cavmae.models import CAVMAE

CACHE = Path(os.environ.get("CAVMAE_BENCH_DIR", "/tmp/cavmae_bench_media")) / "index_build"


def make_files(n: int) -> list[Path]:
    """``n`` distinct 10-s 720p30 H.264/AAC clips (test pattern in its own hue + its own tone)."""
    return [
        synth_clip(
            CACHE / f"clip_{i:03d}.mp4", 10, "1280x720", 30, tone_hz=200 + 37 * i, hue=i * 29
        )
        for i in range(n)
    ]


def full_size_predictor(precision: str) -> Predictor:
    """The full-size pretraining model with random weights (speed does not depend on them)."""
    torch.manual_seed(0)
    return in_memory_predictor(CAVMAE.from_config(cavmae_base()), "cpu", precision)


def _vectors(results: Iterable[object]) -> list[tuple[np.ndarray | None, np.ndarray | None]]:
    return [(e.audio, e.visual) for e in results]  # type: ignore[attr-defined]


def bench_model(
    name: str, pred: Predictor, files: list[Path], workers: list[int]
) -> tuple[list[list[object]], bool]:
    """Rows of one model's table, and whether every variant equals the reference."""
    variants: dict[str, Callable[[], list[object]]] = {
        "10 frames, one file at a time (before)": lambda: [
            pred.embed(pred.prepare(f)) for f in files
        ],
        "middle frame, one file at a time": lambda: [pred.embed_file(f) for f in files],
    }
    for w in workers:
        variants[f"embed_files, {w} decoding thread{'s' if w > 1 else ''}"] = lambda w=w: [
            e for _, e in pred.embed_files(files, workers=w)
        ]
    pred.embed_file(files[0])  # warm-up (first-call allocations, FFmpeg start)
    rows: list[list[object]] = []
    ref_vecs = None
    ref_rate = None
    ok = True
    for label, fn in variants.items():
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        vecs = _vectors(out)
        ref_vecs = ref_vecs or vecs
        same = all(
            all(
                (x is None and y is None) or np.array_equal(x, y) for x, y in zip(a, b, strict=True)
            )
            for a, b in zip(vecs, ref_vecs, strict=True)
        )
        ok &= same
        rate = len(files) / wall
        ref_rate = ref_rate or rate
        rows.append(
            [name, label, len(files), rate, 1e3 * wall / len(files), cpu / wall, rate / ref_rate,
             "equal" if same else "DIFFERENT"]
        )  # fmt: skip
    return rows, ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=24, help="10-s 720p clips to embed")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4], help="decoding threads")
    ap.add_argument("--skip-full", action="store_true", help="only the bundled demo model")
    ap.add_argument("--precision", choices=PRECISIONS, default="auto")
    args = ap.parse_args(argv)

    files = make_files(args.files)
    print(machine_description("cpu"))
    print(f"{len(files)} files of 10 s 1280x720 30 fps H.264 + AAC in {CACHE}\n", flush=True)
    models: list[tuple[str, Callable[[], Predictor]]] = [
        ("demo", lambda: Predictor.from_checkpoint("demo", device="cpu", precision=args.precision))
    ]
    if not args.skip_full:
        models.append(("full size", lambda: full_size_predictor(args.precision)))
    rows: list[list[object]] = []
    ok = True
    for name, build in models:
        r, same = bench_model(name, build(), files, args.workers)
        rows += r
        ok &= same
    print_table(
        f"Index building: files embedded per second (precision {args.precision})",
        ["model", "variant", "files", "files/s", "ms / file", "cores busy", "speed-up", "check"],
        rows,
    )
    print(f"embeddings equal across variants: {'passed' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
