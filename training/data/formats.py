"""The prepared-dataset format: a directory of memory-mapped arrays plus small text files.

A prepared dataset (written by :mod:`training.data.prepare`, read by
:class:`training.data.datasets.PreparedDataset`) is a directory holding:

``fbank.npy``
    ``(R, T, F)`` float16, the **raw** natural-log mel fbank of each clip (Kaldi settings of
    OFFICIAL_CAVMAE.md §4.4 step 3) after ``pad_or_crop`` to ``T`` frames, i.e. *before*
    normalisation: padding rows are exactly 0, the normalisation statistics stay changeable, and
    SpecAugment (fill 0) and mixup work in the official domain. float16 keeps ~3 significant
    digits (rounding error below 0.01 in log units, below 0.002 after normalisation).
``frames.npy``
    ``(R, K, S, S, 3)`` uint8 RGB frames: ``K = 10`` frames per clip chosen as the official
    extraction does (§4.2), or ``K = 1`` (the official evaluation frame 5) to save space.
``items.jsonl``
    One JSON object per usable clip, in dataset order: ``row`` (index into the arrays),
    ``key`` (path relative to the source folder), ``path``, ``labels`` (class indices),
    ``duration_s``, ``fbank_frames`` (real, unpadded fbank frames, at most ``T``),
    ``has_audio``, ``has_video``, ``size`` and ``mtime_ns`` of the source file; synthetic
    datasets add ``synthetic`` (the generator's index, seed and ground truth).
``labels.csv``
    The class list in the official ``index,mid,display_name`` format (absent without labels).
``manifest.json``
    ``format``, ``version``, ``complete``, ``feature_config`` (a ``FeatureConfig`` dict),
    ``frames_per_clip`` (K), ``image_size`` (S), ``target_length`` (T), ``num_mel_bins`` (F),
    ``num_rows`` (R), ``count`` (usable clips), ``num_classes``, ``label_from``, ``source``,
    ``skipped`` (``[{"key", "path", "reason"}]``), ``plan_digest``, ``extra``.

Rows of files that could not be decoded stay in the arrays (zeros) but are not listed in
``items.jsonl``: the arrays are preallocated from the file list and never rewritten, which keeps
writing resumable and crash-safe. While a preparation runs, ``_plan.json`` and
``_progress.jsonl`` record the plan and the finished rows; both are removed at the end.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from cavmae.errors import ConfigError

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "FBANK_FILE",
    "FRAMES_FILE",
    "ITEMS_FILE",
    "LABELS_FILE",
    "MANIFEST_FILE",
    "PLAN_FILE",
    "PROGRESS_FILE",
    "is_prepared_dir",
    "read_manifest",
    "read_items",
    "read_jsonl",
    "write_json_atomic",
    "write_jsonl_atomic",
]

FORMAT_NAME = "cavmae-prepared"
FORMAT_VERSION = 1

FBANK_FILE = "fbank.npy"
FRAMES_FILE = "frames.npy"
ITEMS_FILE = "items.jsonl"
LABELS_FILE = "labels.csv"
MANIFEST_FILE = "manifest.json"
PLAN_FILE = "_plan.json"
PROGRESS_FILE = "_progress.jsonl"

#: Every file a preparation may create (removed by a fresh, non-resumed run).
ALL_FILES = (
    FBANK_FILE,
    FRAMES_FILE,
    ITEMS_FILE,
    LABELS_FILE,
    MANIFEST_FILE,
    PLAN_FILE,
    PROGRESS_FILE,
)


def is_prepared_dir(path: str | os.PathLike[str]) -> bool:
    """True if ``path`` is a directory with a prepared-dataset ``manifest.json``."""
    p = Path(path)
    return p.is_dir() and (p / MANIFEST_FILE).is_file()


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to a temporary file, then ``os.replace`` it into place."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_jsonl_atomic(path: Path, records: Iterable[dict[str, Any]]) -> None:
    """Write one compact JSON object per line, atomically."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, separators=(",", ":")) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_jsonl(path: Path, *, tolerate_torn_tail: bool = False) -> Iterator[dict[str, Any]]:
    """Yield the objects of a JSON-lines file.

    Args:
        path: The file.
        tolerate_torn_tail: Ignore an unparsable *last* line (a write cut short by a crash).

    Raises:
        ConfigError: On an unparsable line (other than a tolerated last one).
    """
    with path.open("r", encoding="utf-8") as f:
        lines = f.readlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError as e:
            if tolerate_torn_tail and i == len(lines) - 1:
                return
            raise ConfigError(
                f"{path}, line {i + 1} is not valid JSON ({e}); the file is damaged"
            ) from e


def read_manifest(root: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check the manifest of a complete prepared dataset.

    Args:
        root: The prepared directory.

    Returns:
        The manifest dict.

    Raises:
        ConfigError: If the directory is not a prepared dataset, was written by another format
            version, or its preparation has not finished.
    """
    p = Path(root) / MANIFEST_FILE
    if not p.is_file() and (Path(root) / PLAN_FILE).is_file():
        raise ConfigError(
            f"the preparation of {root} has not finished; run the same prepare command again "
            "to resume it"
        )
    if not p.is_file():
        raise ConfigError(
            f"{root} is not a prepared dataset (no {MANIFEST_FILE}); create one with "
            f"`python -m training.prepare VIDEO_DIR {root}`"
        )
    try:
        m = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot read {p}: {e}") from e
    if m.get("format") != FORMAT_NAME:
        raise ConfigError(f"{p} is not a {FORMAT_NAME} manifest (format={m.get('format')!r})")
    if m.get("version") != FORMAT_VERSION:
        raise ConfigError(
            f"{root} uses prepared-format version {m.get('version')}, this code reads version "
            f"{FORMAT_VERSION}; prepare the data again"
        )
    if not m.get("complete"):
        raise ConfigError(
            f"the preparation of {root} has not finished; run the same prepare command again "
            "to resume it"
        )
    return m


def read_items(root: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The ``items.jsonl`` records of a prepared dataset, in dataset order.

    Raises:
        ConfigError: If the file is missing or damaged.
    """
    p = Path(root) / ITEMS_FILE
    if not p.is_file():
        raise ConfigError(f"{root} has no {ITEMS_FILE}; prepare the data again")
    return list(read_jsonl(p))
