"""Responsiveness of the web app: start-up time, slider-to-reconstruction latency, memory.

Starts ``python launch.py`` as a subprocess for each model and measures, on this machine:

- **start to ready**: from spawning the process to the first HTTP 200 of the page, with the
  model loaded before the server starts (``launch.py`` preloads it);
- **slider latency**: a mask-slider change to the updated reconstruction, through
  ``gradio_client`` (HTTP, queue, model call, rendering, PNG encoding, downloading the six
  changed images), median and p90 over ``--repeats`` changes; the model call alone is read from
  the app's own summary line;
- **peak RSS** of the app process (``VmHWM``) after the runs.

Models: the bundled demo model when present (``assets/models``), else a random-weight model of
the same preset (``cavmae_demo``); and the full-size model with random weights (the official
``cavmae_base`` configuration). Usage::

    python bench/bench_app.py [--repeats 30] [--skip-full] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _random_model(preset: str, folder: Path) -> Path:
    """A random-weight pretraining checkpoint of a preset (saved once per run of the bench)."""
    import torch

    from cavmae.checkpoint import save_model
    from cavmae.config import MODEL_PRESETS
    from cavmae.models import build_model

    torch.manual_seed(0)
    path = folder / f"{preset}-random.safetensors"
    save_model(build_model(MODEL_PRESETS[preset]()), path)
    return path


def _sample(folder: Path) -> Path:
    """A 10-s AV-Shapes clip (224 x 224, 16 kHz audio) in ``folder``."""
    from training.synthetic import AVShapesConfig, render_clip, write_video

    folder.mkdir(parents=True, exist_ok=True)
    return write_video(render_clip(0, 0, AVShapesConfig()), folder / "bench_clip.mp4")


def _wait_http(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 300.0) -> None:
    end = time.time() + timeout_s
    while time.time() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"the app exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout_s} s")


def _vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def bench_model(name: str, model: str, samples: Path, work: Path, repeats: int) -> dict[str, float | str]:
    """Start the app on ``model``, time start-up, slider changes and memory."""
    from gradio_client import Client

    port = _free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, str(ROOT / "launch.py"), "--model", model, "--port", str(port),
           "--samples", str(samples), "--runs", str(work / "runs")]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}/"
        _wait_http(url, proc)
        start_s = time.perf_counter() - t0
        client = Client(url, verbose=False, download_files=str(work / "downloads"))
        client.predict("bench_clip.mp4", api_name="/use_sample")
        t = time.perf_counter()
        client.predict(75, 75, "unstructured", 0, 5, api_name="/mask_frame")  # first call: all 8 views
        first_s = time.perf_counter() - t
        e2e, model_ms = [], []
        for i in range(repeats):
            ratio = 40 + (i * 7) % 55  # a different value each time, as a dragged slider gives
            t = time.perf_counter()
            out = client.predict(ratio, 75, "unstructured", 0, 5, api_name="/mask_ratio_a")
            e2e.append(time.perf_counter() - t)
            m = re.search(r"(\d+) ms", out[-1])
            if m:
                model_ms.append(float(m.group(1)))
        rss = _vm_hwm_mb(proc.pid)
        client.close()
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
    return {
        "model": name,
        "start_to_ready_s": start_s,
        "first_reconstruction_s": first_s,
        "slider_median_ms": 1000 * statistics.median(e2e),
        "slider_p90_ms": 1000 * _pct(e2e, 0.9),
        "model_call_median_ms": statistics.median(model_ms) if model_ms else float("nan"),
        "model_call_p90_ms": _pct(model_ms, 0.9) if model_ms else float("nan"),
        "peak_rss_mb": rss,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=30, help="slider changes per model")
    p.add_argument("--skip-full", action="store_true", help="only the demo model")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from cavmae import zoo

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_app_") as tmp:
        work = Path(tmp)
        samples = work / "samples"
        _sample(samples)
        if zoo.BUNDLED["demo-pretrain"].is_file():
            demo = ("demo (bundled)", "demo")
        else:
            demo = ("cavmae_demo (random weights)", str(_random_model("cavmae_demo", work)))
        models = [demo]
        if not args.skip_full:
            models.append(("cavmae_base full size (random weights)", str(_random_model("cavmae_base", work))))
        for name, model in models:
            rows.append(bench_model(name, model, samples, work, args.repeats))
    load = os.getloadavg()
    print(f"\nCAV-MAE Studio app on {os.cpu_count()} CPU(s), torch threads default, load average "
          f"{load[0]:.1f} {load[1]:.1f} {load[2]:.1f}; {args.repeats} slider changes per model\n")
    head = (f"{'model':40s} {'start→ready s':>13s} {'1st recon s':>11s} {'slider med ms':>13s} "
            f"{'slider p90 ms':>13s} {'model med ms':>12s} {'model p90 ms':>12s} {'peak RSS MB':>11s}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['model']:40s} {r['start_to_ready_s']:13.1f} {r['first_reconstruction_s']:11.2f} "
              f"{r['slider_median_ms']:13.0f} {r['slider_p90_ms']:13.0f} {r['model_call_median_ms']:12.0f} "
              f"{r['model_call_p90_ms']:12.0f} {r['peak_rss_mb']:11.0f}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "loadavg": load}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
