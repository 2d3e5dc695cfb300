"""Datasets that yield CAV-MAE training samples: prepared directories and official data lists.

Both datasets return the same sample dict, assembled as the official
``AudiosetDataset.__getitem__`` does (OFFICIAL_CAVMAE.md §4.4, §4.5):

1. mixup decision, partner and lambda (training only);
2. raw log-mel fbank (T, F), padded with log-domain zeros (mixed with the partner if drawn);
3. the frame: uniformly random among the K frames in training, the middle one (official
   frame 5 of 10) in evaluation, or a fixed index; ImageNet-normalised, mixed on normalised
   pixels with the same lambda;
4. labels: multi-hot, smoothed and mixed as official;
5. SpecAugment on the raw fbank (fill 0), then normalisation ``(x - mean) / std``, then noise and
   the circular time roll.

Sample dict: ``fbank`` (T, F) float32, ``image`` (3, S, S) float32, ``label`` (C,) float32,
``index`` (position in this dataset), plus ``frames_all`` (K, 3, S, S) when
``return_all_frames`` is set (the official 10-frame ensemble evaluation; never mixed).

Randomness: every draw comes from :func:`training.augment.sample_generator` seeded with
``(seed, epoch, index)``; the epoch lives in shared memory, so :meth:`set_epoch` reaches
DataLoader workers, persistent ones included. A sample is therefore the same whatever the
worker count, the rank or a resume. Loading errors raise (never replaced by zeros; STYLE.md 23).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from cavmae.config import FeatureConfig
from cavmae.errors import ConfigError, UnreadableMedia
from cavmae.features import (
    frames_to_tensor,
    kaldi_fbank,
    normalize_fbank,
    pad_or_crop,
)
from cavmae.labels import LabelSet
from training.augment import (
    AugmentConfig,
    add_noise_and_roll,
    draw_mixup,
    mix_fbank,
    mix_images,
    sample_generator,
    smooth_labels,
    spec_augment,
)
from training.data import formats as fmt

__all__ = [
    "FrameChoice",
    "PreparedDataset",
    "OfficialJsonDataset",
    "split_dataset",
    "build_dataset",
]

logger = logging.getLogger(__name__)

FrameChoice = Literal["random", "middle"] | int


class _AVDataset(Dataset):
    """Sample assembly shared by the datasets; subclasses provide the loading hooks."""

    feature_config: FeatureConfig
    frames_per_clip: int
    label_names: list[str]
    labels_matrix: np.ndarray

    def _setup(
        self,
        *,
        train: bool,
        augment: AugmentConfig | None,
        frame: FrameChoice | None,
        seed: int,
        return_all_frames: bool,
    ) -> None:
        if augment is not None and not train and not augment.is_identity:
            raise ConfigError(
                "augmentations apply to training datasets only; pass train=True or augment=None"
            )
        self.train = train
        self.augment = augment if (augment is not None and not augment.is_identity) else None
        frame = ("random" if train else "middle") if frame is None else frame
        if isinstance(frame, bool) or not (
            frame in ("random", "middle")
            or (isinstance(frame, int) and 0 <= frame < self.frames_per_clip)
        ):
            raise ConfigError(
                f"frame must be 'random', 'middle' or an index in 0..{self.frames_per_clip - 1} "
                f"(this dataset has {self.frames_per_clip} frames per clip), got {frame!r}"
            )
        self.frame = frame
        self.seed = int(seed)
        self.return_all_frames = return_all_frames
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    # --- public -------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        """Number of classes ``C`` (0 for an unlabelled dataset)."""
        return len(self.label_names)

    @property
    def multi_label(self) -> bool:
        """True if some clip has several classes (use BCE; otherwise CE also fits)."""
        return bool((self.labels_matrix.sum(axis=1) > 1).any())

    @property
    def epoch(self) -> int:
        """The epoch that seeds the augmentations."""
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation epoch (also in running DataLoader workers)."""
        if epoch < 0:
            raise ConfigError(f"epoch must be >= 0, got {epoch}")
        self._epoch.fill_(int(epoch))

    def __len__(self) -> int:
        return int(self.labels_matrix.shape[0])

    def __getitem__(self, index: int) -> dict[str, Any]:
        i = int(index)
        if not 0 <= i < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} clips")
        cfg, aug = self.feature_config, self.augment
        g = sample_generator(self.seed, self.epoch, i) if self.train else None
        draw = draw_mixup(aug.mixup, len(self), g, aug.mixup_alpha) if aug is not None else None
        label = torch.from_numpy(self.labels_matrix[i]).to(torch.float32)  # (C,)
        image = frames_to_tensor(self._frame(i, self._pick_frame(g)), cfg)  # (3, S, S)
        if draw is None:
            fbank = self._raw_fbank(i)[0]  # (T, F) raw
        else:
            j, lam = draw
            fbank = self._mixed_raw_fbank(i, j, lam)  # (T, F) raw
            partner_image = frames_to_tensor(self._frame(j, self._pick_frame(g)), cfg)
            image = mix_images(image, partner_image, lam)  # (3, S, S)
        if aug is not None and (aug.label_smooth > 0 or draw is not None):
            partner = None if draw is None else torch.from_numpy(self.labels_matrix[draw[0]])
            label = smooth_labels(
                label, aug.label_smooth, partner=partner, lam=None if draw is None else draw[1]
            )
        if aug is not None and (aug.freqm or aug.timem):
            # Parity: masks filled with 0 before normalisation (§4.4 step 7).
            fbank = spec_augment(fbank, aug.freqm, aug.timem, g)
        fbank = normalize_fbank(fbank, cfg)  # (T, F)
        if aug is not None and aug.noise:
            fbank = add_noise_and_roll(fbank, g)
        sample: dict[str, Any] = {
            "fbank": fbank.to(torch.float32).contiguous(),
            "image": image.contiguous(),
            "label": label,
            "index": i,
        }
        if self.return_all_frames:
            sample["frames_all"] = frames_to_tensor(self._all_frames(i), cfg)  # (K, 3, S, S)
        return sample

    # --- helpers ------------------------------------------------------------------------------
    def _pick_frame(self, g: torch.Generator | None) -> int:
        if isinstance(self.frame, int):
            return self.frame
        if self.frame == "middle":
            return self.frames_per_clip // 2  # Parity: int(total_frame / 2) = frame 5 of 10
        return int(torch.randint(0, self.frames_per_clip, (), generator=g))

    def _mixed_raw_fbank(self, i: int, j: int, lam: float) -> torch.Tensor:
        """Raw fbank of sample ``i`` mixed with ``j`` (prepared data: in the mel-power domain)."""
        f1, n1 = self._raw_fbank(i)
        f2, n2 = self._raw_fbank(j)
        weighting = self.augment.mixup_weighting if self.augment is not None else "waveform"
        return mix_fbank(f1, f2, lam, len1=n1, len2=n2, weighting=weighting)

    # --- hooks --------------------------------------------------------------------------------
    def _raw_fbank(self, i: int) -> tuple[torch.Tensor, int]:
        """Raw padded fbank (T, F) float32 and its number of real frames."""
        raise NotImplementedError

    def _frame(self, i: int, k: int) -> np.ndarray:
        """Frame ``k`` of sample ``i`` as (S, S, 3) uint8 (or any size: resized later)."""
        raise NotImplementedError

    def _all_frames(self, i: int) -> np.ndarray:
        """All K frames of sample ``i``, (K, S, S, 3) uint8."""
        return np.stack([self._frame(i, k) for k in range(self.frames_per_clip)])


