"""Prepared-directory datasets, deterministic splits and the dataset factory.

:class:`PreparedDataset` reads what ``training.prepare`` wrote (memory-mapped raw fbanks and
frames; layout in :mod:`training.data.formats`); :class:`training.data.official.OfficialJsonDataset`
reads the official data lists. Both return the sample dict of :class:`training.data.base.AVDataset`
(``fbank`` (T, F), ``image`` (3, S, S), ``label`` (C,), ``index``, optional ``frames_all``).
:func:`build_dataset` opens either from a path; :func:`split_dataset` makes seeded,
class-stratified train/validation splits.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from cavmae.config import FeatureConfig
from cavmae.errors import ConfigError
from cavmae.features import pad_or_crop
from cavmae.labels import LabelSet
from training.augment import AugmentConfig
from training.data import formats as fmt
from training.data.base import AVDataset, FrameChoice, compatible_feature_config, multi_hot
from training.data.official import OfficialJsonDataset

__all__ = [
    "FrameChoice",
    "PreparedDataset",
    "OfficialJsonDataset",
    "split_dataset",
    "build_dataset",
]


class PreparedDataset(AVDataset):
    """A dataset written by ``training.prepare`` (memory-mapped fbanks and frames).

    Args:
        root: The prepared directory.
        split_indices: Positions (into ``items.jsonl``) that form this dataset, e.g. from
            :func:`split_dataset`; ``None`` takes every clip.
        train: Training mode: random frame, augmentations and per-epoch randomness.
        augment: Augmentations (training only); ``None`` applies none.
        frame: ``'random'``, ``'middle'`` (official evaluation frame) or a frame index;
            ``None`` picks ``'random'`` for training and ``'middle'`` otherwise.
        feature_config: Feature settings to use; ``None`` takes the stored ones. The fbank
            statistics may differ from the stored ones (the fbank is stored raw) and
            ``target_length`` too (pad or crop); the mel and image geometry must match.
        seed: Base seed of the augmentations.
        return_all_frames: Add ``frames_all`` (K, 3, S, S) to each sample.

    Attributes:
        num_classes, label_names, feature_config, labels_matrix ((N, C) float32 multi-hot),
        frames_per_clip (K), manifest, items (this dataset's ``items.jsonl`` records).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split_indices: Sequence[int] | np.ndarray | None = None,
        *,
        train: bool = False,
        augment: AugmentConfig | None = None,
        frame: FrameChoice | None = None,
        feature_config: FeatureConfig | None = None,
        seed: int = 0,
        return_all_frames: bool = False,
    ) -> None:
        self.root = Path(root)
        self.manifest = fmt.read_manifest(self.root)
        stored = FeatureConfig.from_dict(self.manifest["feature_config"])
        self.stored_feature_config = stored
        self.feature_config = compatible_feature_config(stored, feature_config, self.root)
        self.frames_per_clip = int(self.manifest["frames_per_clip"])
        items = fmt.read_items(self.root)
        if split_indices is not None:
            idx = np.asarray(split_indices, dtype=np.int64).reshape(-1)
            if idx.size and (idx.min() < 0 or idx.max() >= len(items)):
                raise ConfigError(
                    f"split indices must be in 0..{len(items) - 1} for {self.root}, got "
                    f"{int(idx.min())}..{int(idx.max())}"
                )
            items = [items[int(k)] for k in idx]
        self.items = items
        labels_path = self.root / fmt.LABELS_FILE
        label_set = LabelSet.from_csv(labels_path) if labels_path.is_file() else None
        self.label_set = label_set
        self.label_names = list(label_set.names) if label_set is not None else []
        self.labels_matrix = multi_hot([it.get("labels", []) for it in items], self.num_classes)
        self._rows = np.array([it["row"] for it in items], dtype=np.int64)
        self._fbank_frames = np.array(
            [it.get("fbank_frames", stored.target_length) for it in items], dtype=np.int64
        )
        self._fbank_mm: np.ndarray | None = None
        self._frames_mm: np.ndarray | None = None
        self._setup(
            train=train,
            augment=augment,
            frame=frame,
            seed=seed,
            return_all_frames=return_all_frames,
        )

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_fbank_mm"] = state["_frames_mm"] = None  # reopened lazily in each worker
        return state

    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if self._fbank_mm is None or self._frames_mm is None:
            self._fbank_mm = np.load(self.root / fmt.FBANK_FILE, mmap_mode="r")
            self._frames_mm = np.load(self.root / fmt.FRAMES_FILE, mmap_mode="r")
        return self._fbank_mm, self._frames_mm

    def _raw_fbank(self, i: int) -> tuple[torch.Tensor, int]:
        fb = torch.from_numpy(np.asarray(self._arrays()[0][self._rows[i]], dtype=np.float32))
        t = self.feature_config.target_length
        if fb.shape[0] != t:
            fb = pad_or_crop(fb, t)  # (T, F); raw storage keeps the official zero padding
        return fb, int(min(self._fbank_frames[i], t))

    def _frame(self, i: int, k: int) -> np.ndarray:
        return np.array(self._arrays()[1][self._rows[i], k])  # (S, S, 3), a writable copy

    def _frame_time(self, i: int, k: int) -> float:
        times = (self.items[i].get("synthetic") or {}).get("frame_times")
        if times is not None and len(times) == self.frames_per_clip:
            return float(times[k])  # rendered clips keep their exact frame times
        duration = float(self.items[i].get("duration_s") or 10.0)
        return super()._frame_time(i, k) * min(duration, 10.0) / 10.0

    def _all_frames(self, i: int) -> np.ndarray:
        return np.array(self._arrays()[1][self._rows[i]])  # (K, S, S, 3), a writable copy


