"""Shared services of the web app: the model cache, retrieval indexes and training jobs.

Everything here is shared by all browser sessions and is thread-safe:

- :class:`ModelCache`: a lock-protected LRU of loaded :class:`~cavmae.inference.Predictor`
  objects, keyed by :class:`ModelSpec`. Predictors are used read-only by the handlers, so two
  sessions on the same model share one copy of the weights.
- :class:`IndexRegistry`: in-memory retrieval indexes, one per (model, folder), updated
  incrementally by :class:`~cavmae.retrieval.FolderIndexer`.
- :class:`~app.jobs.JobRegistry` (re-exported): training runs started as subprocesses.
- :class:`Services`: the bundle that ``build_demo`` receives.

Nothing in this module imports gradio, so it can be tested and benchmarked without a UI.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.jobs import JobRegistry
from app.settings import AppSettings
from cavmae.config import check_precision
from cavmae.errors import ConfigError

__all__ = [
    "ModelSpec",
    "ModelCache",
    "IndexRegistry",
    "Services",
    "JobRegistry",
    "ProgressFn",
    "list_samples",
    "purge_stale_sessions",
    "MEDIA_EXTENSIONS",
]

logger = logging.getLogger(__name__)

ProgressFn = Callable[[float, str], None]

#: File types offered by the clip picker and accepted by the uploads.
MEDIA_EXTENSIONS: tuple[str, ...] = (
    ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi",
    ".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a",
    ".jpg", ".jpeg", ".png", ".webp",
)  # fmt: skip


@dataclass(frozen=True)
class ModelSpec:
    """What to load: the model and, optionally, a companion pretraining checkpoint and labels.

    Attributes:
        model: "demo", a zoo name, a checkpoint file or a training run folder.
        pretrain: Optional second checkpoint (the pretraining model next to a classifier).
        labels: Optional label CSV for a classifier without labels.
        precision: "float32" or "bfloat16", or None for the app's ``--precision`` (the same
            checkpoint in another precision is another cached model).
    """

    model: str
    pretrain: str | None = None
    labels: str | None = None
    precision: str | None = None

    def __post_init__(self) -> None:
        if not str(self.model).strip():
            raise ConfigError("no model given: choose a model name, a file or a run folder")
        object.__setattr__(self, "model", str(self.model).strip())
        for name in ("pretrain", "labels"):
            value = getattr(self, name)
            object.__setattr__(self, name, str(value).strip() or None if value else None)
        if self.precision is not None:
            check_precision(self.precision)

    @property
    def title(self) -> str:
        """A short human-readable name."""
        name = Path(self.model).name if os.sep in self.model else self.model
        if self.pretrain:
            pre = Path(self.pretrain).name if os.sep in self.pretrain else self.pretrain
            name = f"{name} + {pre}"
        return f"{name} ({self.precision})" if self.precision else name


def _default_loader(settings: AppSettings) -> Callable[[ModelSpec, ProgressFn | None], Any]:
    def load(spec: ModelSpec, progress: ProgressFn | None) -> Any:
        from cavmae.inference import Predictor

        def download(done: int, total: int | None) -> None:
            if progress is not None:
                frac = done / total if total else 0.0
                progress(frac, f"downloading {done / 1e6:.0f}/{(total or 0) / 1e6:.0f} MB")

        return Predictor.from_checkpoint(
            spec.model,
            pretrain=spec.pretrain,
            labels=spec.labels,
            device=settings.device,
            threads=settings.threads,
            progress=download,
            precision=spec.precision or settings.precision,
        )

    return load


class ModelCache:
    """Loaded predictors, least recently used evicted first.

    Args:
        loader: Builds a predictor for a spec; ``loader(spec, progress)``. Exceptions
            (``CavmaeError`` for bad files) propagate to the caller and nothing is cached.
        capacity: How many predictors stay in memory.
    """

    def __init__(
        self, loader: Callable[[ModelSpec, ProgressFn | None], Any], capacity: int = 2
    ) -> None:
        if capacity < 1:
            raise ConfigError(f"the model cache needs capacity >= 1, got {capacity}")
        self._loader = loader
        self._capacity = capacity
        self._items: OrderedDict[ModelSpec, Any] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[ModelSpec, threading.Lock] = {}

    def get(self, spec: ModelSpec, progress: ProgressFn | None = None) -> Any:
        """The predictor of ``spec``, loading it on first use (one load per spec at a time)."""
        with self._lock:
            if spec in self._items:
                self._items.move_to_end(spec)
                return self._items[spec]
            load_lock = self._loading.setdefault(spec, threading.Lock())
        with load_lock:
            with self._lock:  # another thread may have finished loading meanwhile
                if spec in self._items:
                    self._items.move_to_end(spec)
                    return self._items[spec]
            logger.info("loading model %s", spec)
            predictor = self._loader(spec, progress)
            with self._lock:
                self._items[spec] = predictor
                self._items.move_to_end(spec)
                while len(self._items) > self._capacity:
                    old, _ = self._items.popitem(last=False)
                    logger.info("evicted model %s from the cache", old)
                self._loading.pop(spec, None)
            return predictor

    def peek(self, spec: ModelSpec) -> Any | None:
        """The predictor if it is loaded, else None (never loads)."""
        with self._lock:
            return self._items.get(spec)

    def loaded(self) -> list[ModelSpec]:
        """Specs currently in memory, most recent last."""
        with self._lock:
            return list(self._items)


class IndexRegistry:
    """Retrieval indexes shared by sessions, one per (model, folder)."""

    def __init__(self) -> None:
        self._items: dict[tuple[ModelSpec, str], Any] = {}
        self._lock = threading.Lock()
        self._building: dict[tuple[ModelSpec, str], threading.Lock] = {}

    def get(self, spec: ModelSpec, folder: str) -> Any | None:
        """The index of ``folder`` for ``spec`` if it was built, else None."""
        with self._lock:
            return self._items.get((spec, folder))

    def update(
        self,
        spec: ModelSpec,
        folder: str | Path,
        predictor: Any,
        progress: ProgressFn | None = None,
    ) -> tuple[Any, Any]:
        """Build or incrementally refresh the index of ``folder``.

        Labels are the names of the files' parent folders (``dog/clip.mp4`` -> ``dog``).

        Returns:
            ``(index, report)``: the :class:`~cavmae.retrieval.EmbeddingIndex` and the
            :class:`~cavmae.retrieval.IndexReport` of this update.

        Raises:
            ConfigError: If ``folder`` is not a folder.
        """
        from cavmae.retrieval import EmbeddingIndex, FolderIndexer, parent_folder_label

        root = str(Path(folder).expanduser().resolve())
        key = (spec, root)
        with self._lock:
            lock = self._building.setdefault(key, threading.Lock())
        with lock:
            with self._lock:
                index = self._items.get(key)
            if index is None:
                dim = predictor_dim(predictor)
                index = EmbeddingIndex(dim, model_id=f"{spec.title}:{dim}")
            indexer = FolderIndexer(
                index,
                predictor.embed_file,
                labels_fn=parent_folder_label,
                embed_many=predictor.embed_files,
            )
            report = indexer.update(root, progress=progress)
            with self._lock:
                self._items[key] = index
            return index, report


def predictor_dim(predictor: Any) -> int:
    """Embedding dimension D of a predictor's embedding model."""
    c = predictor.pretrain or predictor.classifier
    return int(c.config.embed_dim)


