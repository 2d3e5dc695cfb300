"""A training run's directory and process plumbing: logging, stop signals, writers.

:class:`RunContext` owns what rank 0 writes into the run directory (``config.json``,
``metrics.jsonl``, TensorBoard events, ``status.json``; see :mod:`training.runs` for the
layout and the readers). :func:`run_logging` routes the ``logging`` records of a run to stderr
(rank 0 everything, other ranks warnings, via :class:`training.distributed.RankFilter`) and to
``train.log``. :class:`StopFlag` turns SIGTERM/SIGINT into a graceful, resumable stop.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cavmae.errors import ConfigError
from training import runs
from training.checkpointing import atomic_write_text
from training.config import TrainConfig
from training.distributed import DistEnv, RankFilter, barrier
from training.metrics import JsonlWriter

__all__ = ["RunContext", "run_logging", "StopFlag"]

logger = logging.getLogger(__name__)

_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@contextmanager
def run_logging(env: DistEnv, run_dir: Path | None, level: int = logging.INFO) -> Iterator[None]:
    """Route the root logger to stderr (rank 0 all, others warnings) and ``train.log``.

    The stderr handler is only added when the caller has not configured logging already
    (``logging.basicConfig``, pytest), so records are not printed twice. The handlers are
    removed again on exit, so ``main()`` can run several times in one process (tests, the app).
    """
    root = logging.getLogger()
    old_level = root.level
    handlers: list[logging.Handler] = []
    if not root.handlers:
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(logging.Formatter(_LOG_FORMAT, "%H:%M:%S"))
        stream.addFilter(RankFilter(env.rank))
        handlers.append(stream)
    if run_dir is not None and env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(run_dir / "train.log", encoding="utf-8")
        fh.setFormatter(logging.Formatter(_LOG_FORMAT))
        handlers.append(fh)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(min(level, old_level) if old_level else level)
    try:
        yield
    finally:
        for h in handlers:
            root.removeHandler(h)
            h.close()
        root.setLevel(old_level)


class StopFlag:
    """Set by SIGTERM/SIGINT (the app's Stop button terminates the process group): the trainer
    finishes the current step, writes ``last.pt`` and exits with status ``stopped``."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        logger.warning("signal %d: stopping after the current step (again to abort)", signum)
        self.requested = True

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()


@dataclass
class RunContext:
    """The run directory and its writers (active on rank 0 only)."""

    cfg: TrainConfig
    env: DistEnv
    run_dir: Path
    metrics: JsonlWriter | None = None
    tb: Any = None
    status_fields: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def create(cls, cfg: TrainConfig, env: DistEnv) -> RunContext:
        """Create the run directory, save ``config.json`` and open the writers (rank 0)."""
        if not cfg.out_dir:
            raise ConfigError("out_dir is required: pass --out DIR (the run directory)")
        run_dir = Path(cfg.out_dir).expanduser()
        ctx = cls(cfg, env, run_dir)
        if env.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            cfg.save_json(run_dir / "config.json")
            if cfg.tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                ctx.tb = SummaryWriter(log_dir=str(run_dir / "tb"))
        barrier(env)
        return ctx

    def record(self, rec: dict[str, Any]) -> None:
        """Append a metrics record (and its numbers to TensorBoard) on rank 0."""
        if not self.env.is_main:
            return
        if self.metrics is None:  # opened lazily: a resume may first trim the file
            self.metrics = JsonlWriter(self.run_dir / "metrics.jsonl")
        self.metrics.write(rec)
        if self.tb is not None:
            kind = rec.get("type", "step")
            x = rec.get("epoch_1000x") if kind == "step" else rec.get("epoch")
            for k, v in rec.items():
                if k in ("type", "epoch", "step", "epoch_1000x", "time", "epoch_step"):
                    continue
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                    self.tb.add_scalar(f"{kind}/{k}", v, x)
            self.tb.flush()

    def trim_metrics(self, global_step: int, epochs_done: int) -> None:
        """Drop records written after the checkpoint being resumed (rank 0, before writing).

        A run killed between checkpoints logged steps that the resumed run repeats; removing
        them keeps one record per step in ``metrics.jsonl``.
        """
        if not self.env.is_main or self.metrics is not None:
            return
        path = self.run_dir / "metrics.jsonl"
        if not path.is_file():
            return
        keep = [
            r
            for r in runs.read_metrics(self.run_dir)
            if (r.get("type") == "step" and r.get("step", 0) <= global_step)
            or (r.get("type") == "epoch" and r.get("epoch", 0) <= epochs_done)
        ]
        atomic_write_text("".join(json.dumps(r) + "\n" for r in keep), path)

    def status(self, status: runs.RunStatus, **fields: Any) -> None:
        """Rewrite ``status.json`` on rank 0."""
        self.status_fields.update(fields)
        if self.env.is_main:
            runs.write_status(self.run_dir, status, kind=self.cfg.kind, **self.status_fields)

    def close(self) -> None:
        """Close the writers."""
        if self.metrics is not None:
            self.metrics.close()
        if self.tb is not None:
            self.tb.close()


# ---------------------------------------------------------------------- trainer
