"""Prepare a dataset once: decode videos into memory-mapped fbanks and frames (resumable).

``prepare_folder`` walks a folder of videos, decodes each file exactly once with
:func:`cavmae.media.load_clip` in parallel worker processes, and writes the raw log-mel fbank and
``K`` frames into preallocated memory maps (format: :mod:`training.data.formats`). Labels come
from class sub-folders, from a CSV file, or are absent (pretraining). Writing, resuming and
the parallel workers are handled by :mod:`training.data.runner`; ``prepare_synthetic`` (in
:mod:`training.data.prepare_synthetic`) writes the same format from the AV-Shapes renderer.

Resume: the file list (with sizes and modification times) is fixed before any decoding;
running the same command again after an interruption decodes only the files not recorded as
finished (at most one flush batch is redone after a hard kill). Files that fail to decode (:class:`cavmae.errors.MediaError`) are
skipped and reported with their reason; any other exception stops the run (it is a bug, not a
bad file), and the run can be resumed after the fix.

Frame choice follows the official extraction (OFFICIAL_CAVMAE.md §4.2): frame ``i`` of ``K`` is
decoded at index ``int(i * total / K) - 1`` with ``total = min(frames, 10 * fps)``; ``K = 1``
keeps the official evaluation frame 5 of 10.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cavmae.config import FeatureConfig
from cavmae.errors import ConfigError, MediaError
from cavmae.labels import LabelSet
from training.data.runner import PrepareReport, Progress, RowResult, plan_digest

__all__ = [
    "VIDEO_EXTENSIONS",
    "PrepareReport",
    "prepare_folder",
    "official_frame_times",
    "read_label_mapping_csv",
    "raw_fbank",
    "check_prepare_args",
]

logger = logging.getLogger(__name__)

LabelFrom = Literal["auto", "folders", "csv", "none"]

VIDEO_EXTENSIONS: tuple[str, ...] = (
    ".mp4",
    ".m4v",
    ".mov",
    ".mkv",
    ".webm",
    ".avi",
    ".mpg",
    ".mpeg",
    ".flv",
    ".wmv",
    ".ts",
)
#: Official evaluation frame (``int(total_frame / 2)`` with 10 frames; §4.5).
_OFFICIAL_EVAL_FRAME = 5
_OFFICIAL_NUM_FRAMES = 10


# --- frame selection --------------------------------------------------------------------------


def official_frame_times(
    duration_s: float, fps: float, num_frames: int = _OFFICIAL_NUM_FRAMES
) -> np.ndarray:
    """Times of the frames the official extraction keeps (§4.2), for a clip known by duration.

    Frame ``i`` is the decoded frame at index ``max(int(i * total / K) - 1, 0)`` with
    ``total = min(round(duration * fps), int(10 * fps))`` (the off-by-one seek of the official
    script; index -1 reads the first frame). ``K = 1`` gives the official evaluation frame 5.

    Args:
        duration_s: Clip duration in seconds.
        fps: Frame rate.
        num_frames: ``K``: 10 (official) or 1.

    Returns:
        float64 times in seconds, shape (K,).
    """
    if fps <= 0 or duration_s <= 0:
        raise ConfigError(f"need positive duration and fps, got {duration_s} s at {fps} fps")
    total = min(int(round(duration_s * fps)), int(fps * 10))
    if num_frames == 1:
        picks = [_OFFICIAL_EVAL_FRAME]
        k = _OFFICIAL_NUM_FRAMES
    else:
        picks = list(range(num_frames))
        k = num_frames
    idx = np.array([max(int(i * total / k) - 1, 0) for i in picks], dtype=np.float64)
    return idx / fps


# --- planning ---------------------------------------------------------------------------------


@dataclass
class _Entry:
    """One source file to decode into one array row."""

    key: str
    path: str
    labels: list[int]
    size: int
    mtime_ns: int


def _find_videos(src: Path, extensions: Sequence[str]) -> list[Path]:
    """Video files under ``src`` (recursively), sorted by relative path."""
    exts = {e.lower() for e in extensions}
    found = [
        p
        for p in src.rglob("*")
        if p.is_file() and p.suffix.lower() in exts and not p.name.startswith(".")
    ]
    return sorted(found, key=lambda p: p.relative_to(src).as_posix())


def _split_labels(text: str) -> list[str]:
    """Labels of one CSV cell: separated by ';' (or by ',' inside a quoted cell)."""
    sep = ";" if ";" in text else ","
    return [t.strip() for t in text.split(sep) if t.strip()]


def read_label_mapping_csv(path: str | os.PathLike[str]) -> list[tuple[str, list[str]]]:
    """Read a ``file,labels`` CSV that assigns labels to source files.

    Format: a header row ``file,labels``; then one row per clip. ``file`` is a path relative to
    the source folder (or absolute); ``labels`` lists class names or mids separated by ``;``
    (a quoted cell may use ``,``, like the official data lists); it may be empty (no label).

    Args:
        path: The CSV file.

    Returns:
        ``[(file, [label, ...]), ...]`` in file order.

    Raises:
        ConfigError: On a missing file, a wrong header or a duplicate file.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except OSError as e:
        raise ConfigError(f"cannot read label CSV {p}: {e}") from e
    rows = list(csv.reader(text.splitlines()))
    if not rows or [h.strip().lower() for h in rows[0][:2]] != ["file", "labels"]:
        raise ConfigError(
            f"{p} must start with the header 'file,labels' (then e.g. 'dogs/a.mp4,dog;bark'); "
            f"got {rows[0] if rows else 'an empty file'}"
        )
    out: list[tuple[str, list[str]]] = []
    seen: set[str] = set()
    for n, row in enumerate(rows[1:], start=2):
        if not row or not row[0].strip():
            continue
        name = row[0].strip()
        if name in seen:
            raise ConfigError(f"{p}, line {n}: file {name!r} is listed twice")
        seen.add(name)
        out.append((name, _split_labels(",".join(row[1:]))))
    if not out:
        raise ConfigError(f"{p} lists no files")
    return out


