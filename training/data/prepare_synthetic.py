"""Write AV-Shapes clips straight into the prepared format (no video encoding).

The demo model trains on this: each clip is rendered by ``training.synthetic.render_arrays`` at
the official frame times (:func:`training.data.prepare.official_frame_times`), its waveform
becomes a raw fbank exactly as a decoded video's would (:func:`training.data.prepare.raw_fbank`),
and both go into the memory maps through the same resumable runner as ``prepare_folder``.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cavmae.config import FeatureConfig
from cavmae.errors import ConfigError
from cavmae.labels import LabelSet
from training.data.prepare import check_prepare_args, official_frame_times, raw_fbank
from training.data.runner import PrepareReport, Progress, RowResult, plan_digest

__all__ = ["prepare_synthetic"]


@dataclass
class _SynthJob:
    row: int
    seed: int
    syn_cfg: Any  # AVShapesConfig
    cfg: dict[str, Any]
    frames_per_clip: int


def _render_synthetic(job: _SynthJob) -> RowResult:
    """Render one AV-Shapes clip into a raw fbank and frames at the official frame times."""
    from training.synthetic import plan_clip, render_arrays

    cfg = FeatureConfig.from_dict(job.cfg)
    syn = job.syn_cfg
    times = official_frame_times(syn.duration_s, syn.fps, job.frames_per_clip)
    plan = plan_clip(job.row, job.seed, syn)
    heard = (
        plan_clip(plan.audio_source_index, job.seed, syn, allow_mismatch=False)
        if plan.mismatched
        else plan
    )
    waveform, frames = render_arrays(job.row, job.seed, syn, frame_times=times)
    if frames.shape[1:3] != (cfg.img_size, cfg.img_size):
        from cavmae.features import resize_center_crop

        frames = np.stack([resize_center_crop(f, cfg.img_size) for f in frames])  # (K, S, S, 3)
    fbank, n_real = raw_fbank(waveform, cfg)
    meta = {
        "labels": sorted(set(plan.labels)),
        "duration_s": float(len(waveform) / syn.sample_rate),
        "fbank_frames": n_real,
        "synthetic": {
            "index": job.row,
            "seed": job.seed,
            "frame_times": [round(float(t), 6) for t in times],
            "mismatched": bool(plan.mismatched),
            "audio_labels": sorted(set(heard.labels)),
            "audio_source_index": int(plan.audio_source_index),
        },
    }
    return RowResult(job.row, fbank=fbank, frames=frames, meta=meta)


def prepare_synthetic(
    out: str | os.PathLike[str],
    num_clips: int,
    seed: int = 0,
    cfg: Any = None,
    workers: int = 2,
    *,
    feature_config: FeatureConfig | None = None,
    frames_per_clip: int = 10,
    progress: Progress | None = None,
    resume: bool = True,
    output: str = "mmap",
    jpeg_quality: int = 90,
    shard_bytes: int = 1_000_000_000,
) -> PrepareReport:
    """Write AV-Shapes clips ``0 .. num_clips-1`` of ``seed`` in the prepared format.

    Labels are each clip's sound-source classes (two for a mixture) with the AV-Shapes label
    set (mids ``/avs/<i>``). Each item's ``synthetic`` record keeps the clip index, seed, frame
    times, ``mismatched`` and ``audio_labels``, so that the ground truth (boxes, masks) can be
    re-rendered with ``training.synthetic.render_clip(index, seed, cfg, frame_times)``; the
    generator config is in ``manifest["extra"]["synthetic_config"]``.

    Args:
        out: Output directory.
        num_clips: Number of clips.
        seed: Dataset seed.
        cfg: ``training.synthetic.AVShapesConfig`` (its defaults when ``None``).
        workers: Rendering processes; 0 renders in this process.
        feature_config: Feature settings; default ``FeatureConfig`` with ``img_size`` and
            ``sample_rate`` taken from ``cfg``.
        frames_per_clip: 10 (official frame times) or 1 (official evaluation frame 5).
        progress: Optional ``callback(fraction_done, message)``.
        resume, output, jpeg_quality, shard_bytes: As in
            :func:`training.data.prepare.prepare_folder` (``output="shards"`` writes tar shards).

    Returns:
        A :class:`training.data.runner.PrepareReport`.

    Raises:
        ConfigError: On a bad count or mismatching sample rates.
    """
    from training.synthetic import AVShapesConfig, label_rows

    syn = cfg or AVShapesConfig()
    feat = feature_config or FeatureConfig(img_size=syn.size, sample_rate=syn.sample_rate)
    check_prepare_args(feat, frames_per_clip)
    if num_clips < 1:
        raise ConfigError(f"num_clips must be >= 1, got {num_clips}")
    if feat.sample_rate != syn.sample_rate:
        raise ConfigError(
            f"feature_config.sample_rate ({feat.sample_rate}) must equal the AV-Shapes "
            f"sample_rate ({syn.sample_rate})"
        )
    rows = label_rows(syn.num_classes)
    label_set = LabelSet(names=tuple(r[2] for r in rows), mids=tuple(r[1] for r in rows))
    out_p = Path(out)
    syn_dict = dataclasses.asdict(syn)
    plan: dict[str, Any] = {
        "kind": "synthetic",
        "source": f"AV-Shapes seed={seed}",
        "label_from": "synthetic",
        "feature_config": feat.to_dict(),
        "frames_per_clip": frames_per_clip,
        "labels": label_set.to_dict(),
        "num_rows": num_clips,
        "seed": seed,
        "synthetic_config": syn_dict,
    }
    plan["digest"] = plan_digest(plan)
    feat_dict = feat.to_dict()

    def record_of(row: int) -> dict[str, Any]:
        return {
            "row": row,
            "key": f"avs_{row:06d}",
            "path": "",
            "has_audio": True,
            "has_video": True,
            "size": 0,
            "mtime_ns": 0,
        }

    from training.data.shards import write_rows

    return write_rows(
        out_p,
        plan,
        lambda r: _SynthJob(r, seed, syn, feat_dict, frames_per_clip),
        _render_synthetic,
        record_of,
        output=output,
        label_set=label_set,
        pre_skipped=[],
        extra={"synthetic_config": syn_dict, "seed": seed},
        workers=workers,
        resume=resume,
        progress=progress,
        preload=("training.synthetic",),
        jpeg_quality=jpeg_quality,
        shard_bytes=shard_bytes,
    )
