"""Settings of the web app: where it listens, which model it starts with, and its limits.

One frozen dataclass, filled by ``launch.py`` from the command line (and usable directly from
Python or tests). Defaults are safe for a public booth or a laptop: bind 127.0.0.1 only, no
analytics, one model call at a time, bounded queue and uploads.
"""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from cavmae.config import check_precision
from cavmae.errors import ConfigError

__all__ = ["AppSettings", "REPO_ROOT"]

#: The repository root (``assets/``, ``runs/`` and ``launch.py`` live here in a checkout).
REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class AppSettings:
    """Everything the app needs to know before it starts.

    Attributes:
        host: Interface to bind; 127.0.0.1 keeps the app private to this machine.
        port: TCP port; None lets Gradio pick the first free one from 7860.
        share: Ask Gradio for a public share link (sends traffic through Gradio's servers).
        auth: ``(user, password)`` required to open the app, or None.
        model: Model at start: "demo" (bundled), a zoo name, a checkpoint file or a run folder.
        pretrain: Optional pretraining checkpoint loaded next to a classifier ``model``.
        labels: Optional label CSV for a classifier without labels.
        device: torch device ("cpu", "cuda", ...); None picks CUDA when available.
        threads: CPU threads for torch (None leaves torch's default).
        precision: "auto" (bf16 on CUDA, float32 on CPU), "float32" or "bfloat16" (faster on
            CPUs with AVX512-BF16/AMX, probabilities within ~5e-3).
        max_upload_mb: Largest accepted upload.
        queue_size: Events waiting in the queue before new ones are refused.
        concurrency_limit: Model events running at the same time (shared by all visitors).
        model_cache_size: Loaded models kept in memory (LRU).
        state_ttl_s: Seconds after which an idle session's clip and files are dropped.
        samples_dir: Folder of sample clips offered in the clip picker.
        runs_dir: Folder where the Train tab writes its runs.
        work_dir: Folder for per-session files (rendered audio, CSVs); under the temp dir so
            Gradio may serve it.
        allowed_paths: Extra folders whose files the app may serve (e.g. a media library).
        preload: Load the start model before the first visitor arrives.
    """

    host: str = "127.0.0.1"
    port: int | None = None
    share: bool = False
    auth: tuple[str, str] | None = None
    model: str = "demo"
    pretrain: str | None = None
    labels: str | None = None
    device: str | None = None
    threads: int | None = None
    precision: str = "auto"
    max_upload_mb: int = 1024
    queue_size: int = 32
    concurrency_limit: int = 1
    model_cache_size: int = 2
    state_ttl_s: int = 3600
    samples_dir: Path = REPO_ROOT / "assets" / "samples"
    runs_dir: Path = REPO_ROOT / "runs"
    work_dir: Path = field(default_factory=lambda: Path(tempfile.gettempdir()) / "cavmae-studio")
    allowed_paths: tuple[Path, ...] = ()
    preload: bool = True

    def __post_init__(self) -> None:
        check_precision(self.precision)
        if self.port is not None and not 1 <= self.port <= 65535:
            raise ConfigError(f"port must be in 1..65535, got {self.port}")
        for name in ("max_upload_mb", "queue_size", "concurrency_limit", "model_cache_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.state_ttl_s < 60:
            raise ConfigError(f"state_ttl_s must be at least 60 seconds, got {self.state_ttl_s}")
        for name in ("samples_dir", "runs_dir", "work_dir"):
            object.__setattr__(self, name, Path(getattr(self, name)).expanduser())
        object.__setattr__(
            self, "allowed_paths", tuple(Path(p).expanduser() for p in self.allowed_paths)
        )

    @staticmethod
    def parse_auth(text: str | None) -> tuple[str, str] | None:
        """``"user:pass"`` -> ``("user", "pass")``; None or "" -> None.

        Raises:
            ConfigError: If there is no colon or the user name is empty.
        """
        if not text:
            return None
        user, sep, password = text.partition(":")
        if not sep or not user:
            raise ConfigError(f"--auth must look like user:password, got {text!r}")
        return user, password

    def serve_paths(self) -> list[str]:
        """Folders Gradio may serve files from (samples, runs, work dir and extra paths)."""
        paths = [self.samples_dir, self.runs_dir, self.work_dir, *self.allowed_paths]
        return [str(p) for p in paths]

    def replace(self, **changes: object) -> AppSettings:
        """A validated copy with some fields changed."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]