def _resolve_label_set(
    names: Sequence[str], class_index: LabelSet | None, where: str
) -> tuple[LabelSet, dict[str, int]]:
    """Label set and a name/mid -> index lookup; with ``class_index`` names must exist in it."""
    if class_index is None:
        uniq = sorted(set(names))
        if not uniq:
            raise ConfigError(
                f"{where} defines no class labels; use label_from='none' for pretraining"
            )
        label_set = LabelSet(names=tuple(uniq), mids=tuple(uniq))
    else:
        label_set = class_index
    lookup = {n: i for i, n in enumerate(label_set.names)}
    lookup.update({m: i for i, m in enumerate(label_set.mids)})
    unknown = sorted(set(names) - set(lookup))
    if unknown:
        raise ConfigError(
            f"{where}: labels {unknown[:5]} are neither mids nor names in the class index "
            f"({len(label_set)} classes)"
        )
    return label_set, lookup


def _stat(p: Path) -> tuple[int, int]:
    st = p.stat()
    return int(st.st_size), int(st.st_mtime_ns)


def _plan_folder(
    src: Path,
    label_from: LabelFrom,
    labels_csv: Path | None,
    class_index: LabelSet | None,
    extensions: Sequence[str],
) -> tuple[list[_Entry], LabelSet | None, list[dict[str, str]], str]:
    """Entries to decode, the label set, files skipped before decoding, the label source."""
    if not src.is_dir():
        raise ConfigError(f"source folder {src} does not exist or is not a directory")
    if label_from == "auto":
        if labels_csv is not None:
            label_from = "csv"
        else:
            vids = _find_videos(src, extensions)
            in_sub = [v for v in vids if len(v.relative_to(src).parts) > 1]
            label_from = "folders" if vids and len(in_sub) == len(vids) else "none"
        logger.info("labels: %s (label_from='auto')", label_from)
    if label_from == "csv" and labels_csv is None:
        raise ConfigError("label_from='csv' needs labels_csv (a 'file,labels' CSV)")
    pre_skipped: list[dict[str, str]] = []
    entries: list[_Entry] = []
    label_set: LabelSet | None = None
    if label_from == "csv":
        assert labels_csv is not None
        mapping = read_label_mapping_csv(labels_csv)
        label_set, lookup = _resolve_label_set(
            [lab for _, labs in mapping for lab in labs], class_index, str(labels_csv)
        )
        for name, labs in mapping:
            p = Path(name) if Path(name).is_absolute() else src / name
            key = p.relative_to(src).as_posix() if p.is_relative_to(src) else str(p)
            if not p.is_file():
                pre_skipped.append(
                    {"key": key, "path": str(p), "reason": "listed in the label CSV but not found"}
                )
                continue
            size, mtime = _stat(p)
            entries.append(
                _Entry(key, str(p.resolve()), sorted({lookup[x] for x in labs}), size, mtime)
            )
    elif label_from in ("folders", "none"):
        vids = _find_videos(src, extensions)
        names: list[str] = []
        for v in vids:
            parts = v.relative_to(src).parts
            if label_from == "folders" and len(parts) < 2:
                pre_skipped.append(
                    {"key": parts[0], "path": str(v), "reason": "not inside a class folder"}
                )
                continue
            names.append(parts[0] if label_from == "folders" else "")
        if label_from == "folders":
            label_set, lookup = _resolve_label_set(names, class_index, f"class folders of {src}")
        kept = [v for v in vids if label_from == "none" or len(v.relative_to(src).parts) > 1]
        for v in kept:
            rel = v.relative_to(src)
            labels = [lookup[rel.parts[0]]] if label_from == "folders" else []
            size, mtime = _stat(v)
            entries.append(_Entry(rel.as_posix(), str(v.resolve()), labels, size, mtime))
    else:
        raise ConfigError(
            f"label_from must be 'auto', 'folders', 'csv' or 'none', got {label_from!r}"
        )
    if not entries:
        raise ConfigError(
            f"no video files to prepare in {src} (looked for {', '.join(extensions)}); "
            f"{len(pre_skipped)} listed files were missing or outside class folders"
        )
    return entries, label_set, pre_skipped, label_from


