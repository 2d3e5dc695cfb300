"""Train: start pretraining or fine-tuning as a subprocess, watch it live, stop, resume, use it.

A job is ``python -m training.prepare`` (when the data is a folder of videos or synthetic
AV-Shapes clips, decoded once into ``runs/.data/``) followed by ``python -m training.pretrain``
or ``python -m training.finetune`` writing to ``runs/<name>``. The tab polls the run's
``status.json``, ``metrics.jsonl`` and the job's output with a ``gr.Timer``. Stopping terminates
the job's process group; resuming runs the same training command again, which continues from
``last.pt`` (the trainer's ``--resume auto``).
"""

from __future__ import annotations

import hashlib
import html
import json
import logging
import re
import time
from pathlib import Path
from typing import Any

from app import plots
from app.handlers.common import SessionState, session, user_errors
from app.handlers.model import labels_table, model_overview
from app.services import ModelSpec, Services
from cavmae.config import MODEL_PRESETS
from cavmae.errors import ConfigError

__all__ = [
    "KINDS",
    "DATA_SOURCES",
    "PRESETS",
    "recipe_choices",
    "run_names",
    "start",
    "stop",
    "resume",
    "poll",
    "use_run",
    "JOB_FILE",
]

logger = logging.getLogger(__name__)

KINDS = ("pretrain", "finetune")
DATA_SOURCES = ("Synthetic AV-Shapes", "Folder of videos", "Prepared dataset")
#: Presets a run can start from (the classifier preset "cavmae_ft_base" is cavmae_base plus a head).
PRESETS = tuple(p for p in ("cavmae_tiny", "cavmae_demo", "cavmae_base") if p in MODEL_PRESETS)
JOB_FILE = "app_job.json"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def recipe_choices(kind: str) -> list[str]:
    """Recipe names for ``kind`` ("pretrain" or "finetune"), from ``training/recipes``."""
    import tomllib

    folder = Path(__file__).resolve().parents[2] / "training" / "recipes"
    out = []
    for p in sorted(folder.glob("*.toml")):
        try:
            k = tomllib.loads(p.read_text(encoding="utf-8")).get("kind")
        except (OSError, tomllib.TOMLDecodeError):
            continue
        if k == kind:
            out.append(p.stem)
    return out


def run_names(services: Services) -> list[str]:
    """Run folders under the runs folder, newest first."""
    from training.runs import list_runs

    return [r.name for r in list_runs(services.settings.runs_dir)]


def _run_dir(services: Services, name: str | None) -> Path:
    if not name:
        raise ConfigError("choose a run")
    if not _NAME.match(name):
        raise ConfigError(f"{name!r} is not a valid run name (letters, digits, '.', '_', '-')")
    return services.settings.runs_dir / name


def _data_steps(
    services: Services, source: str, path: str, synthetic_n: float, preset: str
) -> tuple[list[list[str]], str]:
    """Preparation commands (maybe none) and the prepared data folder for the trainer."""
    jobs = services.jobs
    assert jobs is not None
    data_root = services.settings.runs_dir / ".data"
    if source == "Prepared dataset":
        p = Path(path.strip()).expanduser()
        if not p.exists():
            raise ConfigError(
                f"{p} does not exist; give a prepared dataset folder or a data-list JSON"
            )
        return [], str(p.resolve())
    if source == "Synthetic AV-Shapes":
        n = int(synthetic_n or 0)
        if not 10 <= n <= 100_000:
            raise ConfigError(
                f"the number of synthetic clips must be between 10 and 100000, got {n}"
            )
        out = data_root / f"avshapes-{n}-{preset}"
        from training.data.formats import is_prepared_dir

        if is_prepared_dir(out):  # deterministic: the same clips were prepared before
            return [], str(out)
        return [
            jobs.module_command(
                "training.prepare",
                "--synthetic",
                str(n),
                str(out),
                "--model",
                preset,
                "--workers",
                "1",
            )
        ], str(out)
    if source == "Folder of videos":
        src = Path(path.strip()).expanduser()
        if not src.is_dir():
            raise ConfigError(
                f"{src} is not a folder; put the videos (in class sub-folders for fine-tuning) there"
            )
        digest = hashlib.sha1(str(src.resolve()).encode()).hexdigest()[:8]
        out = data_root / f"{src.name}-{digest}-{preset}"
        return [
            jobs.module_command(
                "training.prepare",
                str(src.resolve()),
                str(out),
                "--model",
                preset,
                "--workers",
                "1",
            )
        ], str(out)
    raise ConfigError(f"data source must be one of {DATA_SOURCES}, got {source!r}")


