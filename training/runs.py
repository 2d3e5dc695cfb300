"""Run directories as data: status, configuration and metrics, for the app's Train tab.

A run directory written by ``training.pretrain`` / ``training.finetune`` holds:

- ``config.json``: the resolved configuration (with ``kind``);
- ``status.json``: ``status`` (``running``/``finished``/``failed``/``stopped``), ``pid``,
  ``host``, progress (``epoch``, ``total_epochs``, ``global_step``, ``total_steps``) and a
  ``message``; rewritten atomically by rank 0;
- ``metrics.jsonl``: one JSON object per log step (``"type": "step"``) and per epoch
  (``"type": "epoch"``), plus ``"type": "final"`` records;
- ``train.log``, ``last.pt``, ``checkpoints/``, ``tb/`` and finally ``model.safetensors``.

Everything here only reads files (plus :func:`write_status` for the trainer), so the web app can
poll runs that other processes are writing.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from training.checkpointing import atomic_write_json
from training.metrics import json_safe

__all__ = [
    "RunStatus",
    "RunInfo",
    "read_metrics",
    "read_status",
    "read_run",
    "list_runs",
    "write_status",
]

logger = logging.getLogger(__name__)

RunStatus = Literal["running", "finished", "failed", "stopped", "unknown"]


@dataclass(frozen=True)
class RunInfo:
    """What the Train tab shows about one run.

    Attributes:
        path: the run directory.
        name: its folder name.
        kind: ``"pretrain"`` or ``"finetune"`` (from ``config.json``), or ``""``.
        status: ``running``/``finished``/``failed``/``stopped`` (a ``running`` run whose
            process has vanished on this host is reported as ``stopped``), or ``unknown``
            when there is no ``status.json`` yet.
        config: the resolved configuration (empty until written).
        latest: the last metrics record, or None.
        latest_epoch: the last ``"type": "epoch"`` record, or None.
        epoch: epochs completed.
        total_epochs: epochs planned.
        global_step: optimizer steps completed.
        total_steps: optimizer steps planned (0 when unknown).
        message: last status message (the error for a failed run).
        started_at / updated_at: UNIX times from ``status.json`` (0 when unknown).
        has_model: whether ``model.safetensors`` exists.
    """

    path: Path
    name: str
    kind: str
    status: RunStatus
    config: dict[str, Any] = field(default_factory=dict)
    latest: dict[str, Any] | None = None
    latest_epoch: dict[str, Any] | None = None
    epoch: int = 0
    total_epochs: int = 0
    global_step: int = 0
    total_steps: int = 0
    message: str = ""
    started_at: float = 0.0
    updated_at: float = 0.0
    has_model: bool = False

    @property
    def progress(self) -> float:
        """Fraction of planned optimizer steps done (or of epochs), in [0, 1]."""
        if self.total_steps:
            return min(self.global_step / self.total_steps, 1.0)
        if self.total_epochs:
            return min(self.epoch / self.total_epochs, 1.0)
        return 0.0


def read_metrics(run_dir: str | os.PathLike[str], type: str | None = None) -> list[dict[str, Any]]:
    """Records of ``<run_dir>/metrics.jsonl`` in file order.

    A partially written last line (the trainer is appending) is ignored; an unreadable line
    elsewhere is skipped with a warning.

    Args:
        run_dir: the run directory.
        type: keep only records with this ``"type"`` (``"step"``, ``"epoch"``, ``"final"``).

    Returns:
        A list of dicts (empty when the file does not exist yet).
    """
    path = Path(run_dir) / "metrics.jsonl"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    lines = text.split("\n")
    out: list[dict[str, Any]] = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if i < len(lines) - 1:  # not the unfinished tail
                logger.warning("%s line %d is not valid JSON; skipped", path, i + 1)
            continue
        if isinstance(rec, dict) and (type is None or rec.get("type") == type):
            out.append(rec)
    return out


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_status(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """``status.json`` of a run (empty dict if absent), with a vanished process marked.

    A ``running`` status whose ``pid`` no longer exists on this host becomes ``stopped`` with a
    message saying so (the process was killed without a chance to write its status).
    """
    st = _read_json(Path(run_dir) / "status.json")
    if (
        st.get("status") == "running"
        and st.get("host") == socket.gethostname()
        and isinstance(st.get("pid"), int)
        and not _pid_alive(st["pid"])
    ):
        st = {
            **st,
            "status": "stopped",
            "message": (
                f"process {st['pid']} is no longer running (killed?); run the same command "
                "again to resume from last.pt"
            ),
        }
    return st


def read_run(run_dir: str | os.PathLike[str]) -> RunInfo:
    """Collect a :class:`RunInfo` for one run directory."""
    path = Path(run_dir)
    st = read_status(path)
    cfg = _read_json(path / "config.json")
    records = read_metrics(path)
    epochs = [r for r in records if r.get("type") == "epoch"]
    status = st.get("status", "unknown")
    return RunInfo(
        path=path,
        name=path.name,
        kind=str(cfg.get("kind", st.get("kind", ""))),
        status=status if status in ("running", "finished", "failed", "stopped") else "unknown",
        config=cfg,
        latest=records[-1] if records else None,
        latest_epoch=epochs[-1] if epochs else None,
        epoch=int(st.get("epoch", 0)),
        total_epochs=int(st.get("total_epochs", cfg.get("epochs", 0)) or 0),
        global_step=int(st.get("global_step", 0)),
        total_steps=int(st.get("total_steps", 0)),
        message=str(st.get("message", "")),
        started_at=float(st.get("started_at", 0.0)),
        updated_at=float(st.get("updated_at", 0.0)),
        has_model=(path / "model.safetensors").is_file(),
    )


def list_runs(root: str | os.PathLike[str]) -> list[RunInfo]:
    """Every run directory directly under ``root``, newest first.

    A directory counts as a run when it has a ``status.json`` or a ``config.json``.
    """
    base = Path(root)
    if not base.is_dir():
        return []
    runs = [
        read_run(d)
        for d in base.iterdir()
        if d.is_dir() and ((d / "status.json").is_file() or (d / "config.json").is_file())
    ]
    return sorted(runs, key=lambda r: (r.started_at, r.name), reverse=True)


def write_status(run_dir: str | os.PathLike[str], status: RunStatus, **fields: Any) -> None:
    """Atomically (re)write ``status.json``, keeping earlier fields not given again.

    Args:
        run_dir: the run directory.
        status: the new status.
        **fields: progress fields (``epoch``, ``global_step``, ``message``...).
    """
    path = Path(run_dir) / "status.json"
    st = _read_json(path)
    now = time.time()
    st.setdefault("started_at", now)
    st.update(fields)
    st.update(status=status, updated_at=now, pid=os.getpid(), host=socket.gethostname())
    atomic_write_json(json_safe(st), path)
