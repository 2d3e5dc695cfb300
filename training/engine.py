"""One training epoch and one evaluation pass (MAE's ``engine_pretrain`` / ``engine_finetune``).

``train_one_epoch`` runs optimizer steps made of ``accum_steps`` micro-steps: the LR is set
per step from a pure schedule, the forward runs under ``torch.autocast`` (bf16 on GPU, or fp16
with a ``GradScaler``, nanoGPT's ``ctx``/``scaler``), DDP gradient sync is skipped on all but
the last micro-step (``no_sync``), and a non-finite loss on any rank stops the run with a
:class:`NonFiniteLoss` naming the step and every loss term. The objective (what to compute
from a batch) is injected, so pretraining and fine-tuning share the loop.

``evaluate`` averages the objective's logged terms over a loader and, for classifiers,
collects the outputs and targets of every rank (deduplicated by sample index, since
``DistributedSampler`` pads) for mAP / accuracy.
"""

from __future__ import annotations

import contextlib
import logging
import math
import resource
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch
from torch import nn

from cavmae.errors import CavmaeError
from training.distributed import DistEnv, all_gather_concat, all_reduce_max, all_reduce_mean
from training.schedules import LRSchedule, apply_lr

__all__ = [
    "NonFiniteLoss",
    "StepOutput",
    "Objective",
    "Amp",
    "EpochMeter",
    "EpochResult",
    "train_one_epoch",
    "EvalResult",
    "evaluate",
    "to_device",
    "max_memory_mb",
]

logger = logging.getLogger(__name__)


class NonFiniteLoss(CavmaeError, FloatingPointError):
    """The training loss became NaN or infinite; the run stops (it cannot recover)."""


class StepOutput(NamedTuple):
    """What an objective returns for one (micro-)batch.

    Attributes:
        loss: scalar to back-propagate.
        logs: named scalar tensors to log (detached by the engine), e.g. loss terms, c_acc.
        outputs: (B, C) logits for classification, else None.
    """

    loss: torch.Tensor
    logs: dict[str, torch.Tensor]
    outputs: torch.Tensor | None = None


class Objective(Protocol):
    """Computes the loss of one batch: ``objective(model, batch) -> StepOutput``."""

    def __call__(self, model: nn.Module, batch: Mapping[str, Any]) -> StepOutput: ...


@dataclass
class Amp:
    """Mixed-precision settings: autocast dtype (None = fp32) and an optional GradScaler."""

    device_type: str
    dtype: torch.dtype | None
    scaler: torch.amp.GradScaler | None = None

    @classmethod
    def from_name(cls, name: str, device: torch.device) -> Amp:
        """``"auto"`` (bf16 on CUDA, fp32 on CPU), ``"bf16"``, ``"fp16"`` (with GradScaler) or
        ``"fp32"``."""
        if name == "auto":
            name = "bf16" if device.type == "cuda" else "fp32"
        if name == "fp32":
            return cls(device.type, None)
        if name == "bf16":
            return cls(device.type, torch.bfloat16)
        if name == "fp16":
            # Parity: the official runs use fp16 autocast with a default GradScaler (§5.1).
            return cls(device.type, torch.float16, torch.amp.GradScaler(device.type))
        raise ValueError(f"unknown amp mode {name!r}; choose auto, bf16, fp16 or fp32")

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The autocast context (a no-op for fp32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)


def to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """Move the tensors of a batch dict to ``device`` (non-blocking; other values unchanged)."""
    nb = device.type == "cuda"
    return {k: v.to(device, non_blocking=nb) if torch.is_tensor(v) else v for k, v in batch.items()}


def max_memory_mb(device: torch.device) -> float:
    """Peak memory in MiB: CUDA allocator peak, or the process's max RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux


@dataclass
class EpochMeter:
    """Running sums of logged terms over an epoch (resumable: see :meth:`state_dict`)."""

    sums: dict[str, float] = field(default_factory=dict)
    steps: int = 0

    def update(self, values: Mapping[str, float]) -> None:
        """Add one optimizer step's (rank-averaged) values."""
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)
        self.steps += 1

    def averages(self) -> dict[str, float]:
        """Per-step averages."""
        return {k: v / self.steps for k, v in self.sums.items()} if self.steps else {}

    def state_dict(self) -> dict[str, Any]:
        """Plain dict for ``last.pt``."""
        return {"sums": dict(self.sums), "steps": self.steps}

    @classmethod
    def from_state(cls, state: Mapping[str, Any] | None) -> EpochMeter:
        """Inverse of :meth:`state_dict` (a fresh meter for None)."""
        if not state:
            return cls()
        return cls({k: float(v) for k, v in state["sums"].items()}, int(state["steps"]))


@dataclass
class EpochResult:
    """Outcome of :func:`train_one_epoch`.

    Attributes:
        averages: per-step averages of the logged terms over the epoch (all ranks).
        steps_done: optimizer steps of this epoch completed so far (``== steps_per_epoch``
            when the epoch completed).
        global_step: optimizer steps since the start of the run.
        completed: False when the epoch stopped early (``should_stop``).
    """

    averages: dict[str, float]
    steps_done: int
    global_step: int
    completed: bool


