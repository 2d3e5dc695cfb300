"""Sample assembly shared by the CAV-MAE datasets (OFFICIAL_CAVMAE.md §4.4, §4.5).

:class:`AVDataset` turns a dataset's raw parts (raw log-mel fbank, uint8 frames, multi-hot
labels) into training samples in the official order:

1. mixup decision, partner and lambda (training only);
2. raw log-mel fbank (T, F), padded with log-domain zeros (mixed with the partner if drawn);
3. the frame: uniformly random among the K frames in training, the middle one (official
   frame 5 of 10) in evaluation, or a fixed index; ImageNet-normalised, mixed on normalised
   pixels with the same lambda;
4. labels: multi-hot, smoothed and mixed as official;
5. optionally (``window_prob``, not official) the audio cut to a short window centred on the
   frame, padded as a short window of :func:`cavmae.media.iter_windows` is;
6. SpecAugment on the raw fbank (fill 0), then normalisation ``(x - mean) / std``, then noise and
   the circular time roll (no roll for a windowed sample).

Sample dict: ``fbank`` (T, F) float32, ``image`` (3, S, S) float32, ``label`` (C,) float32,
``index`` (position in this dataset), plus ``pair`` (bool), ``fbank_pair`` and ``image_pair``
with ``temporal_pair`` (the same clip at another time; zeros where ``pair`` is False), plus
``frames_all`` (K, 3, S, S) when ``return_all_frames`` is set (the official 10-frame ensemble
evaluation; never mixed).

Randomness: every draw comes from :func:`training.augment.sample_generator` seeded with
``(seed, epoch, index)``; the epoch lives in shared memory, so :meth:`AVDataset.set_epoch`
reaches DataLoader workers, persistent ones included. A sample is therefore the same whatever
the worker count, the rank or a resume. Loading errors raise (never replaced by zeros;
STYLE.md 23).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from cavmae.config import FeatureConfig
from cavmae.errors import ConfigError
from cavmae.features import frames_to_tensor, normalize_fbank
from training.augment import (
    AugmentConfig,
    add_noise_and_roll,
    audio_window,
    draw_mixup,
    mix_fbank,
    mix_images,
    sample_generator,
    smooth_labels,
    spec_augment,
)

__all__ = ["AVDataset", "FrameChoice", "compatible_feature_config", "multi_hot"]

FrameChoice = Literal["random", "middle"] | int


class AVDataset(Dataset):
    """Sample assembly shared by the datasets; subclasses provide the loading hooks.

    Subclasses set ``feature_config``, ``frames_per_clip``, ``label_names`` and
    ``labels_matrix``, implement ``_raw_fbank`` and ``_frame``, then call ``_setup``.
    """

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
        g = sample_generator(self.seed, self.epoch, self._seed_index(i)) if self.train else None
        draw = draw_mixup(aug.mixup, len(self), g, aug.mixup_alpha) if aug is not None else None
        label = torch.from_numpy(self.labels_matrix[i]).to(torch.float32)  # (C,)
        k = self._pick_frame(g)
        image = frames_to_tensor(self._frame(i, k), cfg)  # (3, S, S)
        fbank, num_real = self._raw_fbank(i)  # (T, F) raw
        if draw is not None:
            j, lam = draw
            fbank = self._mixed_raw_fbank(i, j, lam)  # (T, F) raw
            partner_image = frames_to_tensor(self._frame(j, self._pick_frame(g)), cfg)
            image = mix_images(image, partner_image, lam)  # (3, S, S)
        if aug is not None and (aug.label_smooth > 0 or draw is not None):
            partner = None if draw is None else torch.from_numpy(self.labels_matrix[draw[0]])
            label = smooth_labels(
                label, aug.label_smooth, partner=partner, lam=None if draw is None else draw[1]
            )
        windowed = aug is not None and aug.window_prob > 0 and float(torch.rand((), generator=g)) < aug.window_prob
        raw = fbank
        if windowed:
            assert aug is not None
            fbank = audio_window(raw, num_real, self._frame_time(i, k), aug.window_s, cfg)
        sample: dict[str, Any] = {
            "fbank": self._finish_fbank(fbank, windowed, g),
            "image": image.contiguous(),
            "label": label,
            "index": self._sample_index(i),
        }
        if aug is not None and aug.temporal_pair:
            k2 = self._pair_frame(i, k, aug.window_s, g) if windowed else None
            sample["pair"] = torch.tensor(k2 is not None)
            if k2 is None:  # same keys in every sample of a batch; the objective drops these
                sample["fbank_pair"] = torch.zeros_like(sample["fbank"])
                sample["image_pair"] = torch.zeros_like(sample["image"])
            else:
                pair = audio_window(raw, num_real, self._frame_time(i, k2), aug.window_s, cfg)
                sample["fbank_pair"] = self._finish_fbank(pair, True, g)
                sample["image_pair"] = frames_to_tensor(self._frame(i, k2), cfg).contiguous()
        if self.return_all_frames:
            sample["frames_all"] = frames_to_tensor(self._all_frames(i), cfg)  # (K, 3, S, S)
        return sample

    # --- helpers ------------------------------------------------------------------------------
    def _finish_fbank(self, fbank: torch.Tensor, windowed: bool, g: torch.Generator | None) -> torch.Tensor:
        """Step 6: SpecAugment, normalisation, noise and roll of a raw (T, F) fbank."""
        aug, cfg = self.augment, self.feature_config
        if aug is not None and (aug.freqm or aug.timem):
            # Parity: masks filled with 0 before normalisation (§4.4 step 7).
            fbank = spec_augment(fbank, aug.freqm, aug.timem, g)
        fbank = normalize_fbank(fbank, cfg)  # (T, F)
        if aug is not None and aug.noise:
            fbank = add_noise_and_roll(fbank, g, roll=not windowed)
        return fbank.to(torch.float32).contiguous()

    def _pair_frame(self, i: int, k: int, min_gap_s: float, g: torch.Generator | None) -> int | None:
        """A random frame of sample ``i`` at least ``min_gap_s`` from frame ``k`` (None if none)."""
        t = self._frame_time(i, k)
        far = [j for j in range(self.frames_per_clip) if abs(self._frame_time(i, j) - t) >= min_gap_s]
        if not far:
            return None
        return far[int(torch.randint(0, len(far), (), generator=g))]

    def _seed_index(self, i: int) -> int:
        """The index that seeds sample ``i``'s augmentations (streaming: its epoch position)."""
        return i

    def _sample_index(self, i: int) -> int:
        """The ``index`` reported for sample ``i`` (streaming: the clip's uid)."""
        return i

    def _pick_frame(self, g: torch.Generator | None) -> int:
        if isinstance(self.frame, int):
            return self.frame
        if self.frame == "middle":
            return self.frames_per_clip // 2  # Parity: int(total_frame / 2) = frame 5 of 10
        return int(torch.randint(0, self.frames_per_clip, (), generator=g))

    def _frame_time(self, i: int, k: int) -> float:
        """Time in seconds of frame ``k`` of sample ``i``: the official frame grid of a 10-s clip
        (frame k of K at ``k * 10 / K`` s; a single frame is the evaluation frame at 5 s)."""
        if self.frames_per_clip == 1:
            return 5.0
        return k * 10.0 / self.frames_per_clip

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


def multi_hot(labels: Sequence[Sequence[int]], num_classes: int) -> np.ndarray:
    """(N, C) float32 with ones at the given class indices."""
    m = np.zeros((len(labels), num_classes), dtype=np.float32)
    for r, labs in enumerate(labels):
        for c in labs:
            if not 0 <= c < num_classes:
                raise ConfigError(f"label index {c} of item {r} is outside 0..{num_classes - 1}")
            m[r, c] = 1.0
    return m


def compatible_feature_config(
    stored: FeatureConfig, wanted: FeatureConfig | None, root: object
) -> FeatureConfig:
    """The feature config to use: ``wanted`` if its geometry matches what is stored.

    Raises:
        ConfigError: If the mel or image geometry differs (the data must be prepared again).
    """
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
