"""Held-out metrics of a demo model, measured as a user would: mp4 files through the Predictor.

``evaluate_demo`` reads a folder written by ``python -m training.synthetic`` (mp4 files and
``metadata.jsonl`` with boxes, labels and sources) and runs every clip through the public API,
:meth:`cavmae.inference.Predictor.prepare`, ``classify``, ``reconstruct``,
``patch_similarity``, ``embed`` and ``temporal_similarity``:

- classification: top-1 (the arg-max is one of the clip's labels) and mAP, with the official
  10-frame ensemble and with the middle frame alone;
- reconstruction: the MSE of the masked patches (normalised units) at several mask ratios
  against the fill that knows only the visible patches' means (each masked pixel gets its mel
  bin's mean over the visible pixels; for the frame, its channel's mean), and the audio error
  of the structured masking modes;
- the default "where is the sound" map: the IoU of its top-k patches with the patches under the
  sounding objects' boxes (k = their number); the same frame with another class's audio muxed
  in by FFmpeg (should not point at the source); in two-source frames, whether each source's
  own audio (rendered alone and muxed in) puts its best patch on its own object;
- exact-pair retrieval (R@K, median rank) in both directions, and class-level P@K;
- temporal similarity: the mean diagonal minus the mean off-diagonal of the audio x visual
  window matrix of each clip.

``python -m training.demo_eval --seed 7 --clips 200`` exports a fresh held-out folder of a seed
and prints the metrics of the bundled demo model.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

__all__ = [
    "evaluate_demo",
    "box_patches",
    "iou_top_k",
    "visible_mean_fill_mse",
    "channel_mean_fill_mse",
    "diagonal_contrast",
    "mux_audio",
]

RATIOS = (0.25, 0.5, 0.75, 0.9)
AUDIO_MODES = ("unstructured", "time", "freq", "tf")


# --- metric helpers ---------------------------------------------------------------------------


def box_patches(box: Sequence[float], grid: int = 14, size: int = 224, cover: float = 0.5) -> np.ndarray:
    """Patches of a (grid, grid) layout covered by an (x0, y0, x1, y1) pixel box.

    A patch counts when at least ``cover`` of its area lies inside the box.

    Returns:
        (grid, grid) bool, row-major like the visual tokens.
    """
    p = size / grid
    x0, y0, x1, y1 = (float(v) for v in box)
    edges = np.arange(grid + 1) * p  # (grid + 1,)
    ox = np.clip(np.minimum(edges[1:], x1) - np.maximum(edges[:-1], x0), 0, None) / p  # (grid,)
    oy = np.clip(np.minimum(edges[1:], y1) - np.maximum(edges[:-1], y0), 0, None) / p  # (grid,)
    return (oy[:, None] * ox[None, :]) >= cover  # (grid, grid)


def iou_top_k(score: np.ndarray, truth: np.ndarray) -> float:
    """IoU of the ``truth.sum()`` highest-scoring cells with the true cells (same shapes)."""
    k = int(truth.sum())
    chosen = np.zeros(truth.size, bool)
    chosen[np.argsort(-score.ravel(), kind="stable")[:k]] = True
    t = truth.ravel().astype(bool)
    return float((chosen & t).sum() / max((chosen | t).sum(), 1))


def visible_mean_fill_mse(spec: np.ndarray, masked: np.ndarray) -> float:
    """MSE on the masked pixels of filling each with its mel bin's mean over the visible pixels.

    Args:
        spec: (T, F) normalised fbank.
        masked: (T, F) bool, True where the model's input was masked.

    Returns:
        The error of that fill, in the units of ``spec`` (nan when nothing is masked).
    """
    visible = ~masked
    means = (spec * visible).sum(0) / np.maximum(visible.sum(0), 1)  # (F,)
    if not masked.any():
        return float("nan")
    return float((((spec - means[None]) ** 2) * masked).sum() / masked.sum())


def channel_mean_fill_mse(frame: np.ndarray, masked: np.ndarray) -> float:
    """The frame counterpart: each masked pixel gets its channel's mean over the visible pixels.

    Args:
        frame: (3, S, S) normalised frame.
        masked: (S, S) bool.
    """
    visible = ~masked
    means = (frame * visible).sum((1, 2)) / max(int(visible.sum()), 1)  # (3,)
    if not masked.any():
        return float("nan")
    err = ((frame - means[:, None, None]) ** 2).mean(0)  # (S, S)
    return float(err[masked].mean())


def diagonal_contrast(matrix: np.ndarray) -> float:
    """Mean diagonal minus mean off-diagonal of a square (W, W) similarity matrix (nan if W < 2)."""
    w = matrix.shape[0]
    if w < 2:
        return float("nan")
    diag = float(np.trace(matrix)) / w
    off = (float(matrix.sum()) - float(np.trace(matrix))) / (w * w - w)
    return diag - off


def mux_audio(video: Path, audio: Path, out: Path, timeout_s: float = 60.0) -> Path:
    """Writes ``video``'s picture with the first audio track of ``audio`` (a media or wav file).

    The picture is copied; the audio is encoded as AAC, as the exporter writes it.
    """
    import imageio_ffmpeg

    from cavmae.errors import MediaError

    cmd = [
        imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
        "-i", str(video), "-i", str(audio), "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy",
        "-c:a", "aac", "-b:a", "96k", "-shortest", str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, timeout=timeout_s, check=False)
    if proc.returncode != 0:
        raise MediaError(f"ffmpeg could not mux {audio} onto {video}: "
                         f"{proc.stderr.decode(errors='replace')[-400:]}")
    return out


# --- the evaluation ---------------------------------------------------------------------------


@dataclasses.dataclass
class _Tally:
    """Per-clip values of every metric, summarised at the end."""

    top1: list[bool] = dataclasses.field(default_factory=list)
    top1_middle: list[bool] = dataclasses.field(default_factory=list)
    probs: list[np.ndarray] = dataclasses.field(default_factory=list)
    probs_middle: list[np.ndarray] = dataclasses.field(default_factory=list)
    targets: list[np.ndarray] = dataclasses.field(default_factory=list)
    rec: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    iou: list[float] = dataclasses.field(default_factory=list)
    iou_random: list[float] = dataclasses.field(default_factory=list)
    iou_other: list[float] = dataclasses.field(default_factory=list)
    own_top: list[bool] = dataclasses.field(default_factory=list)
    temporal: list[float] = dataclasses.field(default_factory=list)
    emb_a: list[np.ndarray] = dataclasses.field(default_factory=list)
    emb_v: list[np.ndarray] = dataclasses.field(default_factory=list)
    labels: list[tuple[str, ...]] = dataclasses.field(default_factory=list)

    def add(self, key: str, value: float) -> None:
        self.rec.setdefault(key, []).append(value)


def _source_truth(record: dict[str, Any], time_s: float, grid: int, size: int) -> tuple[int, np.ndarray, list[np.ndarray]]:
    """(frame index, patches under all sources, patches under each source) at ``time_s``."""
    times = np.asarray(record["frame_times"])
    k = int(np.argmin(np.abs(times - time_s)))
    per_source = [box_patches(record["boxes"][k][j], grid, size) for j in range(record["num_sources"])]
    union = np.any(per_source, axis=0) if per_source else np.zeros((grid, grid), bool)
    return k, union, per_source


def _partner_with_other_class(records: list[dict[str, Any]], i: int) -> int:
    """The next clip (cyclically) whose classes share none with clip i's."""
    mine = set(records[i]["labels"])
    for d in range(1, len(records)):
        j = (i + d) % len(records)
        if mine.isdisjoint(records[j]["labels"]):
            return j
    raise ValueError("the folder has no clip of another class")


