"""Learning-rate schedules as pure functions of the (fractional) epoch.

The trainer sets the learning rate before every optimizer step from a pure function, in the
spirit of MAE's ``lr_sched.adjust_learning_rate`` and nanoGPT's ``get_lr``: the schedule has no
state of its own, so resuming needs only the epoch and the step, never a scheduler state_dict.

Two families:

- ``"multistep"``: the official per-epoch ``MultiStepLR(milestones=range(start, 1000, step),
  gamma=decay)`` stepped once after every epoch (OFFICIAL_CAVMAE.md §5.1, pitfall 18). The
  learning rate is constant inside an epoch; epoch ``e`` (1-based) runs at
  ``lr * decay ** #{m in milestones : m <= e - 1}``. No warmup, as in the official code
  (``--warmup True`` is parsed and ignored there).
- ``"cosine"``: linear warmup then half-cosine decay to ``min_lr``, evaluated per iteration.
- ``"constant"``: ``lr`` throughout (optionally after a linear warmup).

Each optimizer param group may carry an ``lr_scale`` (the fine-tuning head multiplier,
OFFICIAL_CAVMAE.md §5.1); :func:`apply_lr` multiplies it in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from cavmae.errors import ConfigError

__all__ = [
    "ScheduleKind",
    "LRSchedule",
    "multistep_lr",
    "cosine_lr",
    "apply_lr",
]

ScheduleKind = Literal["multistep", "cosine", "constant"]


def multistep_lr(epoch: int, base_lr: float, start: int, step: int, decay: float) -> float:
    """Learning rate of the official per-epoch MultiStepLR recipe.

    Args:
        epoch: 0-based index of the epoch being trained (epoch 1 of the logs is 0 here).
        base_lr: learning rate of the first epochs.
        start: first milestone (``lrscheduler_start``): epochs ``1..start`` use ``base_lr``.
        step: distance between milestones (``lrscheduler_step``).
        decay: multiplier applied at every milestone (``lrscheduler_decay``).

    Returns:
        ``base_lr * decay ** n`` where ``n`` counts the milestones ``start, start + step, ...``
        that are ``<= epoch`` (the official scheduler is stepped after each finished epoch).

    Example:
        Pretraining (start 10, step 5, decay 0.5): 0-based epochs 0-9 -> lr, 10-14 -> lr/2,
        15-19 -> lr/4, 20-24 -> lr/8.
    """
    if step < 1:
        raise ConfigError(f"lr_step must be >= 1, got {step}")
    if epoch < start:
        return base_lr
    n = (epoch - start) // step + 1
    return base_lr * decay**n


def cosine_lr(
    epoch_f: float, base_lr: float, total_epochs: float, warmup_epochs: float, min_lr: float
) -> float:
    """Linear warmup followed by a half-cosine decay, at a fractional epoch.

    Args:
        epoch_f: epochs done so far, fractional (``epoch + step / steps_per_epoch``).
        base_lr: peak learning rate, reached at the end of the warmup.
        total_epochs: length of the whole schedule.
        warmup_epochs: length of the linear warmup (0 for none).
        min_lr: final learning rate.

    Returns:
        The learning rate at ``epoch_f``.
    """
    if warmup_epochs > 0 and epoch_f < warmup_epochs:
        return base_lr * epoch_f / warmup_epochs
    span = max(total_epochs - warmup_epochs, 1e-12)
    progress = min(max((epoch_f - warmup_epochs) / span, 0.0), 1.0)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class LRSchedule:
    """A learning-rate schedule; call :meth:`lr_at` with the epoch and step.

    Attributes:
        kind: ``"multistep"`` (official), ``"cosine"`` or ``"constant"``.
        base_lr: the learning rate of the base parameter group.
        epochs: total epochs (used by ``"cosine"``).
        start: first MultiStepLR milestone (official ``lrscheduler_start``).
        step: MultiStepLR milestone spacing (official ``lrscheduler_step``).
        decay: MultiStepLR gamma (official ``lrscheduler_decay``).
        warmup_epochs: linear warmup length in (fractional) epochs, for ``"cosine"`` and
            ``"constant"``; the official recipes have none.
        min_lr: final learning rate of ``"cosine"``.
    """

    kind: ScheduleKind
    base_lr: float
    epochs: int
    start: int = 10
    step: int = 5
    decay: float = 0.5
    warmup_epochs: float = 0.0
    min_lr: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in ("multistep", "cosine", "constant"):
            raise ConfigError(
                f"unknown schedule {self.kind!r}; choose 'multistep', 'cosine' or 'constant'"
            )
        if self.base_lr <= 0:
            raise ConfigError(f"lr must be positive, got {self.base_lr}")

    def lr_at(self, epoch: int, step: int = 0, steps_per_epoch: int = 1) -> float:
        """Learning rate for optimizer step ``step`` (0-based) of 0-based ``epoch``."""
        epoch_f = epoch + step / max(steps_per_epoch, 1)
        if self.kind == "multistep":
            return multistep_lr(epoch, self.base_lr, self.start, self.step, self.decay)
        if self.kind == "cosine":
            return cosine_lr(epoch_f, self.base_lr, self.epochs, self.warmup_epochs, self.min_lr)
        if self.warmup_epochs > 0 and epoch_f < self.warmup_epochs:
            return self.base_lr * epoch_f / self.warmup_epochs
        return self.base_lr


def apply_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every param group's ``lr`` to ``lr * group.get("lr_scale", 1.0)``."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
