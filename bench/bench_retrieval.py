"""Benchmark of cavmae.retrieval.EmbeddingIndex at scale: build time, query latency, recall, memory.

Usage::

    python bench/bench_retrieval.py            # 1M x 768, clustered and uniform data (< 10 min)
    python bench/bench_retrieval.py --quick    # 100k x 768 (about 1 min)

For each data set it adds N L2-normalised 768-d vectors (generated in chunks, audio only) to an
EmbeddingIndex, builds the approximate index (IVF-SQ8 with exact re-ranking), then times single
queries through ``EmbeddingIndex.search`` (the call the app and CLI make, hits included) for
exact search and for the approximate index at several ``nprobe`` values, and reports recall@10
of the approximate results against exact search on the same queries.

Data sets:

- ``clustered``: a Gaussian mixture (N/100 components, unit centres, noise of norm ``--spread``),
  queries drawn from the same mixture; nearest neighbours are meaningful, as with real
  embeddings.
- ``uniform``: i.i.d. Gaussian directions; no structure at all, the worst case of any
  partition-based index (every point's 10 neighbours are almost as far as all others).

Target (issue 7 item 5): a query against 1M 768-d embeddings in <= 50 ms on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cavmae.retrieval import AnnConfig, EmbeddingIndex  # noqa: E402

CHUNK = 100_000


def log(msg: str) -> None:
    """Progress line on stderr (the table goes to stdout)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def rss_gib() -> tuple[float, float]:
    """Current and peak resident memory of this process, GiB (Linux /proc)."""
    cur = peak = float("nan")
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                cur = int(line.split()[1]) / 2**20
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1]) / 2**20
    except OSError:
        pass
    return cur, peak


def make_chunks(kind: str, n: int, dim: int, seed: int, spread: float, components: int):
    """Yield (m, dim) float32 unit vectors, CHUNK rows at a time."""
    centres_rng = np.random.default_rng(12345)  # same centres for data and queries
    centres = None
    if kind == "clustered":
        centres = centres_rng.standard_normal((components, dim), dtype=np.float32)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    rng = np.random.default_rng(seed)
    for s in range(0, n, CHUNK):
        m = min(CHUNK, n - s)
        x = rng.standard_normal((m, dim), dtype=np.float32)  # (m, D)
        if centres is not None:
            x *= spread / np.sqrt(dim)
            x += centres[rng.integers(0, components, m)]
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        yield x


def time_single_queries(
    index: EmbeddingIndex, queries: np.ndarray, **kw
) -> tuple[float, float, float]:
    """Median, 90th-percentile and minimum latency (ms) of one-vector searches, k=10."""
    index.search(queries[0], "audio", k=10, **kw)  # warm-up
    times = []
    for q in queries:
        t = time.perf_counter()
        index.search(q, "audio", k=10, **kw)
        times.append(time.perf_counter() - t)
    return (
        float(np.median(times) * 1e3),
        float(np.percentile(times, 90) * 1e3),
        float(np.min(times) * 1e3),
    )


def recall_at_10(approx, exact) -> float:
    return float(
        np.mean(
            [
                len({h.key for h in a} & {h.key for h in e}) / 10
                for a, e in zip(approx, exact, strict=True)
            ]
        )
    )


