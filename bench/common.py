"""Shared helpers for the bench scripts: timing, machine description, tables, model FLOPs.

Timing follows one rule for every script: warm up, then take the median of N timed runs. On a
machine shared with other jobs, :func:`time_interleaved` times several variants round-robin
so that a burst of foreign load hits all of them alike, and the ratio of medians holds.

FLOPs count the matrix products only (2 FLOPs per multiply-add): patch embeddings,
qkv/proj/MLP linears, attention scores and weighted sums, decoder and heads. Norms, softmax,
GELU and losses are left out, as in nanoGPT's ``estimate_mfu``. The counts are checked
against ``torch.utils.flop_counter.FlopCounterMode`` in ``tests/unit/test_accel.py``.

Use from a script in ``bench/``: ``from common import ...`` (the script's folder is on
``sys.path``).
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # lets the bench scripts import cavmae from a checkout
    sys.path.insert(0, str(ROOT))

from cavmae.accel import available_cores  # noqa: E402
from cavmae.config import FeatureConfig, ModelConfig  # noqa: E402

#: Dense bf16 tensor-core peaks (FLOP/s), matched against the device name (first hit wins).
PEAK_BF16: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("H200", 989e12),
    ("GH200", 989e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("A10G", 70e12),
    ("4090", 165e12),
)


# ---------------------------------------------------------------------- machine


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (Linux) or ``platform.processor()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_description(device: torch.device | str = "cpu") -> str:
    """One line: date, CPU model and cores, load, torch version and threads, GPU if used."""
    cores = available_cores(load=0)
    parts = [
        _dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        f"{cpu_model()} ({cores} cores)",
    ]
    if hasattr(os, "getloadavg"):
        parts.append("load avg {:.1f}/{:.1f}/{:.1f}".format(*os.getloadavg()))
    parts.append(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(dev)
        parts.append(
            f"{props.name} ({props.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}"
        )
    return " | ".join(parts)


def peak_flops(device: torch.device | str, override_tflops: float | None = None) -> float | None:
    """Dense bf16 peak FLOP/s of a CUDA device (None on CPU or for an unknown GPU)."""
    if override_tflops:
        return override_tflops * 1e12
    dev = torch.device(device)
    if dev.type != "cuda" or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(dev)
    return next((v for key, v in PEAK_BF16 if key in name), None)


# ---------------------------------------------------------------------- media and models


def synth_clip(
    path: Path, seconds: float, size: str, fps: int, tone_hz: float = 440, hue: float = 0
) -> Path:
    """An H.264 (x264 defaults) + AAC stereo clip from FFmpeg's test sources, made once.

    ``size`` is "WxH"; ``hue`` (degrees) and ``tone_hz`` make clips of one size differ. The file
    is written under a temporary name and renamed, so an interrupted run leaves no half file.
    """
    if not path.exists():
        import imageio_ffmpeg

        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.mp4")
        video = f"testsrc2=size={size}:rate={fps}" + (f",hue=h={hue:g}" if hue else "")
        subprocess.run(
            [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y",
             "-f", "lavfi", "-i", video,
             "-f", "lavfi", "-i", f"sine=frequency={tone_hz:g}:sample_rate=48000",
             "-t", str(seconds), "-c:v", "libx264", "-pix_fmt", "yuv420p",
             "-c:a", "aac", "-ac", "2", "-shortest", str(tmp)],
            check=True,
        )  # fmt: skip
        tmp.rename(path)
    return path


def in_memory_predictor(
    model: torch.nn.Module, device: str | torch.device = "cpu", precision: str = "auto"
) -> Any:
    """The product's :class:`~cavmae.inference.Predictor` around an in-memory model.

    A ``CAVMAEFT`` becomes a multi-label (sigmoid) classifier, a ``CAVMAE`` the pretraining
    model (reconstruction, embeddings).
    """
    from cavmae.checkpoint.loading import LoadedCheckpoint
    from cavmae.inference import Predictor
    from cavmae.models import CAVMAEFT

    classifier = isinstance(model, CAVMAEFT)
    cfg = model.config
    loaded = LoadedCheckpoint(
        model=model,
        config=cfg,
        features=FeatureConfig.for_model(cfg),
        labels=None,
        multi_label=True if classifier else None,
        kind="finetune" if classifier else "pretrain",
        source=None,
    )
    if classifier:
        return Predictor(classifier=loaded, device=device, precision=precision)
    return Predictor(pretrain=loaded, device=device, precision=precision)


# ---------------------------------------------------------------------- timing


@dataclass(frozen=True)
class Timing:
    """Wall-clock seconds of repeated runs of one function, and the process CPU seconds
    of each run (all threads; OpenMP threads that spin while waiting count too)."""

    runs: tuple[float, ...]
    cpu: tuple[float, ...] = ()

    @property
    def median(self) -> float:
        return statistics.median(self.runs)

    @property
    def cpu_median(self) -> float | None:
        return statistics.median(self.cpu) if self.cpu else None

    @property
    def min(self) -> float:
        return min(self.runs)

    @property
    def spread(self) -> float:
        """(max - min) / median: how noisy the runs were."""
        return (max(self.runs) - min(self.runs)) / self.median


def synchronize(device: torch.device | str) -> None:
    """Wait for queued CUDA work (no-op on CPU)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def time_fn(
    fn: Callable[[], object],
    runs: int = 5,
    warmup: int = 1,
    device: torch.device | str = "cpu",
) -> Timing:
    """Time ``fn`` ``runs`` times after ``warmup`` untimed calls (CUDA-synchronised)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    out, cpu = [], []
    for _ in range(runs):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        synchronize(device)
        out.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return Timing(tuple(out), tuple(cpu))


def time_interleaved(
    fns: Mapping[str, Callable[[], object]],
    rounds: int = 5,
    warmup: int = 1,
    device: torch.device | str = "cpu",
    before: Mapping[str, Callable[[], None]] | None = None,
) -> dict[str, Timing]:
    """Time several variants round-robin: round r runs each variant once, in order.

    Args:
        fns: name -> function to time.
        rounds: timed rounds (each variant's median is over ``rounds`` runs).
        warmup: untimed calls of each variant first.
        device: for CUDA synchronisation.
        before: optional name -> untimed setup run right before each call of that variant
            (e.g. setting the thread count the variant needs).
    """
    before = before or {}
    for name, fn in fns.items():
        for _ in range(warmup):
            before.get(name, _nothing)()
            fn()
    synchronize(device)
    runs: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            before.get(name, _nothing)()
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            synchronize(device)
            runs[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    return {name: Timing(tuple(runs[name]), tuple(cpu[name])) for name in fns}


def _nothing() -> None:
    return None


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| in float32 (on CPU)."""
    return float((a.detach().float().cpu() - b.detach().float().cpu()).abs().max())


# ---------------------------------------------------------------------- tables


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table (pastes into docs/PERFORMANCE.md); floats get 3 significant digits
    unless already formatted as strings."""

    def cell(v: object) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            if v != v:  # NaN
                return "-"
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
        return str(v)

    text = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in text)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    out = [line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in text]
    return "\n".join(out)


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Print a titled Markdown table followed by a blank line."""
    print(f"### {title}\n")
    print(format_table(headers, rows))
    print(flush=True)


# ---------------------------------------------------------------------- FLOPs


def block_flops(tokens: int, width: int, mlp_ratio: float = 4.0) -> float:
    """Forward FLOPs of one pre-norm transformer block on ``tokens`` tokens (one sample)."""
    hidden = int(width * mlp_ratio)
    linear = 2 * tokens * (4 * width * width + 2 * width * hidden)  # qkv, proj, fc1, fc2
    attention = 2 * 2 * tokens * tokens * width  # q k^T and attn @ v over all heads
    return float(linear + attention)


def patch_embed_flops(cfg: ModelConfig, width: int | None = None) -> float:
    """FLOPs of both patch embeddings (all patches, one sample); ``width`` defaults to D."""
    d = cfg.embed_dim if width is None else width
    p2 = cfg.patch_size**2
    return float(2 * d * (cfg.num_audio_patches * p2 + cfg.num_visual_patches * p2 * cfg.in_chans))


def ft_forward_flops(cfg: ModelConfig, mode: str = "multimodal") -> float:
    """Forward FLOPs of one clip through ``CAVMAEFT`` in ``mode`` ('multimodal',
    'audioonly' or 'videoonly'): embeddings, modality-specific blocks, shared blocks, head."""
    la, lv, d, r = cfg.num_audio_patches, cfg.num_visual_patches, cfg.embed_dim, cfg.mlp_ratio
    p2 = cfg.patch_size**2
    depth, shared = cfg.modality_specific_depth, cfg.num_shared_blocks
    embed_a, embed_v = 2 * d * la * p2, 2 * d * lv * p2 * cfg.in_chans
    spec_a, spec_v = depth * block_flops(la, d, r), depth * block_flops(lv, d, r)
    head = 2 * d * (cfg.label_dim or 0)
    if mode == "multimodal":
        body = embed_a + embed_v + spec_a + spec_v + shared * block_flops(la + lv, d, r)
    elif mode == "audioonly":
        body = embed_a + spec_a + shared * block_flops(la, d, r)
    elif mode == "videoonly":
        body = embed_v + spec_v + shared * block_flops(lv, d, r)
    else:
        raise ValueError(f"no FLOP formula for mode {mode!r}")
    return float(body + head)


def pretrain_forward_flops(
    cfg: ModelConfig, mask_ratio_a: float = 0.75, mask_ratio_v: float = 0.75, batch: int = 1
) -> float:
    """Forward FLOPs per clip of ``CAVMAE.forward`` (MAE + contrastive) at these mask ratios.

    Encoder on the kept tokens (``int(L * (1 - r))``, as the model truncates): modality
    blocks, shared blocks on the joint, audio and visual streams; the decoder on all
    ``L_a + L_v`` tokens with its input projection and prediction heads; the patch embeddings
    of all patches; and the (B, B) contrastive similarity (``2 * batch * D`` per clip).
    """
    la, lv = cfg.num_audio_patches, cfg.num_visual_patches
    ka, kv = int(la * (1 - mask_ratio_a)), int(lv * (1 - mask_ratio_v))
    d, dd, r = cfg.embed_dim, cfg.decoder_embed_dim, cfg.mlp_ratio
    p2 = cfg.patch_size**2
    enc = cfg.modality_specific_depth * (block_flops(ka, d, r) + block_flops(kv, d, r))
    enc += cfg.num_shared_blocks * (
        block_flops(ka + kv, d, r) + block_flops(ka, d, r) + block_flops(kv, d, r)
    )
    dec = 2 * (ka + kv) * d * dd  # decoder_embed
    dec += cfg.decoder_depth * block_flops(la + lv, dd, r)
    dec += 2 * dd * (la * p2 + lv * p2 * cfg.in_chans)  # decoder_pred_a / _v
    contrast = 2 * batch * d
    return float(patch_embed_flops(cfg) + enc + dec + contrast)


def pretrain_step_flops(
    cfg: ModelConfig, mask_ratio_a: float = 0.75, mask_ratio_v: float = 0.75, batch: int = 1
) -> float:
    """Training FLOPs per clip (forward + backward) of the matrix products actually run.

    The backward pass costs 2x the forward everywhere (input and weight gradients) except in
    the patch embeddings, whose inputs need no gradient (1x): 3 x forward - patch embeds.
    """
    fwd = pretrain_forward_flops(cfg, mask_ratio_a, mask_ratio_v, batch)
    return 3.0 * fwd - patch_embed_flops(cfg)