def _overrides(
    services: Services,
    kind: str,
    recipe: str | None,
    data: str,
    run_dir: Path,
    preset: str,
    epochs: float,
    batch_size: float,
    lr: float,
    init: str,
) -> dict[str, Any]:
    """Config overrides of the form, validated by building the whole training config.

    A fine-tuning run shorter than the recipe's weight-averaging window averages its last
    epochs instead (``wa_end`` = epochs).

    Raises:
        ConfigError: For any value the trainer would refuse.
    """
    from training.config import FinetuneConfig, PretrainConfig, build_config

    cls = PretrainConfig if kind == "pretrain" else FinetuneConfig
    out: dict[str, Any] = {
        "data": data,
        "out_dir": str(run_dir),
        "model": preset,
        "num_workers": 0,
        "progress": False,
    }
    if epochs:
        out["epochs"] = int(epochs)
    if batch_size:
        out["batch_size"] = int(batch_size)
    if lr:
        out["lr"] = float(lr)
    if kind == "finetune":
        start_from = (init or "scratch").strip()
        if (services.settings.runs_dir / start_from / "model.safetensors").is_file():
            start_from = str(services.settings.runs_dir / start_from / "model.safetensors")
        out["init"] = start_from
        base = build_config(cls, recipe or None, {k: v for k, v in out.items() if k != "epochs"})
        n = int(epochs) if epochs else base.epochs
        if base.wa and base.wa_end > n:  # type: ignore[attr-defined]
            out["wa_end"] = n
            out["wa_start"] = min(base.wa_start, n)  # type: ignore[attr-defined]
    build_config(cls, recipe or None, dict(out))  # raises ConfigError with the trainer's message
    return out


@user_errors
def start(
    services: Services,
    kind: str,
    recipe: str | None,
    source: str,
    data_path: str,
    synthetic_n: float,
    preset: str,
    epochs: float,
    batch_size: float,
    lr: float,
    init: str,
    name: str,
) -> tuple[str, str]:
    """Start a training job.

    Args:
        kind: "pretrain" or "finetune".
        recipe: A recipe name (training/recipes) or "" for the defaults.
        source: One of :data:`DATA_SOURCES`.
        data_path: Folder of videos or prepared dataset (unused for synthetic data).
        synthetic_n: Number of synthetic clips.
        preset: Model preset (its input geometry is used to prepare the data).
        epochs / batch_size / lr: Overrides (0 keeps the recipe's value).
        init: Fine-tuning start: "scratch", a checkpoint path, a zoo name or a run name.
        name: Run folder name under the runs folder ("" picks one).

    Returns:
        ``(status, run name)``.
    """
    if kind not in KINDS:
        raise ConfigError(f"kind must be one of {KINDS}, got {kind!r}")
    if preset not in MODEL_PRESETS:
        raise ConfigError(f"model must be one of {PRESETS}, got {preset!r}")
    name = (name or "").strip() or f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = _run_dir(services, name)
    if (run_dir / "status.json").exists():
        raise ConfigError(f"a run called {name!r} exists already; choose another name or Resume it")
    steps, data = _data_steps(services, source, data_path or "", synthetic_n, preset)
    jobs = services.jobs
    assert jobs is not None
    overrides = _overrides(
        services, kind, recipe, data, run_dir, preset, epochs, batch_size, lr, init
    )
    args = [] if not recipe else ["--recipe", recipe]
    for key, value in overrides.items():
        if isinstance(value, bool):
            args.append(f"--{key}" if value else f"--no-{key}")
        else:
            args += [f"--{key}", str(value)]
    steps.append(jobs.module_command(f"training.{kind}", *args))
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / JOB_FILE).write_text(
        json.dumps({"kind": kind, "steps": steps, "data": data}, indent=2)
    )
    jobs.start(run_dir, kind, steps)
    what = "preparing the data, then training" if len(steps) > 1 else "training"
    return f"Started **{name}** ({what}). Progress and curves update below every few seconds.", name