# --- prepared directories -----------------------------------------------------------------------


class PreparedDataset(_AVDataset):
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
        self.feature_config = _compatible(stored, feature_config, self.root)
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
        self.labels_matrix = _multi_hot([it.get("labels", []) for it in items], self.num_classes)
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

    def _all_frames(self, i: int) -> np.ndarray:
        return np.array(self._arrays()[1][self._rows[i]])  # (K, S, S, 3), a writable copy


def _compatible(stored: FeatureConfig, wanted: FeatureConfig | None, root: Path) -> FeatureConfig:
    """The feature config to use: ``wanted`` if its geometry matches what is stored."""
    if wanted is None:
        return stored
    fixed = ("sample_rate", "num_mel_bins", "frame_length_ms", "frame_shift_ms", "img_size")
    diff = [
        f"{k}: stored {getattr(stored, k)}, asked {getattr(wanted, k)}"
        for k in fixed
        if getattr(stored, k) != getattr(wanted, k)
    ]
    if diff:
        raise ConfigError(
            f"{root} was prepared with other feature settings ({'; '.join(diff)}); prepare it "
            "again with the model's feature settings"
        )
    return wanted


def _multi_hot(labels: Sequence[Sequence[int]], num_classes: int) -> np.ndarray:
    """(N, C) float32 with ones at the given class indices."""
    m = np.zeros((len(labels), num_classes), dtype=np.float32)
    for r, labs in enumerate(labels):
        for c in labs:
            if not 0 <= c < num_classes:
                raise ConfigError(f"label index {c} of item {r} is outside 0..{num_classes - 1}")
            m[r, c] = 1.0
    return m


