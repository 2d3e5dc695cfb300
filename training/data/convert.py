"""Converters into the sharded format (:mod:`training.data.shards`).

``mmap_to_shards`` moves a memory-mapped preparation (:mod:`training.data.formats`) over
bit-exactly for the fbank (both store the same float16 raw log-mel) and JPEG-encodes the
frames. ``official_to_shards`` reads an official data list (audio files plus
``frame_{k}/<video_id>.jpg`` folders, :class:`training.data.official.OfficialJsonDataset`),
computes the raw fbank as that dataset does (de-meaned waveform, Kaldi fbank, ``pad_or_crop``)
and re-encodes the frames at the shard quality. Both run in the shared runner (parallel
workers, resumable, a progress callback) and are one command each::

    python -m training.prepare --from-mmap PREPARED_DIR OUT_DIR
    python -m training.prepare --from-official DATA.json OUT_DIR [--label-csv CSV]
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cavmae.config import FeatureConfig
from cavmae.errors import ConfigError, MediaError
from cavmae.labels import LabelSet
from training.data.runner import PrepareReport, Progress, RowResult, plan_digest
from training.data.shards import DEFAULT_JPEG_QUALITY, DEFAULT_SHARD_BYTES, write_rows

__all__ = ["mmap_to_shards", "official_to_shards"]

_OPEN: dict[str, Any] = {}  # per worker process: datasets opened once


@dataclass
class _MmapJob:
    root: str
    index: int


def _read_mmap_row(job: _MmapJob) -> RowResult:
    from training.data.datasets import PreparedDataset

    ds = _OPEN.get(job.root)
    if ds is None:
        ds = _OPEN[job.root] = PreparedDataset(job.root)
    fbank_mm, frames_mm = ds._arrays()
    row = int(ds._rows[job.index])
    n_real = int(ds._fbank_frames[job.index])
    fbank = np.asarray(fbank_mm[row], dtype=np.float16)  # (T, F) raw, as stored
    frames = np.array(frames_mm[row])  # (K, S, S, 3)
    return RowResult(job.index, fbank=fbank, frames=frames, meta={"fbank_frames": n_real})


def mmap_to_shards(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    workers: int = 2,
    progress: Progress | None = None,
    resume: bool = True,
    jpeg_quality: int = DEFAULT_JPEG_QUALITY,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
) -> PrepareReport:
    """Convert a memory-mapped prepared dataset into shards (same clips, labels and order).

    Args:
        src: The prepared directory.
        out: Output folder of the shards.
        workers, progress, resume, jpeg_quality, shard_bytes: As
            :func:`training.data.prepare.prepare_folder`.

    Returns:
        The :class:`PrepareReport`.
    """
    from training.data.datasets import PreparedDataset

    ds = PreparedDataset(src)
    items = ds.items
    plan: dict[str, Any] = {
        "kind": "from-mmap",
        "source": str(Path(src).resolve()),
        "source_digest": ds.manifest.get("plan_digest"),
        "label_from": ds.manifest.get("label_from", "none"),
        "feature_config": ds.stored_feature_config.to_dict(),
        "frames_per_clip": ds.frames_per_clip,
        "num_rows": len(items),
    }
    plan["digest"] = plan_digest(plan)
    root = str(Path(src).resolve())

    def record_of(i: int) -> dict[str, Any]:
        rec = {k: v for k, v in items[i].items() if k not in ("row", "fbank_frames")}
        rec.setdefault("path", "")
        return rec

    return write_rows(
        Path(out),
        plan,
        lambda i: _MmapJob(root, i),
        _read_mmap_row,
        record_of,
        output="shards",
        label_set=ds.label_set,
        pre_skipped=list(ds.manifest.get("skipped", [])),
        extra=dict(ds.manifest.get("extra") or {}, converted_from=root),
        workers=workers,
        resume=resume,
        progress=progress,
        jpeg_quality=jpeg_quality,
        shard_bytes=shard_bytes,
    )


@dataclass
class _OfficialJob:
    json_path: str
    label_csv: str
    cfg: dict[str, Any]
    total_frames: int
    index: int  # entry in the data list
    row: int  # row of the plan


def _read_official(job: _OfficialJob) -> RowResult:
    from training.data.official import OfficialJsonDataset

    key = f"{job.json_path}|{job.label_csv}"
    ds = _OPEN.get(key)
    if ds is None:
        ds = _OPEN[key] = OfficialJsonDataset(
            job.json_path,
            job.label_csv,
            feature_config=FeatureConfig.from_dict(job.cfg),
            total_frames=job.total_frames,
        )
    try:
        fbank, n_real = ds._raw_fbank(job.index)  # (T, F) float32 raw
        frames = np.stack([ds._frame(job.index, k) for k in range(job.total_frames)])
    except MediaError as e:
        return RowResult(job.row, error=f"{type(e).__name__}: {e}")
    shift_s = ds.feature_config.frame_shift_ms / 1000.0
    meta = {"fbank_frames": int(n_real), "duration_s": round(float(n_real) * shift_s, 3)}
    return RowResult(job.row, fbank=fbank.numpy().astype(np.float16), frames=frames, meta=meta)


def official_to_shards(
    json_path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    label_csv: str | os.PathLike[str],
    *,
    feature_config: FeatureConfig | None = None,
    total_frames: int = 10,
    workers: int = 2,
    progress: Progress | None = None,
    resume: bool = True,
    jpeg_quality: int = DEFAULT_JPEG_QUALITY,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
) -> PrepareReport:
    """Convert an official data list (audio + extracted frames) into shards.

    Entries whose audio or frames are missing are skipped and listed in the manifest.

    Args:
        json_path: The official ``{"data": [...]}`` list.
        out: Output folder.
        label_csv: The official ``index,mid,display_name`` CSV.
        feature_config: Feature settings (default ``FeatureConfig()``).
        total_frames: Frames per clip on disk (official 10; 1 keeps frame 0 only).
        workers, progress, resume, jpeg_quality, shard_bytes: As
            :func:`training.data.prepare.prepare_folder`.

    Returns:
        The :class:`PrepareReport`.
    """
    from training.data.official import OfficialJsonDataset

    cfg = feature_config or FeatureConfig()
    if total_frames not in (1, 10):
        raise ConfigError(f"total_frames must be 10 or 1, got {total_frames}")
    ds = OfficialJsonDataset(json_path, label_csv, feature_config=cfg, total_frames=total_frames,
                             check_files=True)
    full = OfficialJsonDataset(json_path, label_csv, feature_config=cfg, total_frames=total_frames)
    entries = full.entries
    checked = {str(e["video_id"]) for e in ds.entries}
    rows = [i for i, e in enumerate(entries) if str(e["video_id"]) in checked]
    pre_skipped = [{"key": k, "path": "", "reason": r} for k, r in ds.skipped]
    labels = [sorted(int(c) for c in np.flatnonzero(full.labels_matrix[i])) for i in rows]
    plan: dict[str, Any] = {
        "kind": "from-official",
        "source": str(Path(json_path).resolve()),
        "label_from": "official",
        "feature_config": cfg.to_dict(),
        "frames_per_clip": total_frames,
        "num_rows": len(rows),
        "entries": [str(entries[i]["video_id"]) for i in rows],
    }
    plan["digest"] = plan_digest(plan)
    jp, lp = str(Path(json_path).resolve()), str(Path(label_csv).resolve())

    def record_of(r: int) -> dict[str, Any]:
        e = entries[rows[r]]
        return {"key": str(e["video_id"]), "path": str(e["wav"]), "labels": labels[r],
                "has_audio": True, "has_video": True}

    def make_job(r: int) -> _OfficialJob:
        return _OfficialJob(jp, lp, cfg.to_dict(), total_frames, rows[r], r)

    label_set = LabelSet.from_csv(label_csv)
    return write_rows(
        Path(out),
        plan,
        make_job,
        _read_official,
        record_of,
        output="shards",
        label_set=label_set,
        pre_skipped=pre_skipped,
        extra={"converted_from": jp},
        workers=workers,
        resume=resume,
        progress=progress,
        jpeg_quality=jpeg_quality,
        shard_bytes=shard_bytes,
    )