def _check_finite(
    micro_logs: list[tuple[torch.Tensor, dict[str, torch.Tensor]]],
    env: DistEnv,
    epoch: int,
    step: int,
    global_step: int,
) -> None:
    """Raise :class:`NonFiniteLoss` on every rank if any rank saw a non-finite loss."""
    bad_local = torch.stack([~torch.isfinite(loss) for loss, _ in micro_logs]).any()
    flag = all_reduce_max(bad_local.to(torch.float32).reshape(1), env)
    if flag.item() == 0:
        return
    where = f"epoch {epoch + 1}, step {step + 1} (global step {global_step + 1})"
    for i, (loss, logs) in enumerate(micro_logs):
        if not bool(torch.isfinite(loss)):
            terms = ", ".join(f"{k}={float(v):.6g}" for k, v in logs.items())
            raise NonFiniteLoss(
                f"non-finite training loss at {where}, micro-step {i + 1}, rank {env.rank}: "
                f"loss={float(loss):.6g}; terms: {terms}. Lower the learning rate, check the "
                "input data, or use --amp fp32/bf16; resume from the last checkpoint with "
                "--resume"
            )
    raise NonFiniteLoss(
        f"non-finite training loss on another rank at {where}; see that rank's error"
    )


def train_one_epoch(
    model: nn.Module,
    batches: Iterator[Mapping[str, Any]],
    optimizer: torch.optim.Optimizer,
    objective: Objective,
    *,
    env: DistEnv,
    amp: Amp,
    schedule: LRSchedule,
    epoch: int,
    steps_per_epoch: int,
    accum_steps: int = 1,
    start_step: int = 0,
    global_step: int = 0,
    clip_grad: float = 0.0,
    log_every: int = 20,
    meter: EpochMeter | None = None,
    on_log: Callable[[dict[str, Any]], None] | None = None,
    on_step: Callable[[int, int, EpochMeter], None] | None = None,
    should_stop: Callable[[int], bool] | None = None,
    progress: Any = None,
) -> EpochResult:
    """Train for (the rest of) one epoch.

    Args:
        model: the model to call (possibly DDP-wrapped), in train mode.
        batches: iterator over batch dicts; ``accum_steps`` batches make one optimizer step.
        optimizer: the optimizer (its groups' ``lr_scale`` is honoured).
        objective: computes the loss of a batch.
        env: process placement.
        amp: autocast / GradScaler settings.
        schedule: the LR schedule, evaluated before every optimizer step.
        epoch: 0-based epoch index.
        steps_per_epoch: optimizer steps in a full epoch.
        accum_steps: micro-steps per optimizer step.
        start_step: first step to run (> 0 when resuming inside the epoch).
        global_step: optimizer steps done before this call.
        clip_grad: max global gradient norm (0 = no clipping, official).
        log_every: emit a record every this many optimizer steps (and at the epoch end).
        meter: running epoch sums to continue (from a mid-epoch checkpoint), or None.
        on_log: receives each step record (rank-averaged; called on every rank).
        on_step: called after every optimizer step as ``on_step(step_done, global_step, meter)``
            (e.g. periodic checkpoints); ``step_done`` is 1-based within the epoch.
        should_stop: called with the global step after every optimizer step; True ends the
            epoch early (must return the same on every rank).
        progress: optional tqdm bar (updated by one per optimizer step).

    Returns:
        An :class:`EpochResult`.

    Raises:
        NonFiniteLoss: when a loss is NaN or infinite (on every rank).
    """
    meter = meter if meter is not None else EpochMeter()
    is_ddp = isinstance(model, nn.parallel.DistributedDataParallel)
    scaler = amp.scaler
    window: dict[str, float] = {}
    window_steps = 0
    window_samples = 0
    window_data_time = 0.0
    window_start = time.perf_counter()
    step = start_step
    completed = True
    while step < steps_per_epoch:
        lr = schedule.lr_at(epoch, step, steps_per_epoch)
        apply_lr(optimizer, lr)
        micro_logs: list[tuple[torch.Tensor, dict[str, torch.Tensor]]] = []
        for micro in range(accum_steps):
            t_data = time.perf_counter()
            try:
                batch = next(batches)
            except StopIteration as e:
                raise RuntimeError(
                    f"the data loader ran out after {step} of {steps_per_epoch} steps in epoch "
                    f"{epoch + 1}; steps_per_epoch does not match the loader length"
                ) from e
            batch = to_device(batch, env.device)
            window_data_time += time.perf_counter() - t_data
            sync = not is_ddp or micro == accum_steps - 1
            ctx = contextlib.nullcontext() if sync else model.no_sync()
            with ctx:
                with amp.autocast():
                    out = objective(model, batch)
                loss = out.loss / accum_steps
                if scaler is not None:
                    scaler.scale(loss).backward()
                else:
                    loss.backward()
            micro_logs.append((out.loss.detach(), {k: v.detach() for k, v in out.logs.items()}))
            window_samples += int(batch["fbank"].shape[0]) * env.world_size
        _check_finite(micro_logs, env, epoch, step, global_step)
        if clip_grad > 0:
            if scaler is not None:
                scaler.unscale_(optimizer)
            params = [p for g in optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, clip_grad)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        global_step += 1
        for k in micro_logs[0][1]:
            mean = torch.stack([logs[k].float() for _, logs in micro_logs]).mean()
            window[k] = window.get(k, 0.0) + mean  # type: ignore[operator]
        window_steps += 1
        if progress is not None:
            progress.update(1)
        stop = should_stop(global_step) if should_stop is not None else False
        if window_steps and (step % log_every == 0 or step == steps_per_epoch or stop):
            elapsed = time.perf_counter() - window_start
            reduced = all_reduce_mean({k: v / window_steps for k, v in window.items()}, env)
            for _ in range(window_steps):  # the epoch mean weights every step equally
                meter.update(reduced)
            record = {
                "type": "step",
                "epoch": epoch + 1,
                "step": global_step,
                "epoch_step": step,
                "steps_per_epoch": steps_per_epoch,
                "epoch_1000x": int(round((epoch + step / steps_per_epoch) * 1000)),
                "lr": lr,
                **reduced,
                "samples_per_s": window_samples / max(elapsed, 1e-9),
                "data_time": window_data_time / (window_steps * accum_steps),
                "step_time": elapsed / window_steps,
                "max_mem_mb": max_memory_mb(env.device),
                "time": time.time(),
            }
            if on_log is not None:
                on_log(record)
            if progress is not None:
                progress.set_postfix(
                    loss=f"{reduced.get('loss', float('nan')):.4f}", lr=f"{lr:.2e}"
                )
            window, window_steps, window_samples, window_data_time = {}, 0, 0, 0.0
            window_start = time.perf_counter()
        if on_step is not None:
            on_step(step, global_step, meter)
        if stop and step < steps_per_epoch:
            completed = False
            break
    return EpochResult(meter.averages(), step, global_step, completed)