# --- splits and the factory ---------------------------------------------------------------------


def split_dataset(
    n: int,
    val_fraction: float,
    seed: int = 0,
    labels: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic train/validation split of ``n`` items.

    Args:
        n: Number of items.
        val_fraction: Share of items in the validation part, in [0, 1).
        seed: Split seed (the same seed always gives the same split).
        labels: Optional (n, C) multi-hot labels: the split is then stratified by each item's
            first positive class (unlabelled items form their own group), each class giving
            about ``val_fraction`` of its items.

    Returns:
        ``(train_indices, val_indices)``: sorted int64 arrays that partition ``0..n-1``; the
        validation part has ``round(val_fraction * n)`` items (at least 1 when
        ``val_fraction > 0`` and ``n > 1``).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if n < 0:
        raise ConfigError(f"n must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    n_val = int(round(val_fraction * n))
    if val_fraction > 0 and n > 1:
        n_val = max(n_val, 1)
    if labels is None:
        order = rng.permutation(n)
    else:
        m = np.asarray(labels)
        if m.shape[0] != n:
            raise ConfigError(f"labels has {m.shape[0]} rows but n={n}")
        pos = m > 0.5  # (n, C)
        key = np.where(pos.any(axis=1), pos.argmax(axis=1), -1) if m.shape[1] else np.full(n, -1)
        # Each item's rank within its class, as a fraction of the class size, after a shuffle:
        # taking the smallest fractions gives every class its share of the validation part.
        frac = np.empty(n, dtype=np.float64)
        for c in np.unique(key):
            grp = rng.permutation(np.flatnonzero(key == c))
            frac[grp] = (np.arange(len(grp)) + 0.5) / len(grp)
        order = np.lexsort((rng.random(n), frac))  # ties broken at random
    val_idx = np.sort(order[:n_val])
    train_idx = np.setdiff1d(np.arange(n), val_idx)
    return train_idx.astype(np.int64), val_idx.astype(np.int64)


def build_dataset(
    spec: str | os.PathLike[str],
    train: bool,
    augment: AugmentConfig | None = None,
    *,
    split: Literal["all", "train", "val"] | None = None,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    label_csv: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> Any:
    """Open a dataset from a path, whatever its kind.

    * a sharded dataset (folder, shard pattern or URL; :mod:`training.data.shards`) ->
      :class:`training.data.streaming.ShardedDataset` for training (streaming),
      :class:`training.data.streaming.ShardMapDataset` otherwise (map-style, for evaluation
      loaders); a ``train``/``val`` split selects clips by uid (the other clips' bytes are
      still read while streaming, so prefer separate validation shards at scale);
    * a prepared directory (with ``manifest.json``) -> :class:`PreparedDataset`;
    * a ``.json`` data list -> :class:`OfficialJsonDataset`, with ``label_csv`` or a
      ``class_labels_indices.csv`` / ``labels.csv`` next to the JSON.

    Args:
        spec: The path.
        train: Training mode (see :class:`PreparedDataset`).
        augment: Augmentations for training.
        split: ``"train"`` / ``"val"`` take a deterministic, class-stratified part
            (:func:`split_dataset`); ``"all"`` or ``None`` take everything (e.g. for separate
            official train and eval lists).
        val_fraction: Validation share for ``split``.
        split_seed: Seed of the split.
        label_csv: Label CSV for a JSON data list.
        **kwargs: Passed to the dataset (``frame``, ``feature_config``, ``seed``,
            ``return_all_frames``, ...).

    Returns:
        The dataset.

    Raises:
        ConfigError: If the path is neither kind (a folder of videos must be prepared first).
    """
    p = Path(spec)
    if split not in (None, "all", "train", "val"):
        raise ConfigError(f"split must be 'all', 'train' or 'val', got {split!r}")
    from training.data.streaming import ShardedDataset, ShardMapDataset, ShardSource, is_shard_spec

    if is_shard_spec(spec):
        source = ShardSource(spec)
        labels = ShardMapDataset(source).labels_matrix
        indices = _split_of(len(labels), split, val_fraction, split_seed, labels)
        cls = ShardedDataset if train else ShardMapDataset
        return cls(source, indices, train=train, augment=augment, **kwargs)
    if fmt.is_prepared_dir(p):
        full = PreparedDataset(p, train=False)
        indices = _split_of(len(full), split, val_fraction, split_seed, full.labels_matrix)
        return PreparedDataset(p, indices, train=train, augment=augment, **kwargs)
    if p.is_file() and p.suffix.lower() == ".json":
        csv_path = Path(label_csv) if label_csv is not None else _find_label_csv(p)
        ds = OfficialJsonDataset(p, csv_path, train=train, augment=augment, **kwargs)
        indices = _split_of(len(ds), split, val_fraction, split_seed, ds.labels_matrix)
        if indices is not None:
            ds.entries = [ds.entries[int(k)] for k in indices]
            ds.labels_matrix = ds.labels_matrix[indices]
        return ds
    if p.is_dir():
        raise ConfigError(
            f"{p} is a folder but not a prepared dataset; prepare it first with "
            f"`python -m training.prepare {p} PREPARED_DIR`"
        )
    raise ConfigError(
        f"dataset {p} does not exist or is neither a prepared folder nor a .json data list"
    )


def _split_of(
    n: int, split: str | None, val_fraction: float, seed: int, labels: np.ndarray
) -> np.ndarray | None:
    if split in (None, "all"):
        return None
    train_idx, val_idx = split_dataset(n, val_fraction, seed, labels)
    return train_idx if split == "train" else val_idx


def _find_label_csv(json_path: Path) -> Path:
    for name in ("class_labels_indices.csv", fmt.LABELS_FILE):
        cand = json_path.parent / name
        if cand.is_file():
            return cand
    raise ConfigError(
        f"no label CSV for {json_path}: pass label_csv, or put class_labels_indices.csv next to it"
    )
