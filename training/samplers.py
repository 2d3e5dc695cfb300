"""Samplers: official balanced-sampling weights and resumable distributed samplers.

Balanced sampling follows the official ``gen_weight_file.py`` and ``--bal bal`` (OFFICIAL_CAVMAE.md
§5.1 "Balanced sampling", pitfall 19): each class gets ``1000 / (count + 0.01)``, each clip the
sum over its labels, and an epoch draws ``len(dataset)`` clips with replacement. The official
``WeightedRandomSampler`` runs in one process; :class:`DistributedWeightedSampler` draws the same
kind of global sequence from a seed shared by all ranks and gives each rank every
``num_replicas``-th draw, so the ranks never overlap within an epoch.

Resume: both samplers are deterministic functions of ``(seed, epoch)``. ``state_dict(consumed)``
records the epoch and how many of this rank's samples the training loop has already used
(``step_in_epoch * batch_size``; the sampler cannot count this itself because the DataLoader
prefetches); after ``load_state_dict`` the next iteration skips exactly those, and later epochs
are whole again.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sized
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler, Sampler

from cavmae.errors import ConfigError

__all__ = [
    "balanced_weights",
    "read_weight_csv",
    "DistributedWeightedSampler",
    "ResumableDistributedSampler",
    "ClassGroupedSampler",
    "default_world",
]

#: Official numerator and count offset in ``gen_weight_file.py``.
_WEIGHT_SCALE = 1000.0
_COUNT_EPS = 0.01


def balanced_weights(labels_matrix: np.ndarray | torch.Tensor) -> np.ndarray:
    """Per-sample weights for balanced sampling, as the official ``gen_weight_file.py``.

    ``class_weight[c] = 1000 / (count[c] + 0.01)``, ``weight[i] = sum of class_weight over the
    positives of sample i``. A sample without labels gets weight 0 (never drawn).

    Args:
        labels_matrix: (N, C) multi-hot labels; entries > 0.5 count as positives (smoothed
            targets work too).

    Returns:
        float64 array (N,).
    """
    m = np.asarray(labels_matrix, dtype=np.float64)
    if m.ndim != 2:
        raise ConfigError(f"labels_matrix must be (N, C), got shape {m.shape}")
    pos = (m > 0.5).astype(np.float64)  # (N, C)
    counts = pos.sum(axis=0)  # (C,)
    class_weight = _WEIGHT_SCALE / (counts + _COUNT_EPS)  # (C,)
    return pos @ class_weight  # (N,)


def read_weight_csv(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an official ``*_weight.csv`` (one float per line, in data-list order).

    Args:
        path: The weight file published next to the official data lists (§7.4).

    Returns:
        float64 array (N,).

    Raises:
        ConfigError: If the file is missing or holds a non-number.
    """
    try:
        weights = np.loadtxt(path, delimiter=",", dtype=np.float64, ndmin=1)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read sample weights from {path}: {e}") from e
    return weights.reshape(-1)


def default_world(num_replicas: int | None = None, rank: int | None = None) -> tuple[int, int]:
    """``(num_replicas, rank)`` from the arguments, an initialised process group, or 1 and 0.

    Args:
        num_replicas: Explicit world size, or ``None``.
        rank: Explicit rank, or ``None``.

    Returns:
        The pair, validated.
    """
    initialised = dist.is_available() and dist.is_initialized()
    if num_replicas is None:
        num_replicas = dist.get_world_size() if initialised else 1
    if rank is None:
        rank = dist.get_rank() if initialised else 0
    if num_replicas < 1 or not 0 <= rank < num_replicas:
        raise ConfigError(
            f"need 0 <= rank < num_replicas, got rank={rank}, num_replicas={num_replicas}"
        )
    return num_replicas, rank


class _ResumeMixin:
    """Epoch plus an in-epoch offset that the next ``__iter__`` skips once."""

    epoch: int
    seed: int
    _skip: int = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose sequence the next iteration yields (call before each epoch)."""
        if epoch != self.epoch:
            self._skip = 0
        self.epoch = epoch

    def state_dict(self, consumed: int = 0) -> dict[str, Any]:
        """The state to resume from.

        Args:
            consumed: Samples of the current epoch that this rank's training loop has already
                used, e.g. ``steps_done_in_epoch * batch_size``.

        Returns:
            A JSON-serialisable dict ``{"epoch", "seed", "consumed"}``.
        """
        if consumed < 0:
            raise ConfigError(f"consumed must be >= 0, got {consumed}")
        return {"epoch": int(self.epoch), "seed": int(self.seed), "consumed": int(consumed)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`: the next iteration resumes inside that epoch.

        Raises:
            ConfigError: If the seed differs (the sequence would not be the same).
        """
        if int(state["seed"]) != self.seed:
            raise ConfigError(
                f"sampler state was saved with seed {state['seed']} but this sampler uses "
                f"{self.seed}; construct it with the saved seed to resume deterministically"
            )
        self.epoch = int(state["epoch"])
        self._skip = int(state.get("consumed", 0))

    def _take_skip(self, total: int) -> int:
        """The offset for this iteration (then cleared)."""
        skip, self._skip = min(self._skip, total), 0
        return skip


