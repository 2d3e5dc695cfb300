"""Benchmark of cavmae.media on this machine: prints a table of timings against the targets.

Targets (GitHub issue 3, item 6; 2-core CPU):
- a 10 s 720p H.264/AAC clip to model-ready tensors (``load_clip``) in <= 0.5 s;
- a 10-minute video windowed (``iter_windows``, 1 frame per 10-s window) at >= 20x real time;
- memory stays bounded over a 2-hour file (``iter_windows``; peak RSS growth reported).

The media are generated on first use with the imageio-ffmpeg binary and cached under
``$CAVMAE_BENCH_DIR`` (default ``/tmp/cavmae_bench_media``): a 10-s 1280x720 30 fps clip
(x264 default preset, keyframe every 250 frames, AAC 48 kHz stereo), a 10-minute 720p file made by
looping a 60-s clip (stream copy), and a 2-hour 64x64 video with AAC audio.

Usage: ``python bench/bench_media.py [--repeat N] [--quick] [--torch-threads N]`` (``--quick``
skips the 2-hour run). On a machine shared with other jobs, ``--torch-threads 1`` avoids torch's
thread pool stalling the small fbank computation (4 ms instead of 30 ms under load).
Wall times are medians; "cpu" adds this process and its ffmpeg children (user + system).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import synth_clip  # noqa: E402

from cavmae import features  # noqa: E402
from cavmae.config import FeatureConfig  # noqa: E402
from cavmae.media import iter_windows, load_clip, probe  # noqa: E402

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()
CACHE = Path(os.environ.get("CAVMAE_BENCH_DIR", "/tmp/cavmae_bench_media"))
SHARED_BBB = ROOT.parent / "shared" / "media" / "bbb_5s_aac_5.1ch.mp4"


def ffmpeg(*args: str) -> None:
    subprocess.run([FFMPEG, "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


def looped(path: Path, source: Path, seconds: float) -> Path:
    """``source`` repeated to ``seconds`` by stream copy (no re-encoding)."""
    if not path.exists():
        tmp = path.with_suffix(".tmp" + path.suffix)
        loops = int(np.ceil(seconds / probe(source).duration_s)) - 1
        ffmpeg(
            "-stream_loop",
            str(loops),
            "-i",
            str(source),
            "-c",
            "copy",
            "-t",
            str(seconds),
            str(tmp),
        )
        tmp.rename(path)
    return path


def cpu_seconds() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """(median wall seconds, median CPU seconds) over ``repeat`` runs after one warm-up."""
    fn()
    walls, cpus = [], []
    for _ in range(repeat):
        c0, t0 = cpu_seconds(), time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(cpu_seconds() - c0)
    return statistics.median(walls), statistics.median(cpus)


def rss_mb() -> float:
    """Current resident set size in MiB (Linux /proc), else the peak."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="skip the 2-hour memory run")
    ap.add_argument(
        "--torch-threads", type=int, default=0, help="torch.set_num_threads (0: default)"
    )
    args = ap.parse_args()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    CACHE.mkdir(parents=True, exist_ok=True)
    cfg = FeatureConfig()
    rows: list[tuple[str, str, str, str, str]] = []

    clip720 = synth_clip(CACHE / "clip_720p_10s.mp4", 10, "1280x720", 30)
    wall, cpu = timed(lambda: load_clip(clip720), args.repeat)
    rows.append(
        (
            "load_clip 10 s 720p30 H.264/AAC",
            f"{wall:.3f}",
            f"{cpu:.3f}",
            "<= 0.5 s",
            _ok(wall <= 0.5),
        )
    )
    wall, cpu = timed(lambda: load_clip(clip720, frame_mode="middle"), args.repeat)
    rows.append(("load_clip 720p, middle frame only", f"{wall:.3f}", f"{cpu:.3f}", "", ""))
    if SHARED_BBB.exists():
        wall, cpu = timed(lambda: load_clip(SHARED_BBB), args.repeat)
        rows.append(
            ("load_clip bbb 5.3 s 720p25 5.1ch (real)", f"{wall:.3f}", f"{cpu:.3f}", "", "")
        )
    wav = np.random.default_rng(0).uniform(-0.5, 0.5, 160000).astype(np.float32)
    wall, cpu = timed(lambda: features.fbank_features(wav, 16000, cfg), max(args.repeat, 20))
    rows.append(
        (
            "fbank_features 10 s (features.py)",
            f"{wall:.4f}",
            f"{cpu:.4f}",
            "<= 0.02 s",
            _ok(wall <= 0.02),
        )
    )

    src60 = synth_clip(CACHE / "clip_720p_60s.mp4", 60, "1280x720", 30)
    long10 = looped(CACHE / "video_720p_10min.mp4", src60, 600)
    dur = probe(long10).duration_s or 600.0

    def windows() -> int:
        return sum(1 for _ in iter_windows(long10, frames_per_window=1))

    wall, cpu = timed(windows, max(1, args.repeat // 3))
    rows.append((f"iter_windows 10 min 720p ({int(dur // 10)} x 10 s, 1 frame)", f"{wall:.2f}", f"{cpu:.2f}",
                 ">= 20x real time", f"{dur / wall:.0f}x " + _ok(dur / wall >= 20)))  # fmt: skip

    if not args.quick:
        part = synth_clip(CACHE / "clip_64px_60s.mp4", 60, "64x64", 10)
        long2h = looped(CACHE / "video_64px_2h.mp4", part, 7200)
        base = rss_mb()
        peak = base
        t0, c0 = time.perf_counter(), cpu_seconds()
        n = 0
        for _ in iter_windows(long2h):
            n += 1
            peak = max(peak, rss_mb())
        wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
        rows.append((f"iter_windows 2 h 64px ({n} windows)", f"{wall:.1f}", f"{cpu:.1f}",
                     "bounded memory", f"+{peak - base:.0f} MiB RSS, {7200 / wall:.0f}x"))  # fmt: skip

    widths = [max(len(r[i]) for r in rows + [_HEADER]) for i in range(5)]
    for r in [_HEADER, tuple("-" * w for w in widths), *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    print(
        f"\n{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; media cached in {CACHE}"
    )


_HEADER = ("case", "wall s", "cpu s", "target", "result")


def _ok(flag: bool) -> str:
    return "ok" if flag else "MISSED"


if __name__ == "__main__":
    main()
