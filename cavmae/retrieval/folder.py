"""Incremental indexing of a folder of media files into an :class:`EmbeddingIndex`.

:class:`FolderIndexer` walks a folder recursively and embeds only files that are new or changed
since the last update (size and modification time, optionally a SHA-256 of the content), drops
files that disappeared, and reports what it did. Embedding is injected as a callable
``embed_fn(path) -> ClipEmbedding``, so this module does not depend on the model. An embedding
failure of one file (``cavmae.errors.MediaError``) skips that file with its reason; any other
exception is a bug or an environment problem and propagates.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cavmae.errors import ConfigError, MediaError
from cavmae.retrieval.embedding import ClipEmbedding
from cavmae.retrieval.index import EmbeddingIndex

#: ``embed_many(paths)`` -> ``(path, ClipEmbedding or exception)`` per file, in order.
EmbedMany = Callable[[Sequence[Path]], Iterable[tuple[Path, Any]]]

__all__ = [
    "AUDIO_EXTENSIONS",
    "DEFAULT_MEDIA_EXTENSIONS",
    "IMAGE_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "FolderIndexer",
    "IndexReport",
    "parent_folder_label",
]

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = frozenset({".mp4", ".m4v", ".mkv", ".webm", ".mov", ".avi", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp", ".ts"})
AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".m4a", ".aac", ".wma", ".aif", ".aiff"})
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"})
DEFAULT_MEDIA_EXTENSIONS = VIDEO_EXTENSIONS | AUDIO_EXTENSIONS | IMAGE_EXTENSIONS

ProgressFn = Callable[[float, str], None]


def parent_folder_label(path: Path) -> list[str]:
    """Label a file by the name of its folder (``dataset/dog_bark/clip.mp4`` -> ``['dog_bark']``)."""
    return [path.parent.name]


@dataclass(frozen=True)
class IndexReport:
    """What one :meth:`FolderIndexer.update` did; all keys are absolute file paths.

    Attributes:
        added: Files embedded for the first time.
        updated: Changed files embedded again.
        removed: Files dropped from the index (deleted, or now failing to embed).
        unchanged: Files whose stored embedding is still valid.
        skipped: File -> reason, for files that could not be embedded (``MediaError``).
    """

    added: tuple[str, ...] = ()
    updated: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        """Whether the index content changed (so it should be saved)."""
        return bool(self.added or self.updated or self.removed)

    def summary(self) -> str:
        """One line for logs and the CLI."""
        return (
            f"{len(self.added)} added, {len(self.updated)} updated, {len(self.removed)} removed, "
            f"{len(self.unchanged)} unchanged, {len(self.skipped)} skipped"
        )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class FolderIndexer:
    """Keeps an :class:`EmbeddingIndex` in step with the media files of folders.

    Args:
        index: The index to update in place (save it afterwards when ``report.changed``).
        embed_fn: Computes the embeddings of one file; raises ``MediaError`` for a file it
            cannot use (no streams, corrupt, too short...).
        extensions: Lower-case file suffixes (with the dot) to index; defaults to common
            video, audio and image types.
        hash_contents: Also compare a SHA-256 of the content, so that a touched or copied but
            identical file is not embedded again (costs one read of every changed file).
        labels_fn: Optional labels of a file, stored as ``meta['labels']`` (for example
            :func:`parent_folder_label` for a ``class_name/clip.mp4`` layout).
        embed_many: Optional batch form of ``embed_fn`` used by :meth:`update`: takes the
            files in order and yields ``(path, ClipEmbedding or exception)`` for each, in the
            same order (e.g. :meth:`cavmae.inference.Predictor.embed_files`, which decodes the
            next files while the model embeds the current one). A ``MediaError`` skips the
            file as with ``embed_fn``; another exception is raised.
    """

    def __init__(
        self,
        index: EmbeddingIndex,
        embed_fn: Callable[[Path], ClipEmbedding],
        extensions: Collection[str] = DEFAULT_MEDIA_EXTENSIONS,
        *,
        hash_contents: bool = False,
        labels_fn: Callable[[Path], Sequence[str]] | None = None,
        embed_many: EmbedMany | None = None,
    ) -> None:
        self.index = index
        self.embed_fn = embed_fn
        self.embed_many = embed_many
        self.extensions = frozenset(e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions)
        if not self.extensions:
            raise ConfigError("FolderIndexer needs at least one file extension to index")
        self.hash_contents = hash_contents
        self.labels_fn = labels_fn

    def scan(self, folder: str | Path) -> list[Path]:
        """Media files under ``folder`` (recursive, sorted, hidden files and folders skipped).

        Raises:
            ConfigError: ``folder`` is not an existing folder.
        """
        root = Path(os.path.abspath(folder))
        if not root.is_dir():
            raise ConfigError(f"cannot index {folder}: it is not an existing folder")
        found: list[Path] = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if not name.startswith(".") and os.path.splitext(name)[1].lower() in self.extensions:
                    found.append(Path(dirpath) / name)
        return found

    def update(self, folder: str | Path, progress: ProgressFn | None = None) -> IndexReport:
        """Embed new and changed files of ``folder`` and drop the ones that are gone.

        Only keys under ``folder`` are considered for removal, so one index can hold several
        folders. Files are compared with their stored ``size`` and ``mtime_ns`` (and ``sha256``
        with ``hash_contents``).

        Args:
            folder: Root folder, walked recursively.
            progress: Called as ``progress(fraction, message)`` while files are embedded.

        Returns:
            The :class:`IndexReport`.

        Raises:
            ConfigError: ``folder`` is not a folder, or an embedding has the wrong dimension.
            Exception: Whatever ``embed_fn`` raises other than ``MediaError``.
        """
        root = Path(os.path.abspath(folder))
        files = self.scan(root)
        present = {str(p) for p in files}
        stale = [k for k in self.index.keys() if _is_under(k, root) and k not in present]
        removed = [k for k in stale if self.index.remove(k)]

        skipped: dict[str, str] = {}
        unchanged: list[str] = []
        todo: list[tuple[Path, dict[str, Any], bool]] = []  # (file, stat meta, is_new)
        for path in files:
            key = str(path)
            try:
                st = path.stat()
            except OSError as exc:
                skipped[key] = f"cannot read file information: {exc.strerror or exc}"
                continue
            meta = {"path": key, "size": st.st_size, "mtime": st.st_mtime, "mtime_ns": st.st_mtime_ns}
            old = self.index.meta(key) if key in self.index else None
            if old is not None and old.get("size") == meta["size"] and old.get("mtime_ns") == meta["mtime_ns"]:
                unchanged.append(key)
                continue
            if self.hash_contents:
                meta["sha256"] = _sha256(path)
                if old is not None and old.get("sha256") == meta["sha256"]:
                    self.index.update_meta(key, {**old, **meta})  # same bytes: refresh the stat only
                    unchanged.append(key)
                    continue
            todo.append((path, meta, old is None))

        added: list[str] = []
        updated: list[str] = []
        results = self._embeddings([path for path, _, _ in todo])
        for i, ((path, meta, is_new), (done, emb)) in enumerate(zip(todo, results, strict=True)):
            key = str(path)
            if Path(done) != path:
                raise RuntimeError(f"embed_many answered {done} for {path}: out of order")
            if progress is not None:
                progress((i + 1) / len(todo), f"embedded {i + 1}/{len(todo)}: {path.name}")
            if isinstance(emb, BaseException) and not isinstance(emb, MediaError):
                raise emb
            if isinstance(emb, MediaError):
                skipped[key] = str(emb) or type(emb).__name__
                logger.warning("skipped %s: %s", path, skipped[key])
                if not is_new and self.index.remove(key):
                    removed.append(key)  # its old vectors no longer describe the file
                continue
            if emb.duration is not None:
                meta["duration"] = float(emb.duration)
            if self.labels_fn is not None:
                meta["labels"] = [str(label) for label in self.labels_fn(path)]
            self.index.add(key, emb, meta)
            (added if is_new else updated).append(key)
        if progress is not None:
            progress(1.0, f"indexed {root}")
        report = IndexReport(tuple(added), tuple(updated), tuple(removed), tuple(unchanged), skipped)
        logger.info("index update of %s: %s", root, report.summary())
        return report

    def _embeddings(self, paths: list[Path]) -> Iterator[tuple[Path, Any]]:
        """``(path, ClipEmbedding or MediaError)`` for each file, in order."""
        if self.embed_many is not None:
            yield from self.embed_many(paths)
            return
        for path in paths:
            try:
                yield path, self.embed_fn(path)
            except MediaError as exc:
                yield path, exc


def _is_under(key: str, root: Path) -> bool:
    """Whether the file key lies inside ``root``."""
    return os.path.commonpath([key, str(root)]) == str(root) if os.path.isabs(key) else False