class DistributedWeightedSampler(_ResumeMixin, Sampler[int]):
    """Weighted sampling with replacement, split across ranks, reproducible per epoch.

    Every rank draws the same global sequence of ``num_samples`` indices from
    ``torch.multinomial(weights, replacement=True)`` seeded with ``seed + epoch`` (padded by
    wrapping to a multiple of ``num_replicas``); rank ``r`` keeps positions ``r, r + R, ...``.
    With one replica this is the official ``WeightedRandomSampler(weights, len(weights))``.

    Args:
        weights: Non-negative per-sample weights (N,), e.g. :func:`balanced_weights`.
        num_samples: Draws per epoch over all ranks; ``None`` means ``N`` (official).
        num_replicas: World size; ``None`` reads the process group (or 1).
        rank: This process's rank; ``None`` reads the process group (or 0).
        seed: Shared seed (must be the same on all ranks).
        replacement: Draw with replacement (official); without it ``num_samples <= N``.
    """

    def __init__(
        self,
        weights: np.ndarray | torch.Tensor | list[float],
        num_samples: int | None = None,
        num_replicas: int | None = None,
        rank: int | None = None,
        seed: int = 0,
        replacement: bool = True,
    ) -> None:
        w = torch.as_tensor(np.asarray(weights, dtype=np.float64))
        if w.ndim != 1 or w.numel() == 0:
            raise ConfigError(f"weights must be a non-empty 1-D array, got shape {tuple(w.shape)}")
        if not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or float(w.sum()) <= 0:
            raise ConfigError("weights must be finite, non-negative and not all zero")
        self.weights = w
        self.num_samples = int(num_samples) if num_samples is not None else int(w.numel())
        if self.num_samples < 1:
            raise ConfigError(f"num_samples must be positive, got {self.num_samples}")
        if not replacement and self.num_samples > int((w > 0).sum()):
            raise ConfigError(
                f"cannot draw {self.num_samples} samples without replacement from "
                f"{int((w > 0).sum())} items of positive weight"
            )
        self.num_replicas, self.rank = default_world(num_replicas, rank)
        self.seed = int(seed)
        self.replacement = replacement
        self.epoch = 0
        self._skip = 0
        self.per_rank = math.ceil(self.num_samples / self.num_replicas)

    def _global_sequence(self) -> torch.Tensor:
        """The epoch's draws over all ranks, (per_rank * num_replicas,) int64."""
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        idx = torch.multinomial(self.weights, self.num_samples, self.replacement, generator=g)
        pad = self.per_rank * self.num_replicas - self.num_samples
        if pad:
            idx = torch.cat([idx, idx[:pad]])  # wrap so that every rank gets per_rank items
        return idx

    def __iter__(self) -> Iterator[int]:
        mine = self._global_sequence()[self.rank :: self.num_replicas]  # (per_rank,)
        skip = self._take_skip(len(mine))
        return iter(mine[skip:].tolist())

    def __len__(self) -> int:
        return self.per_rank - min(self._skip, self.per_rank)


