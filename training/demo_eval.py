"""Held-out metrics of a demo model on a prepared AV-Shapes set (ground truth known).

Measures what the bundled model is for:

- classification: top-1 accuracy (the arg-max is one of the clip's labels) and mAP, with the
  official 10-frame ensemble;
- retrieval: R@1/5/10 and median rank, audio->visual and visual->audio, on unmasked inputs
  through the modality-specific path (OFFICIAL_CAVMAE.md §6.1);
- reconstruction: mean masked-patch MSE per modality at several mask ratios;
- localisation: IoU between the top-k patches of a "where is the sound" map and the patches
  covered by the sounding objects (k = number of covered patches), against a random-patch
  baseline; for the cosine map (audio embedding vs each visual patch token) on every clip and
  for the occlusion map (``cavmae.inference.sound_map``) on the first ``occlusion_clips``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

__all__ = ["evaluate_demo"]


def _iou_topk(sim: np.ndarray, gt: np.ndarray) -> float:
    """IoU of the |gt| highest-similarity patches with the ground-truth patch set."""
    k = int(gt.sum())
    pred = np.zeros(gt.size, bool)
    pred[np.argsort(-sim.ravel())[:k]] = True
    g = gt.ravel()
    return float((pred & g).sum() / max((pred | g).sum(), 1))


def evaluate_demo(
    pretrain_path: str | Path,
    classifier_path: str | Path,
    test_dir: str | Path,
    *,
    ratios: Sequence[float] = (0.25, 0.5, 0.75, 0.9),
    batch_size: int = 16,
    seed: int = 0,
    occlusion_clips: int = 60,
) -> dict[str, Any]:
    """Computes the demo metrics on a prepared synthetic test set.

    Args:
        pretrain_path: pretraining checkpoint (reconstruction, retrieval, localisation).
        classifier_path: fine-tuned checkpoint (classification).
        test_dir: a ``prepare_synthetic`` output (items keep their synthetic ground truth).
        ratios: mask ratios of the reconstruction-loss sweep (both modalities).
        batch_size: clips per model call.
        seed: masking seed.
        occlusion_clips: how many of the first clips also get the occlusion map (one visual
            pass per patch, so it is the slow part of the evaluation), once with the clip's own
            audio and once, as a control, with the audio of the next clip in the batch.

    Returns:
        A JSON-serialisable dict of metrics.
    """
    from cavmae.checkpoint import load_checkpoint
    from cavmae.inference import Predictor
    from cavmae.inference.sound_map import occlusion_drops, occlusion_embeddings, patch_cosine
    from cavmae.retrieval import evaluate_labelled
    from training.data.datasets import PreparedDataset
    from training.metrics import mean_average_precision
    from training.synthetic import AVShapesConfig, patch_mask, render_clip

    pred = Predictor(load_checkpoint(pretrain_path), load_checkpoint(classifier_path), device="cpu")
    ds = PreparedDataset(test_dir, train=False, frame="middle", return_all_frames=True)
    syn_cfg = AVShapesConfig(**ds.manifest["extra"]["synthetic_config"])
    pt = pred.pretrain.model
    grid = pred.pretrain.config.visual_grid
    probs, targets, emb_a, emb_v, ious, ious_rand = [], [], [], [], [], []
    ious_occ: list[float] = []
    ious_occ_other: list[float] = []  # control: the audio of another clip
    rec = {r: {"a": [], "v": []} for r in ratios}
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    n = len(ds)
    for start in range(0, n, batch_size):
        idx = list(range(start, min(n, start + batch_size)))
        samples = [ds[i] for i in idx]
        fbank = torch.stack([s["fbank"] for s in samples])  # (B, T, F)
        frame = torch.stack([s["image"] for s in samples])  # (B, 3, S, S)
        frames_all = torch.stack([s["frames_all"] for s in samples])  # (B, K, 3, S, S)
        targets.append(torch.stack([s["label"] for s in samples]).numpy())
        probs.append(pred.class_probabilities(fbank, frames_all, "multimodal").numpy())
        a_tok, v_tok = pred.token_features(fbank, frame)  # (B, L_a, D), (B, L_v, D)
        a = F.normalize(a_tok.mean(1), dim=-1)  # (B, D)
        emb_a.append(a.numpy())
        emb_v.append(F.normalize(v_tok.mean(1), dim=-1).numpy())
        sims = patch_cosine(a, v_tok).numpy()  # (B, L_v)
        with torch.inference_mode():
            for r in ratios:
                out = pt.forward_inpaint(fbank, frame, r, r, generator=gen)
                rec[r]["a"].append(float(out.loss_a) * len(idx))
                rec[r]["v"].append(float(out.loss_v) * len(idx))
        for j, i in enumerate(idx):
            info = ds.items[i]["synthetic"]
            if info.get("mismatched"):
                continue
            times = info["frame_times"]
            t_mid = times[len(times) // 2]
            clip = render_clip(info["index"], info["seed"], syn_cfg, frame_times=[t_mid])
            gt = patch_mask(clip, 0, grid=grid[0]) >= 0.5
            if not gt.any():
                continue
            ious.append(_iou_topk(sims[j].reshape(grid), gt))
            ious_rand.append(_iou_topk(rng.random(grid), gt))
            if i < occlusion_clips and len(idx) > 1:
                full, without = occlusion_embeddings(pt, frame[j : j + 1])  # (D,), (L_v, D)
                other = (j + 1) % len(idx)
                for audio_j, out in ((j, ious_occ), (other, ious_occ_other)):
                    occ = occlusion_drops(a[audio_j], full, without)  # (L_v,)
                    out.append(_iou_topk(occ.numpy().reshape(grid), gt))
        log.info("evaluated %d/%d clips", idx[-1] + 1, n)
    p = np.concatenate(probs)
    t = np.concatenate(targets)
    top1 = float(np.mean(t[np.arange(len(t)), p.argmax(1)] > 0.5))
    # Paired R@K / MR (the paper's protocol) plus class-level precision P@K: a clip's exact
    # partner competes with the ~N/10 clips of its class, so P@1 shows the class-level match.
    labels = [tuple(str(c) for c in np.flatnonzero(row > 0.5)) for row in t]
    retrieval = evaluate_labelled(np.concatenate(emb_a), np.concatenate(emb_v), labels)
    return {
        "clips": n,
        "classes": ds.num_classes,
        "classification": {
            "top1_accuracy": top1,
            "mAP": float(mean_average_precision(t, p)),
            "chance_top1": float(np.mean(t.sum(1)) / t.shape[1]),
            "frames": int(frames_all.shape[1]),
        },
        "retrieval": retrieval,
        "reconstruction_mse": {
            f"{r:.2f}": {"audio": sum(v["a"]) / n, "visual": sum(v["v"]) / n} for r, v in rec.items()
        },
        "localisation": {
            "iou_top_k": float(np.mean(ious)) if ious else float("nan"),
            "iou_top_k_occlusion": float(np.mean(ious_occ)) if ious_occ else float("nan"),
            "iou_top_k_occlusion_other_audio": (
                float(np.mean(ious_occ_other)) if ious_occ_other else float("nan")
            ),
            "iou_random_baseline": float(np.mean(ious_rand)) if ious_rand else float("nan"),
            "clips": len(ious),
            "occlusion_clips": len(ious_occ),
        },
    }
