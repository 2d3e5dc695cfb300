"""Training jobs started from the app, run as subprocesses in their own process groups.

A :class:`Job` is a short list of command lines run one after the other (for example
``python -m training.prepare`` then ``python -m training.pretrain``) by a background thread.
Each command runs in a new session (``start_new_session=True``), so stopping a job terminates
the whole process group (data-loader workers included) and nothing else. Output goes to
``app_job.log`` in the run folder; the trainer itself writes ``status.json`` and
``metrics.jsonl`` there, which the Train tab polls (:mod:`training.runs`).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cavmae.errors import ConfigError

__all__ = ["Job", "JobRegistry", "JOB_LOG"]

logger = logging.getLogger(__name__)

#: Name of the job's combined stdout/stderr file inside the run folder.
JOB_LOG = "app_job.log"
_REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Job:
    """One training job.

    Attributes:
        run_dir: The run folder (the trainer's ``--out``).
        kind: "pretrain" or "finetune".
        steps: Command lines, run in order; each a list of arguments.
        status: "running", "finished", "failed" or "stopped".
        step: Index of the command running now (or last run).
        message: Why it failed or stopped, when it did.
        started_at / ended_at: UNIX times (ended_at 0 while running).
    """

    run_dir: Path
    kind: str
    steps: list[list[str]]
    status: str = "running"
    step: int = 0
    message: str = ""
    started_at: float = field(default_factory=time.time)
    ended_at: float = 0.0
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    @property
    def log_path(self) -> Path:
        """The job's combined output file."""
        return self.run_dir / JOB_LOG

    @property
    def running(self) -> bool:
        return self.status == "running"

    def log_tail(self, max_lines: int = 40) -> str:
        """The last lines of the job's output ("" before anything was written)."""
        try:
            with self.log_path.open("rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - 64_000))
                text = f.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-max_lines:])


class JobRegistry:
    """Starts, tracks and stops training subprocesses (shared by all sessions).

    Args:
        runs_dir: Where run folders live.
        max_running: How many jobs may run at once (training saturates a CPU machine).
        python: Interpreter for the commands (default: this one).
    """

    def __init__(self, runs_dir: Path, max_running: int = 1, python: str | None = None) -> None:
        self.runs_dir = Path(runs_dir)
        self.max_running = max_running
        self.python = python or sys.executable
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def module_command(self, module: str, *args: str) -> list[str]:
        """``[python, -m, module, *args]``."""
        return [self.python, "-m", module, *args]

    def start(self, run_dir: Path, kind: str, steps: Sequence[Sequence[str]]) -> Job:
        """Start a job in a background thread.

        Raises:
            ConfigError: If too many jobs run already, or this run folder is busy.
        """
        run_dir = Path(run_dir).resolve()
        with self._lock:
            busy = [j for j in self._jobs.values() if j.running]
            if any(j.run_dir == run_dir for j in busy):
                raise ConfigError(f"{run_dir.name} is already running; stop it first")
            if len(busy) >= self.max_running:
                raise ConfigError(
                    f"{busy[0].run_dir.name} is still running; stop it or wait until it ends "
                    f"(at most {self.max_running} training job at a time)"
                )
            run_dir.mkdir(parents=True, exist_ok=True)
            job = Job(run_dir=run_dir, kind=kind, steps=[list(s) for s in steps])
            self._jobs[str(run_dir)] = job
        job._thread = threading.Thread(
            target=self._run, args=(job,), daemon=True, name=f"job-{run_dir.name}"
        )
        job._thread.start()
        return job

    def _run(self, job: Job) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with job.log_path.open("ab") as log:
            for i, argv in enumerate(job.steps):
                if job._stop.is_set():
                    break
                job.step = i
                log.write(f"\n$ {' '.join(argv)}\n".encode())
                log.flush()
                try:
                    proc = subprocess.Popen(
                        argv,
                        cwd=_REPO_ROOT,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        start_new_session=True,
                        env=env,
                    )
                except OSError as e:
                    self._finish(job, "failed", f"could not start {argv[0]}: {e}")
                    return
                job._proc = proc
                rc = proc.wait()
                job._proc = None
                if job._stop.is_set():
                    self._finish(job, "stopped", "stopped from the app; Resume continues it")
                    return
                if rc != 0:
                    tail = job.log_tail(3).replace("\n", " | ")
                    self._finish(job, "failed", f"step {i + 1} exited with code {rc}: {tail}")
                    return
        self._finish(job, "stopped" if job._stop.is_set() else "finished", "")

    @staticmethod
    def _finish(job: Job, status: str, message: str) -> None:
        job.status, job.message, job.ended_at = status, message, time.time()
        logger.info("job %s %s %s", job.run_dir.name, status, message)

    def get(self, run_dir: Path | str) -> Job | None:
        """The job of a run folder, if one was started by this app."""
        with self._lock:
            return self._jobs.get(str(Path(run_dir).resolve()))

    def jobs(self) -> list[Job]:
        """All jobs started by this app, newest first."""
        with self._lock:
            return sorted(self._jobs.values(), key=lambda j: j.started_at, reverse=True)

    def stop(self, run_dir: Path | str, timeout_s: float = 10.0) -> bool:
        """Terminate a job's process group (SIGTERM, then SIGKILL after ``timeout_s``).

        Returns:
            False if no running job belongs to ``run_dir``.
        """
        job = self.get(run_dir)
        if job is None or not job.running:
            return False
        job._stop.set()
        proc = job._proc
        if proc is not None and proc.poll() is None:
            _signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait(5.0)
        if job._thread is not None:
            job._thread.join(timeout_s)
        return True

    def shutdown(self) -> None:
        """Stop every running job (called when the app closes)."""
        for job in self.jobs():
            if job.running:
                self.stop(job.run_dir)


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    try:
        os.killpg(proc.pid, sig)  # the child leads its own session, so pgid == pid
    except ProcessLookupError:
        pass