def run_dataset(kind: str, args: argparse.Namespace) -> list[dict]:
    n, dim = args.n, args.dim
    components = max(1, n // 100)
    # Below the default threshold (the --quick run) lower it, so that the IVF path is measured too.
    ann = AnnConfig(exact_max_items=min(AnnConfig().exact_max_items, n - 1))
    index = EmbeddingIndex(dim, f"bench-{kind}", ann=ann)
    t_add = 0.0
    for c, chunk in enumerate(make_chunks(kind, n, dim, args.seed, args.spread, components)):
        keys = [f"clip{c * CHUNK + i:07d}" for i in range(len(chunk))]
        t = time.perf_counter()
        index.add_arrays(keys, audio=chunk)
        t_add += time.perf_counter() - t
        del chunk
    gc.collect()
    rss_flat, _ = rss_gib()
    log(f"{kind}: added {n} vectors in {t_add:.1f} s; building the IVF index")
    store = index._stores["audio"]
    t = time.perf_counter()
    index.build()
    t_build = time.perf_counter() - t
    rss_ivf, peak = rss_gib()
    nlist = store._ivf.nlist if store._ivf is not None else 0
    log(f"{kind}: IVF{nlist} built in {t_build:.1f} s; timing queries")

    nq = max(args.queries, args.recall_queries)
    queries = next(make_chunks(kind, nq, dim, args.seed + 1, args.spread, components))  # (nq, D)
    t = time.perf_counter()
    truth = index.search(queries[: args.recall_queries], "audio", k=10, exact=True)
    t_truth = time.perf_counter() - t
    rows = []
    med, p90, best = time_single_queries(index, queries[: args.exact_queries], exact=True)
    rows.append(
        {
            "data": kind,
            "n": n,
            "method": "exact (flat)",
            "build_s": t_add,
            "build_rate": n / t_add,
            "median_ms": med,
            "p90_ms": p90,
            "min_ms": best,
            "recall@10": 1.0,
            "batch_ms_per_query": t_truth * 1e3 / args.recall_queries,
            "extra_mem_gib": 0.0,
            "rss_gib": rss_flat,
        }
    )
    default_nprobe = ann.probes_for(nlist) if nlist else 0
    for nprobe in sorted(set(args.nprobe) | {default_nprobe}):
        approx = index.search(queries[: args.recall_queries], "audio", k=10, nprobe=nprobe)
        med, p90, best = time_single_queries(index, queries[: args.queries], nprobe=nprobe)
        rows.append(
            {
                "data": kind,
                "n": n,
                "method": f"IVF{nlist},SQ8+rerank nprobe={nprobe}"
                + ("*" if nprobe == default_nprobe else ""),
                "build_s": t_build,
                "build_rate": n / t_build,
                "median_ms": med,
                "p90_ms": p90,
                "min_ms": best,
                "recall@10": recall_at_10(approx, truth),
                "batch_ms_per_query": float("nan"),
                "extra_mem_gib": rss_ivf - rss_flat,
                "rss_gib": rss_ivf,
            }
        )
    rows[-1]["peak_rss_gib"] = peak
    del index, store
    gc.collect()
    return rows


def print_table(rows: list[dict]) -> None:
    head = f"{'data':<10}{'N':>9}  {'method':<34}{'build s':>8}{'vec/s':>10}{'p50 ms':>9}{'p90 ms':>9}{'min ms':>9}{'R@10':>7}{'+mem GiB':>9}{'RSS GiB':>9}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['data']:<10}{r['n']:>9}  {r['method']:<34}{r['build_s']:>8.1f}{r['build_rate']:>10.0f}"
            f"{r['median_ms']:>9.2f}{r['p90_ms']:>9.2f}{r['min_ms']:>9.2f}{r['recall@10']:>7.3f}{r['extra_mem_gib']:>9.2f}{r['rss_gib']:>9.2f}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100k vectors instead of 1M")
    parser.add_argument("--n", type=int, default=None, help="number of vectors (overrides --quick)")
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument(
        "--data", default="clustered,uniform", help="comma list of clustered,uniform"
    )
    parser.add_argument(
        "--nprobe",
        default="16,32,64,128,256",
        help="comma list of nprobe values (the index default, marked *, is added)",
    )
    parser.add_argument("--queries", type=int, default=50, help="single queries timed per setting")
    parser.add_argument(
        "--exact-queries",
        type=int,
        default=20,
        help="single exact queries timed (each reads all N vectors: ~0.5 s at 1M)",
    )
    parser.add_argument("--recall-queries", type=int, default=100, help="queries for recall@10")
    parser.add_argument(
        "--spread", type=float, default=1.0, help="noise norm of the clustered data"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    args.n = args.n or (100_000 if args.quick else 1_000_000)
    args.nprobe = [int(x) for x in args.nprobe.split(",")]
    kinds = [k.strip() for k in args.data.split(",") if k.strip()]

    if args.n <= AnnConfig().exact_max_items:
        print(
            f"note: N={args.n} <= exact_max_items={AnnConfig().exact_max_items}: the index would search "
            "exactly; the IVF rows show the approximate path at this size"
        )
    print(
        f"# bench_retrieval  {datetime.now(UTC):%Y-%m-%d %H:%M} UTC  {platform.processor() or platform.machine()}"
        f"  cpus={os.cpu_count()}  faiss={faiss.__version__}  omp_threads={faiss.omp_get_max_threads()}"
        f"  numpy={np.__version__}  N={args.n}  D={args.dim}  spread={args.spread}"
    )
    rows: list[dict] = []
    t0 = time.perf_counter()
    for kind in kinds:
        rows += run_dataset(kind, args)
    print_table(rows)
    print(
        f"total {time.perf_counter() - t0:.0f} s; exact batch of {args.recall_queries} queries: "
        + ", ".join(
            f"{r['data']} {r['batch_ms_per_query']:.1f} ms/query"
            for r in rows
            if r["method"].startswith("exact")
        )
    )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
