"""Responsiveness of the web app: start-up time, slider-to-reconstruction latency, memory.

Starts ``python launch.py`` as a subprocess for each model and measures, on this machine:

- **start to ready**: from spawning the process to the first HTTP 200 of the page, with the
  model loaded before the server starts (``launch.py`` preloads it);
- **slider latency in a browser** (headless chromium, when ``/usr/bin/chromium`` exists): from
  typing a new audio mask ratio to the moment the summary and all six changed images are shown
  (queue, model call, rendering, image encoding, transfer and decoding in the page);
- **slider latency through the API** (``gradio_client``, which downloads the six images one
  after the other); the model call alone is read from the app's own summary line;
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


_CHROMIUM = Path("/usr/bin/chromium")
_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
_VIEWS = [
    "spec-masked",
    "spec-reconstruction",
    "spec-composite",
    "frame-masked",
    "frame-reconstruction",
    "frame-composite",
]
_SHOWN = """([views, needle, before]) => {
  const s = document.querySelector('#rec-summary');
  if (!s || !s.innerText.includes(needle)) return false;
  // The audio views must show new images; the frame views (unchanged by an audio ratio) loaded.
  return views.every((v, k) => { const i = document.querySelector('#' + v + ' img');
                                 return i && (k >= 3 || i.src !== before[k]) && i.complete && i.naturalWidth > 0; });
}"""
_SRCS = "(views) => views.map(v => { const i = document.querySelector('#' + v + ' img'); return i ? i.src : ''; })"


def _masked(tokens: int, percent: int) -> int:
    """Tokens a ratio masks: L - int(L * (1 - r)) (the official truncation)."""
    return tokens - int(tokens * (1 - percent / 100.0))


def browser_latency(url: str, repeats: int) -> list[float]:
    """Seconds from typing a new audio ratio to the updated summary and images, in chromium."""
    from playwright.sync_api import sync_playwright

    out = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(_CHROMIUM), args=_ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        page.set_default_timeout(120_000)
        page.goto(url)
        page.wait_for_function(
            "() => { const s = document.querySelector('#rec-summary');"
            " return s && s.innerText.includes('patches masked'); }"
        )
        box = page.locator("#ratio-a input[type=number]")
        tokens = int(
            re.search(r"/(\d+) patches", page.locator("#rec-summary").inner_text()).group(1)
        )
        previous = None
        for i in range(repeats + 1):
            percent = 30 + (i * 7) % 65
            if previous is not None and _masked(tokens, percent) == previous:
                percent += 1  # the summary must change for the wait below
            previous = _masked(tokens, percent)
            before = page.evaluate(_SRCS, _VIEWS)
            t = time.perf_counter()  # before fill: the input event may already trigger the change
            box.fill(str(percent))
            box.press("Enter")
            page.wait_for_function(
                _SHOWN, arg=[_VIEWS, f"Audio: {previous}/{tokens} patches", before]
            )
            if i:  # the first change warms the page up
                out.append(time.perf_counter() - t)
        browser.close()
    return out


def bench_model(
    name: str, model: str, samples: Path, work: Path, repeats: int, precision: str = "auto"
) -> dict[str, float | str]:
    """Start the app on ``model`` in ``precision``, time start-up, slider changes and memory."""
    from gradio_client import Client

    port = _free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    cmd = [
        sys.executable,
        str(ROOT / "launch.py"),
        "--model",
        model,
        "--port",
        str(port),
        "--samples",
        str(samples),
        "--runs",
        str(work / "runs"),
        "--precision",
        precision,
    ]
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        url = f"http://127.0.0.1:{port}/"
        _wait_http(url, proc)
        start_s = time.perf_counter() - t0
        client = Client(url, verbose=False, download_files=str(work / "downloads"))
        client.predict("bench_clip.mp4", api_name="/use_sample")
        t = time.perf_counter()
        client.predict(
            75, 75, "unstructured", 0, 5, api_name="/mask_frame"
        )  # first call: all 8 views
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
        browser = browser_latency(url, repeats) if _CHROMIUM.exists() else []
        rss = _vm_hwm_mb(proc.pid)
        client.close()
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
    return {
        "model": name if precision == "auto" else f"{name}, {precision}",
        "start_to_ready_s": start_s,
        "first_reconstruction_s": first_s,
        "browser_median_ms": 1000 * statistics.median(browser) if browser else float("nan"),
        "browser_p90_ms": 1000 * _pct(browser, 0.9) if browser else float("nan"),
        "api_median_ms": 1000 * statistics.median(e2e),
        "api_p90_ms": 1000 * _pct(e2e, 0.9),
        "model_call_median_ms": statistics.median(model_ms) if model_ms else float("nan"),
        "model_call_p90_ms": _pct(model_ms, 0.9) if model_ms else float("nan"),
        "peak_rss_mb": rss,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=30, help="slider changes per model")
    p.add_argument("--skip-full", action="store_true", help="only the demo model")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument(
        "--precision",
        nargs="+",
        default=["auto"],
        choices=["auto", "float32", "bfloat16"],
        help="app --precision values to run each model with",
    )
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
            models.append(
                ("cavmae_base full size (random weights)", str(_random_model("cavmae_base", work)))
            )
        for name, model in models:
            for precision in args.precision:
                rows.append(bench_model(name, model, samples, work, args.repeats, precision))
    load = os.getloadavg()
    print(
        f"\nCAV-MAE Studio app on {os.cpu_count()} CPU(s), torch threads default, load average "
        f"{load[0]:.1f} {load[1]:.1f} {load[2]:.1f}; {args.repeats} slider changes per model\n"
    )
    cols = [
        ("start→ready s", "start_to_ready_s", "{:.1f}"),
        ("1st recon s", "first_reconstruction_s", "{:.2f}"),
        ("browser med ms", "browser_median_ms", "{:.0f}"),
        ("browser p90 ms", "browser_p90_ms", "{:.0f}"),
        ("API med ms", "api_median_ms", "{:.0f}"),
        ("API p90 ms", "api_p90_ms", "{:.0f}"),
        ("model med ms", "model_call_median_ms", "{:.0f}"),
        ("model p90 ms", "model_call_p90_ms", "{:.0f}"),
        ("peak RSS MB", "peak_rss_mb", "{:.0f}"),
    ]
    head = f"{'model':50s} " + " ".join(f"{c[0]:>14s}" for c in cols)
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['model']:50s} " + " ".join(f"{c[2].format(r[c[1]]):>14s}" for c in cols))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "loadavg": load}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