# --- decoding (runs in worker processes) -------------------------------------------------------


@dataclass
class _Job:
    row: int
    path: str
    cfg: dict[str, Any]
    frames_per_clip: int
    jpeg_roundtrip: bool
    timeout_s: float | None


def _decode_file(job: _Job) -> RowResult:
    """Decode one file into a raw fbank and K frames; a MediaError becomes a skip reason."""
    from cavmae import media  # imported in the worker: keeps this module light to import

    cfg = FeatureConfig.from_dict(job.cfg)
    mode = "official" if job.frames_per_clip == _OFFICIAL_NUM_FRAMES else "middle"
    try:
        clip = media.load_clip(
            job.path,
            cfg,
            num_frames=_OFFICIAL_NUM_FRAMES,
            frame_mode=mode,
            jpeg_roundtrip=job.jpeg_roundtrip,
            timeout_s=job.timeout_s,
        )
    except MediaError as e:
        return RowResult(job.row, error=f"{type(e).__name__}: {e}")
    if clip.waveform is None:
        return RowResult(job.row, error="NoAudioStream: the file has no audio stream")
    if clip.frames_uint8 is None:
        return RowResult(job.row, error="NoVideoStream: the file has no video stream")
    frames = np.asarray(clip.frames_uint8)  # (K, S, S, 3)
    if clip.info.is_image:
        frames = np.repeat(frames[:1], job.frames_per_clip, axis=0)  # a still: every frame alike
    fbank, n_real = raw_fbank(clip.waveform, cfg)
    duration = None if clip.duration_s is None else float(clip.duration_s)
    return RowResult(
        job.row, fbank=fbank, frames=frames, meta={"duration_s": duration, "fbank_frames": n_real}
    )


def raw_fbank(waveform: Any, cfg: FeatureConfig) -> tuple[np.ndarray, int]:
    """The stored form of a waveform's audio features.

    Args:
        waveform: Float samples (N,) in [-1, 1] at ``cfg.sample_rate``.
        cfg: Feature settings.

    Returns:
        ``(fbank, n)``: the Kaldi log-mel (T, F) zero-padded or cropped to ``T``, as float16,
        not normalised; and its number of real (unpadded) frames ``n <= T``.
    """
    import torch

    from cavmae.features import kaldi_fbank, pad_or_crop

    wav = torch.as_tensor(np.asarray(waveform, dtype=np.float32))  # (N,)
    fb = kaldi_fbank(
        wav, cfg.sample_rate, cfg.num_mel_bins, cfg.frame_length_ms, cfg.frame_shift_ms
    )
    n_real = min(int(fb.shape[0]), cfg.target_length)
    fb = pad_or_crop(fb, cfg.target_length)  # (T, F), zeros appended in the log domain
    return fb.numpy().astype(np.float16), n_real


def check_prepare_args(feature_config: FeatureConfig, frames_per_clip: int) -> None:
    """Raise ConfigError on an unsupported frame count or a wrong config type."""
    if frames_per_clip not in (1, _OFFICIAL_NUM_FRAMES):
        raise ConfigError(
            f"frames_per_clip must be 10 (official frame set) or 1 (official eval frame 5), "
            f"got {frames_per_clip}"
        )
    if not isinstance(feature_config, FeatureConfig):
        raise ConfigError(
            f"feature_config must be a FeatureConfig, got {type(feature_config).__name__}"
        )


# --- public entry points ----------------------------------------------------------------------


