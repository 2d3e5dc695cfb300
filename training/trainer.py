"""The epoch loop shared by pretraining and fine-tuning: data loading, DDP, resume, outputs.

:class:`Trainer` owns what both entry points have in common (MAE's ``main_pretrain`` body):
samplers and loaders, the optimizer and LR schedule, DDP wrapping, resuming from ``last.pt``,
the epoch loop around :func:`training.engine.train_one_epoch`, evaluation scheduling,
checkpoints, ``metrics.jsonl``, TensorBoard and ``status.json``. The entry points
(``training.pretrain``, ``training.finetune``) build the model, the datasets and the objective
and hand them over.

Determinism. Every randomness source is a function of the seed, the epoch and the rank:
the samplers are ``(seed, epoch)``-seeded, the augmentations are seeded per sample by the
datasets, the loader's worker seeds come from a generator re-seeded every epoch, and the
model's masking uses the global torch RNG seeded with ``seed + rank``. ``last.pt`` stores the
RNG states of every rank, so a resumed run continues exactly where the killed one stopped,
at an epoch boundary or (with ``save_every_steps``) inside an epoch.

Unused parameters. CAV-MAE has parameters that a given objective never touches (the
``_a``/``_v`` LayerNorms of the modality-specific blocks, the visual branch in audio-only
fine-tuning, ...). The entry points freeze exactly those (``requires_grad_(False)``: the
models' ``unused_parameter_names`` for the objective, checked by one probing backward pass on a
zero batch) before the optimizer and DDP are built, so DDP runs with
``find_unused_parameters=False`` (no extra graph traversal per step) and the key set of the
saved model is unchanged. The 2-process test in ``tests/test_distributed.py`` fails if any
trainable parameter goes without a gradient.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset

from cavmae.errors import CavmaeError, ConfigError
from training.checkpointing import (
    STATE_FORMAT,
    atomic_save,
    capture_rng_state,
    epoch_model_path,
    load_training_state,
    restore_rng_state,
)
from training.config import TrainConfig, parse_cli, resolve_augment_config
from training.distributed import (
    DistEnv,
    all_reduce_max,
    all_reduce_mean,
    barrier,
    cleanup_distributed,
    gather_objects,
    init_distributed,
)
from training.engine import Amp, EpochMeter, Objective, train_one_epoch
from training.optim import build_optimizer
from training.rundir import RunContext, StopFlag, run_logging
from training.schedules import LRSchedule

__all__ = [
    "Trainer",
    "FitResult",
    "RunResult",
    "build_datasets",
    "RunContext",
    "run_logging",
    "run_main",
    "run_cli",
]

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------- data


def build_datasets(cfg: TrainConfig, augment: Any) -> tuple[Dataset, Dataset | None]:
    """The training (augmented) and validation datasets of ``cfg``.

    ``val_data`` names a separate validation set (e.g. the official eval list); otherwise a
    class-stratified ``val_fraction`` of ``data`` is held out (seeded by ``split_seed``) and
    the training set is the rest. ``val_fraction = 0`` without ``val_data`` means no
    validation.

    Raises:
        ConfigError: when ``cfg.data`` is empty or not a dataset.
    """
    if not cfg.data:
        raise ConfigError(
            "no training data: pass --data (a prepared dataset directory or an "
            "official data-list JSON)"
        )
    from training.data import build_dataset

    hold_out = not cfg.val_data and cfg.val_fraction > 0
    common: dict[str, Any] = dict(
        val_fraction=cfg.val_fraction or 0.1,
        split_seed=cfg.split_seed,
        label_csv=cfg.label_csv or None,
        seed=cfg.seed,
    )
    train_set = build_dataset(
        cfg.data, True, augment, split="train" if hold_out else None, **common
    )
    val_set = None
    if cfg.val_data:
        val_set = build_dataset(cfg.val_data, False, None, split=None, **common)
    elif hold_out:
        val_set = build_dataset(cfg.data, False, None, split="val", **common)
    logger.info(
        "data: %d training clips, %s validation clips",
        len(train_set),
        len(val_set) if val_set is not None else "no",
    )
    return train_set, val_set


# ---------------------------------------------------------------------- run directory


# ---------------------------------------------------------------------- trainer


@dataclass
class FitResult:
    """Outcome of :meth:`Trainer.fit`.

    Attributes:
        completed: all epochs ran (False when stopped by ``max_steps`` or a signal).
        epochs_done: completed epochs.
        global_step: optimizer steps done.
        history: the per-epoch records written to ``metrics.jsonl``.
        best: ``{"epoch", "value", "metric"}`` of the best evaluated epoch, or None.
    """

    completed: bool
    epochs_done: int
    global_step: int
    history: list[dict[str, Any]]
    best: dict[str, Any] | None


@dataclass
class RunResult:
    """What ``training.pretrain.train`` / ``training.finetune.train`` return.

    Attributes:
        path: ``<out_dir>/model.safetensors`` (written by rank 0), or None when the run stopped
            early (resume it with ``--resume auto``).
        model: the bare trained model (on every rank; after weight averaging for fine-tuning).
        fit: the epoch loop's :class:`FitResult`.
        metrics: final evaluation metrics (fine-tuning), else the last epoch record.
    """

    path: Path | None
    model: nn.Module
    fit: FitResult
    metrics: dict[str, Any] = field(default_factory=dict)


def _collate_check(dataset: Dataset) -> Callable[..., Any] | None:
    """The dataset's own collate function, if it defines one (e.g. batch-level mixup)."""
    fn = getattr(dataset, "collate_fn", None)
    return fn if callable(fn) else None