def purge_stale_sessions(folder: Path, max_age_s: float) -> int:
    """Delete session folders untouched for ``max_age_s`` (left over by an earlier run).

    Returns:
        How many were deleted.
    """
    import shutil
    import time

    if not folder.is_dir():
        return 0
    cutoff = time.time() - max_age_s
    removed = 0
    for d in folder.iterdir():
        try:
            if d.is_dir() and d.stat().st_mtime < cutoff:
                shutil.rmtree(d, ignore_errors=True)
                removed += 1
        except OSError:
            continue
    if removed:
        logger.info("removed %d stale session folders from %s", removed, folder)
    return removed


def list_samples(folder: Path) -> list[Path]:
    """Media files directly in ``folder`` (sorted); empty when it does not exist."""
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in MEDIA_EXTENSIONS
    )


@dataclass
class Services:
    """What the UI needs: settings, models, indexes and training jobs.

    Attributes:
        settings: The app settings.
        models: Shared model cache.
        indexes: Shared retrieval indexes.
        jobs: Training subprocesses.
        startup_error: Why the start model could not be loaded (shown in the UI), or "".
    """

    settings: AppSettings
    models: ModelCache
    indexes: IndexRegistry = field(default_factory=IndexRegistry)
    jobs: JobRegistry | None = None
    startup_error: str = ""

    @classmethod
    def create(
        cls,
        settings: AppSettings,
        loader: Callable[[ModelSpec, ProgressFn | None], Any] | None = None,
    ) -> Services:
        """Services for ``settings``; ``loader`` replaces the real model loading (tests)."""
        settings.work_dir.mkdir(parents=True, exist_ok=True)
        purge_stale_sessions(settings.work_dir / "sessions", settings.state_ttl_s)
        cache = ModelCache(loader or _default_loader(settings), settings.model_cache_size)
        return cls(settings=settings, models=cache, jobs=JobRegistry(settings.runs_dir))

    @property
    def default_spec(self) -> ModelSpec:
        """The model every new session starts with."""
        s = self.settings
        return ModelSpec(s.model, s.pretrain, s.labels)

    def preload(self) -> None:
        """Load the start model now; a failure is recorded in ``startup_error``, not raised."""
        from cavmae.errors import CavmaeError

        try:
            self.models.get(self.default_spec)
            self.startup_error = ""
        except CavmaeError as e:
            self.startup_error = str(e)
            logger.warning("the start model %s could not be loaded: %s", self.default_spec, e)

    def samples(self) -> list[Path]:
        """The sample clips offered in the clip picker."""
        return list_samples(self.settings.samples_dir)