class ResumableDistributedSampler(_ResumeMixin, DistributedSampler):
    """``torch.utils.data.DistributedSampler`` (same order) plus mid-epoch resume.

    Works without a process group: ``num_replicas``/``rank`` default to the group's values or
    to 1 and 0. Use it for plain shuffled (not balanced) training and for sharded evaluation.

    Args:
        dataset: Anything sized (only ``len`` is used).
        num_replicas: World size; ``None`` reads the process group (or 1).
        rank: This process's rank; ``None`` reads the process group (or 0).
        shuffle: Shuffle with ``seed + epoch`` (torch's scheme).
        seed: Shared seed.
        drop_last: Drop the tail instead of padding it by repetition.
    """

    def __init__(
        self,
        dataset: Sized,
        num_replicas: int | None = None,
        rank: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        num_replicas, rank = default_world(num_replicas, rank)
        super().__init__(
            dataset,  # type: ignore[arg-type]
            num_replicas=num_replicas,
            rank=rank,
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
        )
        self._skip = 0

    def __iter__(self) -> Iterator[int]:
        mine = list(super().__iter__())
        skip = self._take_skip(len(mine))
        return iter(mine[skip:])

    def __len__(self) -> int:
        return self.num_samples - min(self._skip, self.num_samples)


class ClassGroupedSampler(_ResumeMixin, Sampler[int]):
    """Shuffled batches made of groups of ``group_size`` clips of one class (not official).

    A contrastive batch of clips from many classes can be solved by the class alone; a batch
    with several clips of each class gives every clip negatives that share its class, so only
    what tells two clips of a class apart (their instance: size, shade, timing) separates them.
    Per epoch, seeded with ``(seed, epoch)``: each class's clips are shuffled and cut into
    groups of ``group_size`` (a class's leftover clips, fewer than a group, are pooled and cut
    into mixed groups; fewer than ``group_size`` clips may be left out of an epoch), the groups
    are shuffled, and the sequence is cut into global batches of
    ``batch_size * num_replicas`` clips (a last partial batch is dropped). Rank ``r`` takes
    the ``r``-th ``batch_size`` clips of every global batch, so groups never straddle a rank's
    micro-batch when ``group_size`` divides ``batch_size``.

    Args:
        labels: The class of every clip (N,), e.g. ``labels_matrix.argmax(1)``.
        group_size: Clips of one class next to each other (>= 1; 1 is a plain shuffle).
        batch_size: Clips per rank per batch (the DataLoader's batch size); a multiple of
            ``group_size``.
        num_replicas: World size; ``None`` reads the process group (or 1).
        rank: This process's rank; ``None`` reads the process group (or 0).
        seed: Shared seed (the same on all ranks).
    """

    def __init__(
        self,
        labels: np.ndarray | list[int],
        group_size: int,
        batch_size: int,
        num_replicas: int | None = None,
        rank: int | None = None,
        seed: int = 0,
    ) -> None:
        self.labels = np.asarray(labels, dtype=np.int64)
        if self.labels.ndim != 1 or self.labels.size == 0:
            raise ConfigError(f"labels must be a non-empty 1-D array, got shape {self.labels.shape}")
        if group_size < 1 or batch_size < 1 or batch_size % group_size:
            raise ConfigError(
                f"class groups need 1 <= group_size dividing the batch size, got group_size="
                f"{group_size}, batch_size={batch_size}"
            )
        self.group_size, self.batch_size = int(group_size), int(batch_size)
        self.num_replicas, self.rank = default_world(num_replicas, rank)
        self.seed = int(seed)
        self.epoch = 0
        self._skip = 0
        # Clips in whole groups: the pooled leftovers lose (sum of n_c mod g) mod g clips,
        # whatever the shuffle, so every epoch has the same length.
        _, counts = np.unique(self.labels, return_counts=True)
        grouped = self.labels.size - int((counts % self.group_size).sum()) % self.group_size
        self.per_rank = (grouped // (self.batch_size * self.num_replicas)) * self.batch_size
        if self.per_rank < 1:
            raise ConfigError(
                f"{self.labels.size} clips make no batch of {self.batch_size} x "
                f"{self.num_replicas} process(es)"
            )

    def _global_sequence(self) -> np.ndarray:
        """The epoch's order over all ranks, (num_batches * batch_size * num_replicas,) int64."""
        rng = np.random.default_rng([self.seed, self.epoch])
        g = self.group_size
        groups: list[np.ndarray] = []
        leftovers: list[np.ndarray] = []
        for c in np.unique(self.labels):
            idx = rng.permutation(np.flatnonzero(self.labels == c))  # this class's clips, shuffled
            whole = (idx.size // g) * g
            groups.extend(idx[:whole].reshape(-1, g))  # (g,) each
            leftovers.append(idx[whole:])
        rest = rng.permutation(np.concatenate(leftovers))
        groups.extend(rest[: (rest.size // g) * g].reshape(-1, g))  # the last < g clips rest
        order = np.concatenate([groups[i] for i in rng.permutation(len(groups))])
        return order[: self.per_rank * self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        seq = self._global_sequence().reshape(-1, self.num_replicas, self.batch_size)
        mine = seq[:, self.rank].reshape(-1)  # (per_rank,)
        skip = self._take_skip(len(mine))
        return iter(mine[skip:].tolist())

    def __len__(self) -> int:
        return self.per_rank - min(self._skip, self.per_rank)