def _own_source_wavs(record: dict[str, Any], seed: int, cfg: Any, tmp: Path) -> list[Path]:
    """Renders each source of a clip alone (its events, pitch and level) as a wav file."""
    from training.synthetic import plan_clip, write_wav
    from training.synthetic.audio import render_audio

    plan = plan_clip(record["index"], seed, cfg)
    paths = []
    for j, obj in enumerate(plan.sources):
        alone = dataclasses.replace(plan, objects=(obj,))
        wave = render_audio(alone, cfg)  # (N,): the source alone over the same noise floor
        paths.append(write_wav(wave, cfg.sample_rate, tmp / f"src_{record['index']}_{j}.wav"))
    return paths


def evaluate_demo(
    pretrain_path: str | Path,
    classifier_path: str | Path,
    folder: str | Path,
    *,
    seed: int,
    synthetic_config: Any = None,
    mask_seed: int = 0,
    limit: int | None = None,
) -> dict[str, Any]:
    """Measures a demo model on an exported AV-Shapes folder through the public Predictor API.

    Args:
        pretrain_path: pretraining checkpoint (reconstruction, sound maps, retrieval).
        classifier_path: fine-tuned checkpoint (classification).
        folder: a ``training.synthetic.generate_folder`` output (mp4 + metadata.jsonl).
        seed: the folder's dataset seed (to render each source's own audio).
        synthetic_config: its ``AVShapesConfig`` (defaults when None).
        mask_seed: seed of the reconstruction masks.
        limit: evaluate only the first clips.

    Returns:
        A JSON-serialisable dict of metrics.
    """
    from cavmae.checkpoint import load_checkpoint
    from cavmae.inference import MaskSpec, Predictor
    from cavmae.retrieval import evaluate_labelled
    from training.metrics import mean_average_precision
    from training.synthetic import AVShapesConfig

    cfg = synthetic_config or AVShapesConfig()
    folder = Path(folder)
    records = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines() if line]
    if limit is not None:
        records = records[:limit]
    pred = Predictor(load_checkpoint(pretrain_path), load_checkpoint(classifier_path), device="cpu")
    grid = pred.pretrain.config.visual_grid[0]
    size = pred.features.img_size
    num_classes = len(pred.labels)
    rng = np.random.default_rng(mask_seed)
    t = _Tally()
    with tempfile.TemporaryDirectory(prefix="demo_eval_") as tmp_s:
        tmp = Path(tmp_s)
        for i, rec in enumerate(records):
            path = folder / rec["file"]
            clip = pred.prepare(path)
            target = np.zeros(num_classes, np.float32)
            target[rec["labels"]] = 1
            t.targets.append(target)
            for ensemble, probs, top1 in ((True, t.probs, t.top1), (False, t.probs_middle, t.top1_middle)):
                c = pred.classify(clip, top_k=1, ensemble=ensemble)
                probs.append(c.probabilities)
                top1.append(int(np.argmax(c.probabilities)) in rec["labels"])
            _reconstruction(pred, clip, t, mask_seed)
            k = clip.middle_index
            _, truth, per_source = _source_truth(rec, float(clip.frame_times[k]), grid, size)
            sim = pred.patch_similarity(clip).grid  # the app's default map
            if truth.any():
                t.iou.append(iou_top_k(sim, truth))
                t.iou_random.append(iou_top_k(rng.random(truth.shape), truth))
                other = records[_partner_with_other_class(records, i)]
                muxed = mux_audio(path, folder / other["file"], tmp / "other.mp4")
                t.iou_other.append(iou_top_k(pred.patch_similarity(pred.prepare(muxed, frames="middle")).grid, truth))
            if len(per_source) == 2:
                for j, wav in enumerate(_own_source_wavs(rec, seed, cfg, tmp)):
                    muxed = mux_audio(path, wav, tmp / f"own{j}.mp4")
                    s = pred.patch_similarity(pred.prepare(muxed, frames="middle")).grid
                    t.own_top.append(bool(per_source[j].ravel()[int(np.argmax(s))]))
            emb = pred.embed(clip)
            t.emb_a.append(emb.audio)
            t.emb_v.append(emb.visual)
            t.labels.append(tuple(str(c) for c in rec["labels"]))
            t.temporal.append(diagonal_contrast(pred.temporal_similarity(path)["matrix"]))
            if (i + 1) % 20 == 0 or i + 1 == len(records):
                log.info("evaluated %d/%d clips", i + 1, len(records))
    return _summary(t, evaluate_labelled(np.stack(t.emb_a), np.stack(t.emb_v), t.labels), mean_average_precision)