def prepare_folder(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    labels_csv: str | os.PathLike[str] | None = None,
    label_from: LabelFrom = "auto",
    class_index_csv: str | os.PathLike[str] | None = None,
    feature_config: FeatureConfig | None = None,
    frames_per_clip: int = 10,
    workers: int = 2,
    progress: Progress | None = None,
    resume: bool = True,
    extensions: Sequence[str] = VIDEO_EXTENSIONS,
    jpeg_roundtrip: bool = False,
    timeout_s: float | None = 120.0,
    output: Literal["mmap", "shards"] = "mmap",
    jpeg_quality: int = 90,
    shard_bytes: int = 1_000_000_000,
) -> PrepareReport:
    """Decode a folder of videos once into a prepared dataset.

    ``output="mmap"`` writes the memory-mapped format (:mod:`training.data.formats`),
    ``"shards"`` webdataset tar shards (:mod:`training.data.shards`; the command line's
    default).

    Args:
        src: Folder of videos, searched recursively.
        out: Output directory (created).
        labels_csv: A ``file,labels`` CSV (see :func:`read_label_mapping_csv`); implies
            ``label_from='csv'`` under ``'auto'``.
        label_from: ``'folders'`` (the first sub-folder under ``src`` is the class), ``'csv'``,
            ``'none'`` (pretraining), or ``'auto'``: csv if given, else folders when every video
            sits in a sub-folder, else none.
        class_index_csv: Optional official ``index,mid,display_name`` CSV fixing the class
            order; folder names and CSV labels are then looked up by mid or display name.
        feature_config: Feature settings (mel bins, target length, image size); default
            ``FeatureConfig()``. The normalisation statistics are recorded but not applied.
        frames_per_clip: 10 (official frame set) or 1 (official evaluation frame only).
        workers: Decoding processes; 0 decodes in this process.
        progress: Optional ``callback(fraction_done, message)`` after each file.
        resume: Continue an interrupted run in ``out`` (and return at once if it is complete);
            ``False`` deletes an earlier preparation in ``out`` and starts over.
        extensions: File suffixes taken as videos.
        jpeg_roundtrip: Pass frames through JPEG q75 as the official stored frames were
            (closer to the official training data, slightly lossy).
        timeout_s: Per-file decoding limit; a file over it is skipped (``MediaTimeout``).
        output: ``"mmap"`` or ``"shards"``.
        jpeg_quality: JPEG quality of the frames in shards.
        shard_bytes: Approximate size of one shard.

    Returns:
        A :class:`PrepareReport`.

    Raises:
        ConfigError: On a bad folder, label file or setting, when ``out`` holds another
            preparation (with ``resume=True``), or when no file at all could be decoded.
    """
    cfg = feature_config or FeatureConfig()
    check_prepare_args(cfg, frames_per_clip)
    src_p, out_p = Path(src).resolve(), Path(out)
    class_index = LabelSet.from_csv(class_index_csv) if class_index_csv is not None else None
    entries, label_set, pre_skipped, used_label_from = _plan_folder(
        src_p,
        label_from,
        Path(labels_csv) if labels_csv is not None else None,
        class_index,
        extensions,
    )
    plan: dict[str, Any] = {
        "kind": "folder",
        "source": str(src_p),
        "label_from": used_label_from,
        "feature_config": cfg.to_dict(),
        "frames_per_clip": frames_per_clip,
        "jpeg_roundtrip": jpeg_roundtrip,
        "labels": label_set.to_dict() if label_set is not None else None,
        "entries": [dataclasses.asdict(e) for e in entries],
        "pre_skipped": pre_skipped,
    }
    plan["num_rows"] = len(entries)
    plan["digest"] = plan_digest(plan)
    cfg_dict = cfg.to_dict()

    def record_of(row: int) -> dict[str, Any]:
        e = entries[row]
        return {
            "row": row,
            "key": e.key,
            "path": e.path,
            "labels": e.labels,
            "has_audio": True,
            "has_video": True,
            "size": e.size,
            "mtime_ns": e.mtime_ns,
        }

    logger.info(
        "preparing %d files from %s into %s with %d worker(s)", len(entries), src_p, out_p, workers
    )
    from training.data.shards import write_rows

    return write_rows(
        out_p,
        plan,
        lambda r: _Job(r, entries[r].path, cfg_dict, frames_per_clip, jpeg_roundtrip, timeout_s),
        _decode_file,
        record_of,
        output=output,
        label_set=label_set,
        pre_skipped=pre_skipped,
        extra={},
        workers=workers,
        resume=resume,
        progress=progress,
        preload=("cavmae.media.clip",),
        jpeg_quality=jpeg_quality,
        shard_bytes=shard_bytes,
    )