class Trainer:
    """Runs the epochs of one training run.

    Args:
        cfg: the resolved configuration.
        env: process placement.
        run: the run directory context.
        model: the bare model on ``env.device``, with unused parameters already frozen.
        train_set: the training dataset.
        objective: computes the training loss of a batch.
        evaluate_fn: ``evaluate_fn(bare_model, epoch) -> dict`` of validation metrics
            (already reduced over ranks), or None to skip evaluation.
        export_model: ``export_model(bare_model, path, meta)`` writes a model file in our
            format (closes over features, labels, mode).
        head_lr_ratio: head LR multiplier (fine-tuning), or None.
        select: ``(metric name, "min" | "max")`` defining the best epoch, e.g.
            ``("val_loss", "min")``.
        sampler_factory: ``sampler_factory(dataset, env, seed)`` for training, or None for a
            shuffling ``ResumableDistributedSampler`` (drop_last).
        accum_steps: micro-steps per optimizer step (defaults to ``cfg.accum_steps``).
        wa_epochs: 1-based epochs whose model files must be kept for weight averaging.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        env: DistEnv,
        run: RunContext,
        model: nn.Module,
        train_set: Dataset,
        objective: Objective,
        *,
        evaluate_fn: Callable[[nn.Module, int], dict[str, float]] | None,
        export_model: Callable[[nn.Module, Path, dict[str, Any]], Any],
        head_lr_ratio: float | None = None,
        select: tuple[str, str] = ("val_loss", "min"),
        sampler_factory: Callable[[Dataset, DistEnv, int], Any] | None = None,
        accum_steps: int | None = None,
        wa_epochs: range | None = None,
    ) -> None:
        self.cfg = cfg
        self.env = env
        self.run = run
        self.model = model
        self.train_set = train_set
        self.objective = objective
        self.evaluate_fn = evaluate_fn
        self.export_model = export_model
        self.select = select
        self.wa_epochs = wa_epochs or range(0)
        self.accum = accum_steps or cfg.accum_steps
        self.micro = cfg.batch_size // (env.world_size * self.accum)
        if self.micro * env.world_size * self.accum != cfg.batch_size:
            raise ConfigError(
                f"batch_size {cfg.batch_size} does not split over {env.world_size} process(es) "
                f"x {self.accum} micro-step(s)"
            )
        streaming = isinstance(train_set, IterableDataset)
        if streaming:
            # A streaming dataset splits itself over ranks and workers and resumes itself
            # (training.data.streaming); it stands in for the sampler.
            train_set.set_batch_size(self.micro)  # type: ignore[attr-defined]
            if sampler_factory is not None:
                sampler_factory(train_set, env, cfg.seed)
            self.sampler = train_set
        elif sampler_factory is None:
            from training.samplers import ResumableDistributedSampler

            self.sampler = ResumableDistributedSampler(
                train_set,
                num_replicas=env.world_size,
                rank=env.rank,
                shuffle=True,
                seed=cfg.seed,
                drop_last=True,
            )
        else:
            self.sampler = sampler_factory(train_set, env, cfg.seed)
        self.samples_per_epoch = len(self.sampler)  # per rank, before any resume offset
        self.steps_per_epoch = self.samples_per_epoch // (self.micro * self.accum)
        if self.steps_per_epoch < 1:
            raise ConfigError(
                f"the training set gives {self.samples_per_epoch} clip(s) per process, fewer "
                f"than one optimizer step needs ({self.micro} x {self.accum}); use a smaller "
                "batch_size or more data"
            )
        self.loader_gen = torch.Generator()
        self.loader = DataLoader(
            train_set,
            batch_size=self.micro,
            sampler=None if streaming else self.sampler,
            num_workers=cfg.num_workers,
            pin_memory=cfg.pin_memory and env.device.type == "cuda",
            drop_last=True,
            persistent_workers=False,  # fresh workers per epoch: exact resume
            generator=self.loader_gen,
            collate_fn=_collate_check(train_set),
        )
        fused = cfg.fused_optimizer and env.device.type == "cuda"
        self.optimizer = build_optimizer(
            model,
            name=cfg.optimizer,
            lr=cfg.lr,
            betas=cfg.betas,
            weight_decay=cfg.weight_decay,
            eps=cfg.eps,
            head_lr_ratio=head_lr_ratio,
            fused=fused,
        )
        self.amp = Amp.from_name(cfg.amp, env.device)
        self.schedule = LRSchedule(
            cfg.schedule,
            cfg.lr,
            cfg.epochs,
            cfg.lr_start,
            cfg.lr_step,
            cfg.lr_decay,
            cfg.warmup_epochs,
            cfg.min_lr,
        )
        self.start_epoch = 0
        self.start_step = 0
        self.global_step = 0
        self.meter = EpochMeter()
        self.best: dict[str, Any] | None = None
        self.history: list[dict[str, Any]] = []
        self.stop_flag = StopFlag()

    # ------------------------------------------------------------------ resume
    def resume_path(self) -> Path | None:
        """The ``last.pt`` to resume from, per ``cfg.resume``."""
        if not self.cfg.resume:
            return None
        if self.cfg.resume == "auto":
            p = self.run.run_dir / "last.pt"
            return p if p.is_file() else None
        return Path(self.cfg.resume).expanduser()

    def load_state(self, path: Path) -> None:
        """Restore model, optimizer, scaler, position, meters and this rank's RNG state."""
        state = load_training_state(path)
        if state.get("kind") != self.cfg.kind:
            raise ConfigError(
                f"{path} is a {state.get('kind')} state; this is a {self.cfg.kind} run"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.amp.scaler is not None and state.get("scaler"):
            self.amp.scaler.load_state_dict(state["scaler"])
        self.start_epoch = int(state["epoch"])
        self.start_step = int(state["step_in_epoch"])
        self.global_step = int(state["global_step"])
        self.meter = EpochMeter.from_state(state.get("meter"))
        self.best = state.get("best")
        self.history = list(state.get("history", []))
        self.run.trim_metrics(self.global_step, self.start_epoch)
        if int(state.get("steps_per_epoch", self.steps_per_epoch)) != self.steps_per_epoch:
            logger.warning(
                "steps per epoch changed from %s to %d (batch size, world size or data "
                "changed); the schedule continues from epoch %d",
                state.get("steps_per_epoch"),
                self.steps_per_epoch,
                self.start_epoch + 1,
            )
            self.start_step = 0
        rng = state.get("rng") or []
        if len(rng) == self.env.world_size:
            restore_rng_state(rng[self.env.rank], self.env.device)
        else:
            logger.warning(
                "the checkpoint was written by %d process(es), this run has %d: RNG streams "
                "are re-seeded, so the continuation is not bit-identical",
                len(rng),
                self.env.world_size,
            )
            torch.manual_seed(self.cfg.seed + 1000 * self.start_epoch + self.env.rank)
        logger.info(
            "resumed from %s at epoch %d, step %d (global step %d)",
            path,
            self.start_epoch + 1,
            self.start_step,
            self.global_step,
        )

    def save_state(self, epoch: int, step_in_epoch: int, meter: EpochMeter) -> None:
        """Write ``last.pt`` (rank 0) with every rank's RNG state; all ranks must call it."""
        rng = gather_objects(capture_rng_state(self.env.device), self.env)
        if self.env.is_main:
            state = {
                "format": STATE_FORMAT,
                "kind": self.cfg.kind,
                "epoch": epoch,
                "step_in_epoch": step_in_epoch,
                "global_step": self.global_step,
                "steps_per_epoch": self.steps_per_epoch,
                "world_size": self.env.world_size,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.amp.scaler.state_dict() if self.amp.scaler is not None else {},
                "meter": meter.state_dict(),
                # this rank's position; every rank's is implied (same epoch and step)
                "sampler": self.sampler.state_dict(step_in_epoch * self.accum * self.micro),
                "best": self.best,
                "history": self.history,
                "rng": rng,
                "config": self.cfg.to_dict(),
            }
            atomic_save(state, self.run.run_dir / "last.pt")
        barrier(self.env)

    # ------------------------------------------------------------------ helpers
    def _wrap(self) -> nn.Module:
        model: nn.Module = self.model
        if self.cfg.compile:
            model = torch.compile(model)  # type: ignore[assignment]
        if self.env.is_distributed:
            ids = [self.env.device.index] if self.env.device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(
                model, device_ids=ids, find_unused_parameters=False
            )
        return model

    def _should_stop(self, global_step: int) -> bool:
        local = self.stop_flag.requested or (
            self.cfg.max_steps > 0 and global_step >= self.cfg.max_steps
        )
        if not self.env.is_distributed:
            return local
        flag = torch.tensor([1.0 if self.stop_flag.requested else 0.0], device=self.env.device)
        return bool(all_reduce_max(flag, self.env).item()) or local

    def _progress_bar(self, epoch: int) -> Any:
        if not (self.env.is_main and self.cfg.progress and sys.stderr.isatty()):
            return None
        from tqdm.auto import tqdm

        return tqdm(
            total=self.steps_per_epoch,
            initial=self.start_step,
            desc=f"epoch {epoch + 1}/{self.cfg.epochs}",
            leave=False,
            dynamic_ncols=True,
        )

    def _save_epoch_model(self, epoch: int, record: dict[str, Any]) -> None:
        e = epoch + 1
        keep = (
            (self.cfg.save_every and e % self.cfg.save_every == 0)
            or e in self.wa_epochs
            or e == self.cfg.epochs
        )
        if keep and self.env.is_main:
            meta = {
                "provenance": {"run": str(self.run.run_dir), "epoch": e},
                "metrics": {
                    k: v for k, v in record.items() if isinstance(v, float) and math.isfinite(v)
                },
            }
            path = epoch_model_path(self.run.run_dir, e)
            path.parent.mkdir(parents=True, exist_ok=True)
            self.export_model(self.model, path, meta)

    def _update_best(self, record: dict[str, Any]) -> None:
        name, mode = self.select
        value = record.get(name)
        if not isinstance(value, float) or not math.isfinite(value):
            return
        better = (
            self.best is None
            or (mode == "min" and value < self.best["value"])
            or (mode == "max" and value > self.best["value"])
        )
        if better:
            self.best = {"epoch": record["epoch"], "value": value, "metric": name}

    def log_plan(self) -> None:
        """Log the derived values once (MAE's effective batch / absolute LR lines)."""
        cfg, env = self.cfg, self.env
        n_train = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        n_all = sum(p.numel() for p in self.model.parameters())
        logger.info(
            "%s on %s x%d (%s), amp=%s: global batch %d = %d process(es) x %d micro-step(s) x "
            "%d clip(s); %d optimizer steps/epoch x %d epochs = %d steps; lr %.3g (%s)",
            cfg.kind,
            env.device.type,
            env.world_size,
            env.backend or "single process",
            self.amp.dtype or "fp32",
            cfg.batch_size,
            env.world_size,
            self.accum,
            self.micro,
            self.steps_per_epoch,
            cfg.epochs,
            self.steps_per_epoch * cfg.epochs,
            cfg.lr,
            cfg.schedule,
        )
        logger.info("parameters: %.2fM trainable of %.2fM", n_train / 1e6, n_all / 1e6)

    # ------------------------------------------------------------------ loop
    def fit(self) -> FitResult:
        """Train from the start or the resume point to the last epoch (or a stop)."""
        cfg, env = self.cfg, self.env
        path = self.resume_path()
        found = gather_objects(path is not None, env)
        if any(found) and not all(found):
            raise ConfigError(
                f"{self.run.run_dir / 'last.pt'} is visible to rank(s) "
                f"{[r for r, f in enumerate(found) if f]} but not to rank(s) "
                f"{[r for r, f in enumerate(found) if not f]}: on several machines --out must "
                "be a folder shared by all of them (or copy the run folder to each)"
            )
        if path is not None:
            self.load_state(path)
        self.log_plan()
        total_steps = self.steps_per_epoch * cfg.epochs
        self.run.status(
            "running",
            epoch=self.start_epoch,
            total_epochs=cfg.epochs,
            global_step=self.global_step,
            total_steps=total_steps,
            steps_per_epoch=self.steps_per_epoch,
            world_size=env.world_size,
            message="",
        )
        wrapped = self._wrap()
        wrapped.train()

        def on_log(rec: dict[str, Any]) -> None:
            self.run.record(rec)
            self.run.status("running", global_step=rec["step"])

        epoch = self.start_epoch
        with self.stop_flag:
            while epoch < cfg.epochs:
                if self._should_stop(self.global_step):
                    reason = "stop signal" if self.stop_flag.requested else "max_steps reached"
                    return self._stopped(epoch, 0, EpochMeter(), reason)
                self.sampler.set_epoch(epoch)
                if hasattr(self.train_set, "set_epoch"):
                    self.train_set.set_epoch(epoch)
                if self.start_step:  # resume inside the epoch: skip what was consumed
                    consumed = self.start_step * self.accum * self.micro
                    self.sampler.load_state_dict(
                        {"epoch": epoch, "seed": cfg.seed, "consumed": consumed}
                    )
                self.loader_gen.manual_seed(cfg.seed * 100_003 + epoch * 101 + env.rank)
                batches = iter(self.loader)

                def on_step(step: int, gstep: int, meter: EpochMeter, epoch: int = epoch) -> None:
                    self.global_step = gstep
                    if (
                        cfg.save_every_steps
                        and gstep % cfg.save_every_steps == 0
                        and step < self.steps_per_epoch
                    ):
                        self.save_state(epoch, step, meter)

                bar = self._progress_bar(epoch)
                t0 = time.time()
                try:
                    res = train_one_epoch(
                        wrapped,
                        batches,
                        self.optimizer,
                        self.objective,
                        env=env,
                        amp=self.amp,
                        schedule=self.schedule,
                        epoch=epoch,
                        steps_per_epoch=self.steps_per_epoch,
                        accum_steps=self.accum,
                        start_step=self.start_step,
                        global_step=self.global_step,
                        clip_grad=cfg.clip_grad,
                        log_every=cfg.log_every,
                        meter=self.meter,
                        on_log=on_log,
                        on_step=on_step,
                        should_stop=self._should_stop,
                        progress=bar,
                    )
                finally:
                    del batches
                    if bar is not None:
                        bar.close()
                self.global_step = res.global_step
                if not res.completed:
                    reason = "stop signal" if self.stop_flag.requested else "max_steps reached"
                    return self._stopped(epoch, res.steps_done, self.meter, reason)
                self._end_epoch(epoch, res.averages, time.time() - t0)
                epoch += 1
                self.start_step = 0
                self.meter = EpochMeter()
        self.run.status("running", epoch=cfg.epochs, message="training done; exporting")
        return FitResult(True, cfg.epochs, self.global_step, self.history, self.best)

    def _end_epoch(self, epoch: int, train_avg: dict[str, float], seconds: float) -> None:
        cfg = self.cfg
        record: dict[str, Any] = {
            "type": "epoch",
            "epoch": epoch + 1,
            "step": self.global_step,
            "lr": self.schedule.lr_at(epoch, self.steps_per_epoch - 1, self.steps_per_epoch),
        }
        record.update({f"train_{k}": v for k, v in train_avg.items()})
        record.update(self._data_report(epoch))
        last = epoch + 1 == cfg.epochs
        if self.evaluate_fn is not None and ((epoch + 1) % cfg.eval_every == 0 or last):
            t_eval = time.time()
            record.update(self.evaluate_fn(self.model, epoch))
            record["eval_seconds"] = time.time() - t_eval
        record["epoch_seconds"] = seconds
        record["time"] = time.time()
        self._update_best(record)
        self.history.append(record)
        self._save_epoch_model(epoch, record)
        self.save_state(epoch + 1, 0, EpochMeter())
        self.run.record(record)
        self.run.status("running", epoch=epoch + 1, global_step=self.global_step, best=self.best)
        summary = ", ".join(
            f"{k}={v:.4g}" for k, v in record.items() if isinstance(v, float) and k not in ("time",)
        )
        logger.info("epoch %d/%d done in %.0fs: %s", epoch + 1, cfg.epochs, seconds, summary)

    def _data_report(self, epoch: int) -> dict[str, Any]:
        """A streaming dataset's bad shards and replaced samples this epoch (all ranks)."""
        report = getattr(self.train_set, "epoch_report", None)
        if report is None:
            return {}
        counts = report()
        mean = all_reduce_mean(
            {"bad": counts["bad_shards"], "replaced": counts["replaced_samples"]}, self.env
        )
        n = self.env.world_size
        bad, replaced = round(mean["bad"] * n), round(mean["replaced"] * n)
        if bad or replaced:
            logger.warning(
                "epoch %d: %d unreadable shard(s), %d sample(s) replaced by repeats (see the "
                "warnings naming the shards)", epoch + 1, bad, replaced,
            )
        return {"data_bad_shards": bad, "data_replaced_samples": replaced}

    def _stopped(self, epoch: int, step: int, meter: EpochMeter, reason: str) -> FitResult:
        self.save_state(epoch, step, meter)
        msg = f"{reason} at epoch {epoch + 1}, step {step}; continue with --resume auto"
        self.run.status("stopped", epoch=epoch, global_step=self.global_step, message=msg)
        logger.info(msg)
        return FitResult(False, epoch, self.global_step, self.history, self.best)


# ---------------------------------------------------------------------- entry points

TrainFn = Callable[[Any, DistEnv, Dataset, "Dataset | None"], "RunResult"]


def run_main(cfg: TrainConfig, train_fn: TrainFn) -> RunResult:
    """Runs ``train_fn`` as configured: one process, or one torchrun rank.

    Sets up the process group (when launched by torchrun), the run directory's logging and
    the datasets, and always tears the process group down.
    """
    env = init_distributed(cfg.device)
    try:
        with run_logging(env, Path(cfg.out_dir) if cfg.out_dir else None):
            train_set, val_set = build_datasets(cfg, resolve_augment_config(cfg))
            return train_fn(cfg, env, train_set, val_set)
    finally:
        cleanup_distributed(env)


def run_cli(
    config_cls: type[TrainConfig],
    main_fn: Callable[[Any], RunResult],
    argv: list[str] | None = None,
) -> int:
    """Command-line entry shared by ``training.pretrain`` and ``training.finetune``.

    Parses recipe and overrides (``--print-config`` prints the resolved config), runs, and
    turns a library error into one line on stderr and exit code 2.
    """
    try:
        cfg, print_only = parse_cli(config_cls, argv)
        if print_only:
            import json

            sys.stdout.write(json.dumps(cfg.to_dict(), indent=2) + "\n")
            return 0
        main_fn(cfg)
    except CavmaeError as e:
        sys.stderr.write(f"error: {e}\n")
        return 2
    return 0