@user_errors
def stop(services: Services, name: str | None) -> str:
    """Stop a running job (its whole process group)."""
    run_dir = _run_dir(services, name)
    assert services.jobs is not None
    if not services.jobs.stop(run_dir):
        raise ConfigError(f"{name} is not running from this app")
    return f"Stopped **{name}**. Resume continues from the last saved state."


@user_errors
def resume(services: Services, name: str | None) -> str:
    """Run a stopped or failed run's training command again; it resumes from ``last.pt``."""
    run_dir = _run_dir(services, name)
    job_file = run_dir / JOB_FILE
    if not job_file.is_file():
        raise ConfigError(
            f"{name} was not started from this app; resume it with `python -m training.<kind> ... --resume auto`"
        )
    from training.data.formats import is_prepared_dir

    spec = json.loads(job_file.read_text())
    assert services.jobs is not None
    steps = spec["steps"]
    if is_prepared_dir(spec.get("data", "")):
        steps = steps[-1:]  # the data is ready: only the training command
    services.jobs.start(run_dir, spec["kind"], steps)
    return f"Resumed **{name}**."


def poll(services: Services, name: str | None) -> tuple[str, str, Any, Any]:
    """Status, output tail and curves of a run (never raises: the timer calls it).

    Returns:
        ``(status markdown, log tail, loss figure, metric figure)``.
    """
    from training.runs import read_metrics, read_run

    if not name or not _NAME.match(name):
        return (
            "No run selected.",
            "",
            plots.training_curves([], "step"),
            plots.training_curves([], "epoch"),
        )
    run_dir = services.settings.runs_dir / name
    info = read_run(run_dir)
    job = services.jobs.get(run_dir) if services.jobs is not None else None
    status = info.status
    msg = info.message
    kind = info.kind or (job.kind if job is not None else "?")
    if job is not None and job.running and job.step < len(job.steps) - 1:
        status, msg = "preparing data", "decoding the clips once (step 1 of 2)"
    elif job is not None and job.running and status == "unknown":
        status, msg = "starting", "loading the data and building the model"
    elif (
        job is not None
        and not job.running
        and job.status in ("failed", "stopped")
        and status in ("unknown", "running")
    ):
        status, msg = job.status, job.message
    bar = f"{info.progress:.0%}" if info.total_steps or info.total_epochs else ""
    parts = [f"**{html.escape(name)}** · {kind} · **{status}**"]
    if info.total_epochs:
        parts.append(f"epoch {info.epoch}/{info.total_epochs}")
    if info.total_steps:
        parts.append(f"step {info.global_step}/{info.total_steps}")
    if bar:
        parts.append(bar)
    if info.has_model:
        parts.append("model.safetensors ready: **Use this model**")
    text = " · ".join(parts) + (f"\n\n{html.escape(msg)}" if msg else "")
    records = read_metrics(run_dir)
    log = job.log_tail(30) if job is not None else _tail(run_dir / "train.log")
    return (
        text,
        log,
        plots.training_curves(records, "step"),
        plots.training_curves(records, "epoch"),
    )


def _tail(path: Path, max_lines: int = 30) -> str:
    try:
        return "\n".join(
            path.read_text(encoding="utf-8", errors="replace").splitlines()[-max_lines:]
        )
    except FileNotFoundError:
        return ""


@user_errors
def use_run(
    services: Services, state: SessionState | None, name: str | None
) -> tuple[SessionState, str, str, list[list[Any]]]:
    """Make a finished run the session's model (the other tabs then use it)."""
    state = session(services, state)
    run_dir = _run_dir(services, name)
    if not (run_dir / "model.safetensors").is_file():
        raise ConfigError(f"{name} has no model.safetensors yet (it is written when training ends)")
    spec = ModelSpec(str(run_dir))
    predictor = services.models.get(spec)
    state.model = spec
    state.clip = None
    state.clip_model = None
    state.clear_masks()
    text = f"The other tabs now use **{html.escape(name or '')}**."
    return state, text, model_overview(predictor, spec.title), labels_table(predictor)