def _reconstruction(pred: Any, clip: Any, t: _Tally, mask_seed: int) -> None:
    """Masked-patch errors and the visible-mean fills at every ratio and audio mode."""
    from cavmae.inference import MaskSpec

    k = clip.middle_index
    spec = clip.fbank.numpy()  # (T, F) normalised
    frame = clip.frames[k].numpy()  # (3, S, S) normalised
    for r in RATIOS:
        for mode in AUDIO_MODES if r == 0.5 else ("unstructured",):
            rec = pred.reconstruct(clip, MaskSpec(ratio_a=r, ratio_v=r, mode_a=mode, seed=mask_seed))
            key = f"{r:.2f}" if mode == "unstructured" else f"{r:.2f}_{mode}"
            t.add(f"audio_{key}", rec.loss_a)
            t.add(f"audio_fill_{key}", visible_mean_fill_mse(spec, rec.pixel_mask_a.T > 0.5))
            if mode == "unstructured":
                t.add(f"visual_{key}", rec.loss_v)
                t.add(f"visual_fill_{key}", channel_mean_fill_mse(frame, rec.pixel_mask_v > 0.5))


def _summary(t: _Tally, retrieval: dict[str, Any], mean_ap: Any) -> dict[str, Any]:
    mean = lambda xs: float(np.nanmean(xs)) if len(xs) else float("nan")  # noqa: E731
    rec: dict[str, Any] = {}
    for r in RATIOS:
        for mode in AUDIO_MODES if r == 0.5 else ("unstructured",):
            key = f"{r:.2f}" if mode == "unstructured" else f"{r:.2f}_{mode}"
            a, fa = mean(t.rec[f"audio_{key}"]), mean(t.rec[f"audio_fill_{key}"])
            entry = {"audio": a, "audio_fill": fa, "audio_ratio_to_fill": a / fa}
            if mode == "unstructured":
                v, fv = mean(t.rec[f"visual_{key}"]), mean(t.rec[f"visual_fill_{key}"])
                entry.update(visual=v, visual_fill=fv, visual_ratio_to_fill=v / fv)
            rec[key] = entry
    targets = np.stack(t.targets)
    return {
        "clips": len(t.targets),
        "classification": {
            "top1_accuracy": mean(t.top1),
            "mAP": float(mean_ap(targets, np.stack(t.probs))),
            "top1_accuracy_middle_frame": mean(t.top1_middle),
            "mAP_middle_frame": float(mean_ap(targets, np.stack(t.probs_middle))),
            "chance_top1": float(targets.sum(1).mean() / targets.shape[1]),
        },
        "reconstruction_mse": rec,
        "sound_map": {
            "iou_top_k": mean(t.iou),
            "iou_top_k_other_class_audio": mean(t.iou_other),
            "iou_random_baseline": mean(t.iou_random),
            "two_source_own_top_patch": mean(t.own_top),
            "clips": len(t.iou),
            "two_source_pairs": len(t.own_top) // 2,
        },
        "retrieval": retrieval,
        "temporal": {"diagonal_minus_off_diagonal": mean(t.temporal), "clips": len(t.temporal)},
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m training.demo_eval [--seed S] [--clips N] [--model DIR]``: held-out metrics."""
    from training.synthetic import AVShapesConfig, generate_folder

    root = Path(__file__).resolve().parents[1] / "assets" / "models"
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=7, help="held-out dataset seed (training used 0)")
    ap.add_argument("--clips", type=int, default=200, help="number of clips (a multiple of 10)")
    ap.add_argument("--pretrain", default=str(root / "cavmae-demo-pretrain.safetensors"))
    ap.add_argument("--classifier", default=str(root / "cavmae-demo.safetensors"))
    ap.add_argument("--folder", help="an existing exported folder (else a temporary one)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", help="also write the metrics here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cfg = AVShapesConfig()
    with tempfile.TemporaryDirectory(prefix="demo_heldout_") as tmp:
        folder = Path(args.folder) if args.folder else Path(tmp)
        if not (folder / "metadata.jsonl").is_file():
            generate_folder(folder, max(1, args.clips // cfg.num_classes), args.seed, cfg,
                            layout="flat", workers=args.workers)
        metrics = evaluate_demo(args.pretrain, args.classifier, folder, seed=args.seed)
    text = json.dumps(metrics, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