# --- official data lists ------------------------------------------------------------------------


class OfficialJsonDataset(_AVDataset):
    """The official data-list format (OFFICIAL_CAVMAE.md §4.3): audio files plus JPEG frames.

    Each entry of ``{"data": [...]}`` has ``wav`` (audio path), ``labels`` (comma-separated mids
    of the label CSV), ``video_id`` and ``video_path``; frame ``k`` is
    ``video_path/frame_{k}/video_id.jpg`` and, as official, a missing frame falls back to the
    next lower ``k`` that exists. Audio is decoded with ``cavmae.media.decode_audio`` (first
    channel, resampled to the feature sample rate) and mixup mixes the waveforms, exactly as
    official. Deviation: the partner's frame comes from the partner's own ``video_path`` (the
    official code uses the primary's, which only matters with several frame roots).

    Args:
        json_path: The data-list JSON.
        label_csv: The official ``index,mid,display_name`` CSV.
        train, augment, frame, feature_config, seed, return_all_frames: As
            :class:`PreparedDataset` (``feature_config`` default: ``FeatureConfig()``).
        total_frames: Frames per clip on disk (official 10).
        check_files: Drop (and count in ``skipped``) entries whose audio file or every frame is
            missing, with a warning, instead of failing when they are loaded.
    """

    def __init__(
        self,
        json_path: str | os.PathLike[str],
        label_csv: str | os.PathLike[str],
        *,
        train: bool = False,
        augment: AugmentConfig | None = None,
        frame: FrameChoice | None = None,
        feature_config: FeatureConfig | None = None,
        seed: int = 0,
        return_all_frames: bool = False,
        total_frames: int = 10,
        check_files: bool = False,
    ) -> None:
        self.json_path = Path(json_path)
        self.feature_config = feature_config or FeatureConfig()
        self.frames_per_clip = int(total_frames)
        if self.frames_per_clip < 1:
            raise ConfigError(f"total_frames must be >= 1, got {total_frames}")
        self.label_set = LabelSet.from_csv(label_csv)
        self.label_names = list(self.label_set.names)
        entries = _read_data_list(self.json_path)
        self.skipped: list[tuple[str, str]] = []
        if check_files:
            entries = self._existing(entries)
        self.entries = entries
        labels: list[list[int]] = []
        for n, e in enumerate(entries):
            try:
                labels.append(
                    [
                        self.label_set.index(m.strip())
                        for m in str(e["labels"]).split(",")
                        if m.strip()
                    ]
                )
            except KeyError as err:
                raise ConfigError(
                    f"{self.json_path}, entry {n} ({e.get('video_id')}): {err.args[0]}; "
                    "use the label CSV the data list was made for"
                ) from None
        self.labels_matrix = _multi_hot(labels, self.num_classes)
        self._setup(
            train=train,
            augment=augment,
            frame=frame,
            seed=seed,
            return_all_frames=return_all_frames,
        )

    def _existing(self, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        kept = []
        for e in entries:
            if not Path(e["wav"]).is_file():
                self.skipped.append((str(e["video_id"]), f"audio file {e['wav']} not found"))
            elif _frame_path(e, self.frames_per_clip - 1) is None:
                self.skipped.append(
                    (str(e["video_id"]), f"no frame_k/{e['video_id']}.jpg under {e['video_path']}")
                )
            else:
                kept.append(e)
        if self.skipped:
            logger.warning(
                "%s: dropped %d of %d entries with missing files (first: %s)",
                self.json_path,
                len(self.skipped),
                len(entries),
                self.skipped[0][1],
            )
        return kept

    def _waveform(self, i: int) -> torch.Tensor:
        """De-meaned waveform (N,) float32 at the feature sample rate."""
        from cavmae import media

        wav = media.decode_audio(
            self.entries[i]["wav"], sample_rate=self.feature_config.sample_rate
        )
        w = torch.as_tensor(np.asarray(wav, dtype=np.float32))  # (N,)
        return w - w.mean()  # Parity: waveform - waveform.mean() (§4.4 step 2)

    def _fbank_of(self, wav: torch.Tensor) -> tuple[torch.Tensor, int]:
        cfg = self.feature_config
        fb = kaldi_fbank(
            wav, cfg.sample_rate, cfg.num_mel_bins, cfg.frame_length_ms, cfg.frame_shift_ms
        )
        n = min(int(fb.shape[0]), cfg.target_length)
        return pad_or_crop(fb, cfg.target_length), n  # (T, F)

    def _raw_fbank(self, i: int) -> tuple[torch.Tensor, int]:
        return self._fbank_of(self._waveform(i))

    def _mixed_raw_fbank(self, i: int, j: int, lam: float) -> torch.Tensor:
        # Parity: mix de-meaned waveforms; the partner is zero-padded or cut to the first's length.
        w1, w2 = self._waveform(i), self._waveform(j)
        if w2.shape[0] < w1.shape[0]:
            w2 = torch.nn.functional.pad(w2, (0, w1.shape[0] - w2.shape[0]))
        mixed = lam * w1 + (1.0 - lam) * w2[: w1.shape[0]]  # (N,)
        return self._fbank_of(mixed - mixed.mean())[0]

    def _frame(self, i: int, k: int) -> np.ndarray:
        import torchvision.transforms.functional as tvf
        from PIL import Image

        e = self.entries[i]
        path = _frame_path(e, k)
        if path is None:
            raise UnreadableMedia(
                f"no frame for {e['video_id']}: none of {e['video_path']}/frame_0..{k}/"
                f"{e['video_id']}.jpg exists; extract the frames or drop the entry (check_files=True)"
            )
        s = self.feature_config.img_size
        try:
            with Image.open(path) as img:
                img = img.convert("RGB")
                if img.size != (s, s):
                    # Parity: Resize(S, BICUBIC) + CenterCrop(S) at load time (§4.5).
                    img = tvf.center_crop(tvf.resize(img, s, tvf.InterpolationMode.BICUBIC), s)
                return np.array(img, dtype=np.uint8)  # (S, S, 3), writable
        except OSError as err:
            raise UnreadableMedia(f"cannot read frame {path}: {err}") from err


def _frame_path(entry: dict[str, Any], k: int) -> Path | None:
    """``video_path/frame_{k}/video_id.jpg``, falling back to lower ``k`` (official)."""
    for kk in range(k, -1, -1):
        p = Path(entry["video_path"]) / f"frame_{kk}" / f"{entry['video_id']}.jpg"
        if p.is_file():
            return p
    return None


def _read_data_list(path: Path) -> list[dict[str, Any]]:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"cannot read the data list {path}: {err}") from err
    data = obj.get("data") if isinstance(obj, dict) else None
    if not isinstance(data, list) or not data:
        raise ConfigError(
            f'{path} must hold {{"data": [{{wav, labels, video_id, video_path}}, ...]}}'
        )
    need = ("wav", "labels", "video_id", "video_path")
    for n, e in enumerate(data):
        missing = [k for k in need if k not in e] if isinstance(e, dict) else list(need)
        if missing:
            raise ConfigError(f"{path}, entry {n} lacks the keys {missing}")
    return data


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
) -> PreparedDataset | OfficialJsonDataset:
    """Open a dataset from a path, whatever its kind.

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
