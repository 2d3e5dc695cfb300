"""Embedding index of media clips: audio and visual vectors, metadata, cosine search.

Clip embeddings follow the official retrieval protocol (OFFICIAL_CAVMAE.md §6.1): the tokens of
the modality-specific path are mean-pooled and L2-normalised, so the inner product of two vectors
is their cosine similarity. An :class:`EmbeddingIndex` holds one item per key (usually a file
path) with an optional audio vector, an optional visual vector and a JSON metadata dict. Each
modality lives in its own :class:`~cavmae.retrieval.store.VectorStore` (exact faiss search up to
``AnnConfig.exact_max_items`` vectors, IVF-SQ8 with exact re-ranking above), so a query can
target either modality: audio->visual, visual->audio, or within one modality.

Items lacking the target modality (a silent video, an audio file) are simply absent from that
modality's store and are never returned for it. Persistence is in :mod:`cavmae.retrieval.persist`.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cavmae.errors import ConfigError
from cavmae.retrieval.embedding import (
    MODALITIES,
    NORM_TOLERANCE,
    ClipEmbedding,
    Hit,
    Modality,
    check_meta,
    check_modality,
)
from cavmae.retrieval.store import AnnConfig, VectorStore

__all__ = ["EmbeddingIndex"]

class EmbeddingIndex:
    """Searchable collection of clip embeddings from one model.

    Thread-safe: every public method holds an internal lock, so the app may search while a
    folder update runs in another thread.

    Args:
        dim: Embedding dimension D (768 for CAV-MAE base).
        model_id: Identity of the model that produced the vectors (name plus checkpoint digest);
            saved with the index and checked on load so that vectors of two models never mix.
        ann: Exact / approximate search settings (exact up to ``ann.exact_max_items`` vectors
            per modality).

    Raises:
        ConfigError: ``dim`` < 1 or an empty ``model_id``.
    """

    def __init__(self, dim: int, model_id: str, *, ann: AnnConfig | None = None) -> None:
        if int(dim) < 1:
            raise ConfigError(f"index dimension must be >= 1, got {dim}")
        if not model_id:
            raise ConfigError("model_id must be a non-empty string identifying the model")
        self._dim = int(dim)
        self._model_id = str(model_id)
        self._ann = ann or AnnConfig()
        self._meta: dict[str, dict[str, Any]] = {}  # key -> metadata, in insertion order
        self._stores: dict[Modality, VectorStore] = {m: VectorStore(self._dim, self._ann) for m in MODALITIES}
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ properties

    @property
    def dim(self) -> int:
        """Embedding dimension D."""
        return self._dim

    @property
    def model_id(self) -> str:
        """Identity of the model whose vectors this index holds."""
        return self._model_id

    @property
    def ann(self) -> AnnConfig:
        """Exact / approximate search settings."""
        return self._ann

    def __len__(self) -> int:
        return len(self._meta)

    def __contains__(self, key: object) -> bool:
        return key in self._meta

    def keys(self) -> list[str]:
        """All item keys in insertion order."""
        with self._lock:
            return list(self._meta)

    def count(self, modality: Modality) -> int:
        """Number of items that have a ``modality`` vector."""
        return len(self._stores[check_modality(modality)])

    def is_approximate(self, modality: Modality) -> bool:
        """Whether searches over ``modality`` use the approximate (IVF) index."""
        return self._stores[check_modality(modality)].is_approximate

    def meta(self, key: str) -> dict[str, Any]:
        """A copy of the metadata of ``key``.

        Raises:
            KeyError: ``key`` is not in the index.
        """
        with self._lock:
            return dict(self._meta[key])

    def get(self, key: str) -> ClipEmbedding:
        """The stored embeddings of ``key`` (copies).

        Raises:
            KeyError: ``key`` is not in the index.
        """
        with self._lock:
            if key not in self._meta:
                raise KeyError(key)
            vecs = {m: (s.vector(key) if key in s else None) for m, s in self._stores.items()}
            return ClipEmbedding(vecs["audio"], vecs["visual"], self._meta[key].get("duration"))

    # ------------------------------------------------------------------ mutation

    def add(self, key: str, emb: ClipEmbedding, meta: Mapping[str, Any] | None = None) -> None:
        """Insert or replace one item.

        Replacing an item replaces both modalities: a modality missing from ``emb`` is removed.

        Args:
            key: Item key, usually the absolute path of the media file.
            emb: Its embeddings, of dimension ``self.dim``.
            meta: JSON-serialisable metadata (path, size, mtime, duration, labels, ...).

        Raises:
            ConfigError: Dimension mismatch or metadata that JSON cannot encode.
        """
        if not isinstance(emb, ClipEmbedding):
            raise TypeError(f"expected a ClipEmbedding for {key!r}, got {type(emb).__name__}")
        if emb.dim != self._dim:
            raise ConfigError(
                f"embedding of {key!r} has dimension {emb.dim}, but the index (model "
                f"{self._model_id!r}) holds dimension {self._dim}"
            )
        meta_d = check_meta(key, meta)
        with self._lock:
            for m, store in self._stores.items():
                vec = emb.get(m)
                if vec is None:
                    store.remove([key])
                else:
                    store.add([key], vec[None, :])  # (1, D)
            self._meta[key] = meta_d

    def add_arrays(
        self,
        keys: Sequence[str],
        audio: np.ndarray | None = None,
        visual: np.ndarray | None = None,
        metas: Sequence[Mapping[str, Any]] | None = None,
    ) -> None:
        """Insert or replace many items at once (the fast path for batches).

        Args:
            keys: N distinct keys.
            audio: (N, D) L2-normalised audio vectors for every key, or None (no audio for any).
            visual: (N, D) L2-normalised visual vectors for every key, or None.
            metas: N metadata dicts, or None for empty metadata.

        Raises:
            ConfigError: Shapes, norms, duplicate keys or metadata are invalid.
        """
        keys = [str(k) for k in keys]
        n = len(keys)
        if len(set(keys)) != n:
            raise ConfigError("add_arrays got duplicate keys")
        if audio is None and visual is None:
            raise ConfigError("add_arrays needs audio or visual vectors")
        if metas is not None and len(metas) != n:
            raise ConfigError(f"add_arrays got {len(metas)} metadata dicts for {n} keys")
        arrays = {m: self._check_matrix(m, a, n) for m, a in (("audio", audio), ("visual", visual))}
        meta_list = [check_meta(k, m) for k, m in zip(keys, metas, strict=True)] if metas else [{}] * n
        with self._lock:
            for modality, store in self._stores.items():
                vecs = arrays[modality]
                if vecs is None:
                    store.remove(keys)
                else:
                    store.add(keys, vecs)
            for key, meta in zip(keys, meta_list, strict=True):
                self._meta[key] = dict(meta)

    def _check_matrix(self, name: str, a: np.ndarray | None, n: int) -> np.ndarray | None:
        if a is None:
            return None
        a = np.ascontiguousarray(a, dtype=np.float32)
        if a.shape != (n, self._dim):
            raise ConfigError(f"{name} vectors must have shape ({n}, {self._dim}), got {a.shape}")
        norms = np.linalg.norm(a, axis=1)  # (N,)
        bad = ~(np.abs(norms - 1.0) <= NORM_TOLERANCE)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ConfigError(
                f"{int(bad.sum())} {name} vectors are not L2-normalised (row {i} has norm "
                f"{norms[i]:.4f}); normalise them before adding"
            )
        return a

    def remove(self, key: str) -> bool:
        """Remove ``key``; returns False when it was not in the index."""
        return self.remove_many([key]) == 1

    def remove_many(self, keys: Iterable[str]) -> int:
        """Remove the given keys that are present; returns how many were removed."""
        with self._lock:
            present = [k for k in dict.fromkeys(keys) if k in self._meta]
            for store in self._stores.values():
                store.remove(present)
            for k in present:
                del self._meta[k]
            return len(present)

    def update_meta(self, key: str, meta: Mapping[str, Any]) -> None:
        """Replace the metadata of ``key`` without touching its vectors.

        Raises:
            KeyError: ``key`` is not in the index.
            ConfigError: Metadata that JSON cannot encode.
        """
        meta_d = check_meta(key, meta)
        with self._lock:
            if key not in self._meta:
                raise KeyError(key)
            self._meta[key] = meta_d

    def build(self) -> None:
        """Build or refresh the approximate indexes now (otherwise done at the first search)."""
        with self._lock:
            for store in self._stores.values():
                store.build()

    # ------------------------------------------------------------------ search

    def _queries(self, query: np.ndarray) -> np.ndarray:
        q = np.array(query, dtype=np.float32, copy=True, ndmin=2)
        if q.ndim != 2 or q.shape[1] != self._dim:
            raise ConfigError(f"query must have shape ({self._dim},) or (Q, {self._dim}), got {np.shape(query)}")
        norms = np.linalg.norm(q, axis=1, keepdims=True)  # (Q, 1)
        if not np.isfinite(norms).all() or (norms == 0).any():
            raise ConfigError("query vectors must be finite and non-zero")
        return np.ascontiguousarray(q / norms)  # (Q, D), cosine even for un-normalised queries

    def search(
        self,
        query: np.ndarray,
        target: Modality,
        k: int = 10,
        *,
        exclude: Collection[str] | None = None,
        exact: bool = False,
        nprobe: int | None = None,
    ) -> list[list[Hit]]:
        """Nearest items of the ``target`` modality by cosine similarity.

        Args:
            query: (D,) or (Q, D) query vectors (L2-normalised here if they are not).
            target: Which vectors to search: 'visual' for audio->visual or visual->visual,
                'audio' for visual->audio or audio->audio.
            k: Hits per query (fewer when the target modality has fewer items).
            exclude: Keys never returned (for example the query clip itself).
            exact: Search exactly even above ``ann.exact_max_items`` (slow on 1M items).
            nprobe: IVF lists to visit for this query (more: slower, higher recall).

        Returns:
            One list of hits per query, best first; items lacking ``target`` never appear.

        Raises:
            ConfigError: Bad modality, k, or query shape.
        """
        store = self._stores[check_modality(target)]
        if int(k) < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        if nprobe is not None and int(nprobe) < 1:
            raise ConfigError(f"nprobe must be >= 1, got {nprobe}")
        q = self._queries(query)  # (Q, D)
        with self._lock:
            skip = set(exclude or ())
            extra = sum(1 for key in skip if key in store)
            scores, rows = store.search(q, int(k) + extra, exact=exact, nprobe=nprobe)
            results: list[list[Hit]] = []
            for srow, rrow in zip(scores, rows, strict=True):
                hits: list[Hit] = []
                for s, r in zip(srow.tolist(), rrow.tolist(), strict=True):
                    if r < 0:
                        continue
                    key = store.key_at(r)
                    if key in skip:
                        continue
                    hits.append(Hit(key, float(s), len(hits) + 1, dict(self._meta[key])))
                    if len(hits) == k:
                        break
                results.append(hits)
            return results

    def search_key(
        self,
        key: str,
        source: Modality,
        target: Modality,
        k: int = 10,
        *,
        exclude_self: bool = True,
        exact: bool = False,
        nprobe: int | None = None,
    ) -> list[Hit]:
        """Search with the ``source`` vector of an indexed item (e.g. "clips that sound like this").

        Raises:
            ConfigError: ``key`` is not indexed or has no ``source`` vector.
        """
        with self._lock:
            store = self._stores[check_modality(source)]
            if key not in store:
                what = "is not in the index" if key not in self._meta else f"has no {source} vector"
                raise ConfigError(f"{key!r} {what}")
            vec = store.vector(key)
            exclude = [key] if exclude_self else None
            return self.search(vec, target, k, exclude=exclude, exact=exact, nprobe=nprobe)[0]

    def similarity_matrix(
        self,
        keys_a: Sequence[str],
        keys_b: Sequence[str],
        modality_a: Modality = "audio",
        modality_b: Modality = "visual",
        *,
        missing: Literal["raise", "nan"] = "raise",
    ) -> np.ndarray:
        """Cosine similarities between the ``modality_a`` vectors of ``keys_a`` and the
        ``modality_b`` vectors of ``keys_b`` (by default audio x visual, as in the paper).

        Args:
            keys_a: A row keys.
            keys_b: B column keys.
            modality_a: Modality of the row vectors.
            modality_b: Modality of the column vectors.
            missing: 'raise' on a key without the needed vector, or 'nan' to mark its row or
                column with NaN.

        Returns:
            (A, B) float32 similarity matrix.

        Raises:
            ConfigError: A key is missing or lacks the needed modality (with ``missing='raise'``).
        """
        with self._lock:
            a = self._gather(keys_a, check_modality(modality_a), missing)  # (A, D)
            b = self._gather(keys_b, check_modality(modality_b), missing)  # (B, D)
        return (a @ b.T).astype(np.float32)  # (A, B); NaN rows/columns propagate

    def _gather(self, keys: Sequence[str], modality: Modality, missing: str) -> np.ndarray:
        store = self._stores[modality]
        out = np.full((len(keys), self._dim), np.nan, dtype=np.float32)
        vecs = store.vectors()
        for i, key in enumerate(keys):
            if key in store:
                out[i] = vecs[store.row(key)]
            elif missing == "raise":
                what = "is not in the index" if key not in self._meta else f"has no {modality} vector"
                raise ConfigError(f"{key!r} {what}")
        return out

    # ------------------------------------------------------------------ persistence

    def save(self, directory: str | Path) -> Path:
        """Save atomically to ``directory`` (see :func:`cavmae.retrieval.persist.save_index`)."""
        from cavmae.retrieval.persist import save_index

        with self._lock:
            return save_index(self, Path(directory))

    @classmethod
    def load(
        cls,
        directory: str | Path,
        expected_model_id: str | None = None,
        *,
        ann: AnnConfig | None = None,
    ) -> EmbeddingIndex:
        """Load an index saved by :meth:`save`.

        Args:
            directory: The index folder.
            expected_model_id: When given, the index must have been built by this model.
            ann: Search settings overriding the saved ones.

        Raises:
            ConfigError: Not an index folder, a damaged or newer-format index, or an index built
                by a different model than ``expected_model_id``.
        """
        from cavmae.retrieval.persist import load_index

        return load_index(cls, Path(directory), expected_model_id, ann)