@dataclass
class EvalResult:
    """Outcome of :func:`evaluate`.

    Attributes:
        averages: mean of each logged term over batches (all ranks).
        outputs: (N, C) float32 outputs of every evaluated sample (classifiers), or None.
        targets: (N, C) targets in the same order, or None.
        indices: (N,) dataset indices in the same order, or None.
    """

    averages: dict[str, float]
    outputs: np.ndarray | None = None
    targets: np.ndarray | None = None
    indices: np.ndarray | None = None


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterator[Mapping[str, Any]] | Any,
    objective: Objective,
    *,
    env: DistEnv,
    amp: Amp,
    collect: bool = False,
    progress: Any = None,
) -> EvalResult:
    """Average the objective over a loader in eval mode; optionally collect outputs.

    Every rank must see the same number of batches (use a padding ``DistributedSampler``);
    collected rows are gathered from all ranks and deduplicated by the batch's ``index``.

    Args:
        model: the bare model (not DDP-wrapped).
        batches: an iterable of batch dicts with ``fbank``, ``image``, ``label`` and ``index``.
        objective: as in training; ``outputs`` are collected when ``collect``.
        env: process placement.
        amp: autocast settings (the scaler is unused).
        collect: gather outputs, targets and indices.
        progress: optional tqdm bar updated per batch.

    Returns:
        An :class:`EvalResult` (identical on every rank).
    """
    was_training = model.training
    model.eval()
    sums: dict[str, torch.Tensor] = {}
    n_batches = 0
    outs: list[torch.Tensor] = []
    tgts: list[torch.Tensor] = []
    idxs: list[torch.Tensor] = []
    try:
        for batch in batches:
            batch = to_device(batch, env.device)
            with amp.autocast():
                out = objective(model, batch)
            for k, v in out.logs.items():
                sums[k] = sums.get(k, torch.zeros((), device=env.device)) + v.detach().float()
            n_batches += 1
            if collect and out.outputs is not None:
                outs.append(out.outputs.detach().float())
                tgts.append(batch["label"].float())
                idx = batch["index"]
                idxs.append(
                    idx.to(env.device)
                    if torch.is_tensor(idx)
                    else torch.as_tensor(idx, device=env.device)
                )
            if progress is not None:
                progress.update(1)
    finally:
        model.train(was_training)
    averages = all_reduce_mean({k: v / max(n_batches, 1) for k, v in sums.items()}, env)
    if not collect:
        return EvalResult(averages)
    if outs:
        o, t, i = torch.cat(outs), torch.cat(tgts), torch.cat(idxs).long()
    else:
        o = torch.zeros((0, 0), device=env.device)
        t, i = o.clone(), torch.zeros((0,), dtype=torch.long, device=env.device)
    o, t, i = all_gather_concat(o, env), all_gather_concat(t, env), all_gather_concat(i, env)
    i_np = i.cpu().numpy()
    _, first = np.unique(i_np, return_index=True)  # drop DistributedSampler's padding repeats
    first.sort()
    return EvalResult(
        averages,
        o.cpu().numpy()[first],
        t.cpu().numpy()[first],
        i_np[first],
    )


def nan_safe(value: float) -> float | None:
    """``value`` or None when it is not finite (for JSON records)."""
    return value if math.isfinite(value) else None
