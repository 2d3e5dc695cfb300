"""Vector storage and nearest-neighbour search for one modality of an embedding index.

A :class:`VectorStore` keeps the L2-normalised vectors of one modality (audio or visual) in a
faiss ``IndexFlatIP``: that flat index is the only copy of the vectors, and inner product on
normalised vectors is cosine similarity. Search is exact up to ``AnnConfig.exact_max_items``
vectors. Above that, an IVF index with 8-bit scalar-quantised codes (``IndexIVFScalarQuantizer``)
proposes candidates that are re-scored exactly against the flat vectors, so every returned score
is an exact cosine and only the candidate set is approximate.

Why IVF-SQ8 with exact re-ranking (measured on the 2-core CPU of the dev machines, 768-d,
``bench/bench_retrieval.py``):

- a single exact query costs a full pass over the vectors (memory bound: ~30 ms at 100k, hence
  the default ``exact_max_items``; ~0.3-0.4 s at 1M), so exact search cannot answer 1M items
  within 50 ms;
- at 200k clustered vectors, IVF-Flat and IVF-SQ8 + re-ranking gave the same recall@10 (the
  re-ranking removes the quantisation error) but SQ8 scans 4x fewer bytes (about 2x faster
  queries) and adds a quarter of the memory of the vectors instead of a second full copy;
- HNSW32 needed 165 s to build 200k vectors (about 14 min for 1M), reached a lower recall at equal
  latency, and faiss cannot remove items from it, which incremental folder indexing needs.

With the defaults at 1M vectors (IVF2048, nprobe 128): 8 ms per query and recall@10 = 0.985
against exact search on clustered data (a Gaussian mixture), 100 s to build, +0.7-1 GiB over the
3 GiB of vectors. On structureless uniform random vectors recall@10 is only 0.17 (no partition
index helps there); pass ``exact=True`` or a larger ``nprobe`` to trade speed for recall.

Rows are kept dense: removing a row moves the last row into its place, so the flat index never
has holes and the IVF ids (the row numbers) stay valid with O(removed) updates.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from cavmae.errors import ConfigError

__all__ = ["AnnConfig", "VectorStore"]

logger = logging.getLogger(__name__)

# Below this many queries, a plain matrix-vector product over the flat vectors is about 2x faster
# than IndexFlatIP.search, whose small-batch path runs on one thread.
_NUMPY_MAX_QUERIES = 4


@dataclass(frozen=True)
class AnnConfig:
    """Settings of the approximate search used above ``exact_max_items`` vectors.

    Attributes:
        exact_max_items: Largest number of vectors of one modality searched exactly. A single
            exact query over 100k 768-d vectors takes about 20-45 ms on a 2-core CPU.
        nlist: Number of IVF lists; ``None`` picks ``2 * sqrt(n)`` rounded to a power of two
            (2048 for 1M vectors: k-means training and assignment stay around a minute on 2 cores).
        nprobe: Lists visited per query (the speed / recall trade-off, overridable per query);
            ``None`` visits ``nlist / 16`` lists (at least 16), about 6 % of the vectors.
        rerank: Candidates re-scored exactly per query, as a multiple of ``k`` (at least 64).
        train_per_list: Training vectors sampled per IVF list for k-means.
        retrain_growth: Re-train the IVF lists once the store has grown by this factor since
            the last training, so the lists follow the data.
    """

    exact_max_items: int = 100_000
    nlist: int | None = None
    nprobe: int | None = None
    rerank: int = 8
    train_per_list: int = 40
    retrain_growth: float = 2.0

    def __post_init__(self) -> None:
        if self.exact_max_items < 0:
            raise ConfigError(f"exact_max_items must be >= 0, got {self.exact_max_items}")
        if self.nlist is not None and self.nlist < 1:
            raise ConfigError(f"nlist must be >= 1 or None, got {self.nlist}")
        if self.nprobe is not None and self.nprobe < 1:
            raise ConfigError(f"nprobe must be >= 1 or None, got {self.nprobe}")
        for name in ("rerank", "train_per_list"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.retrain_growth <= 1.0:
            raise ConfigError(f"retrain_growth must be > 1, got {self.retrain_growth}")

    def lists_for(self, n: int) -> int:
        """Number of IVF lists used for ``n`` vectors (at most n / train_per_list)."""
        if self.nlist is not None:
            nlist = self.nlist
        else:
            nlist = 2 ** round(math.log2(max(2.0 * math.sqrt(max(n, 1)), 1.0)))
        return max(1, min(nlist, n // self.train_per_list))

    def probes_for(self, nlist: int) -> int:
        """Number of IVF lists visited per query for an index of ``nlist`` lists."""
        return min(nlist, self.nprobe if self.nprobe is not None else max(16, nlist // 16))

    def to_dict(self) -> dict[str, int | float | None]:
        """Plain-dict form, saved in the index manifest."""
        return {
            "exact_max_items": self.exact_max_items,
            "nlist": self.nlist,
            "nprobe": self.nprobe,
            "rerank": self.rerank,
            "train_per_list": self.train_per_list,
            "retrain_growth": self.retrain_growth,
        }


class VectorStore:
    """Dense float32 vectors of one modality, addressed by item key, with cosine search.

    Not thread-safe on its own: :class:`cavmae.retrieval.EmbeddingIndex` serialises access.

    Args:
        dim: Vector dimension ``D``.
        ann: Approximate-search settings.
    """

    def __init__(self, dim: int, ann: AnnConfig) -> None:
        self.dim = dim
        self.ann = ann
        self._flat = faiss.IndexFlatIP(dim)
        self._keys: list[str] = []  # row -> key
        self._rows: dict[str, int] = {}  # key -> row
        self._ivf: faiss.IndexIVFScalarQuantizer | None = None
        self._ivf_trained_on = 0

    # ------------------------------------------------------------------ content

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._rows

    @property
    def keys(self) -> list[str]:
        """Keys in row order (a copy)."""
        return list(self._keys)

    def key_at(self, row: int) -> str:
        """Key stored at ``row``."""
        return self._keys[row]

    def row(self, key: str) -> int:
        """Row of ``key`` (KeyError when absent)."""
        return self._rows[key]

    def vectors(self) -> np.ndarray:
        """A view of the stored vectors, (N, D) float32, valid until the next mutation."""
        n = len(self._keys)
        if n == 0:
            return np.empty((0, self.dim), dtype=np.float32)
        return faiss.rev_swig_ptr(self._flat.get_xb(), n * self.dim).reshape(n, self.dim)

    def vector(self, key: str) -> np.ndarray:
        """A copy of the vector of ``key``, (D,)."""
        return self.vectors()[self._rows[key]].copy()

    def add(self, keys: Sequence[str], vecs: np.ndarray) -> None:
        """Insert or overwrite the vectors of ``keys``.

        Args:
            keys: Distinct item keys, length N.
            vecs: (N, D) float32 C-contiguous, L2-normalised rows.
        """
        existing = [i for i, k in enumerate(keys) if k in self._rows]
        fresh = [i for i, k in enumerate(keys) if k not in self._rows]
        if existing:
            rows = np.array([self._rows[keys[i]] for i in existing], dtype=np.int64)
            self.vectors()[rows] = vecs[existing]  # (E, D), written in place
            if self._ivf is not None:
                self._ivf.remove_ids(faiss.IDSelectorBatch(rows))
                self._ivf.add_with_ids(np.ascontiguousarray(vecs[existing]), rows)
        if fresh:
            new = vecs if len(fresh) == len(keys) else np.ascontiguousarray(vecs[fresh])
            start = len(self._keys)
            self._flat.add(new)  # (F, D)
            for offset, i in enumerate(fresh):
                self._keys.append(keys[i])
                self._rows[keys[i]] = start + offset
            if self._ivf is not None:
                self._ivf.add_with_ids(new, np.arange(start, start + len(fresh), dtype=np.int64))

    def remove(self, keys: Collection[str]) -> int:
        """Remove the vectors of ``keys`` that are present; returns how many were removed."""
        doomed = sorted((self._rows[k] for k in keys if k in self._rows), reverse=True)
        if not doomed:
            return 0
        old_n = len(self._keys)
        view = self.vectors()
        targets: list[int] = []  # rows that received the former last row
        n = old_n
        # Descending order: the current last row is never one still waiting to be removed.
        for r in doomed:
            last = n - 1
            del self._rows[self._keys[r]]
            if r != last:
                view[r] = view[last]
                moved = self._keys[last]
                self._keys[r] = moved
                self._rows[moved] = r
                targets.append(r)
            n -= 1
        del self._keys[n:]
        self._flat.remove_ids(faiss.IDSelectorRange(n, old_n))
        if self._ivf is not None:
            stale = np.unique(np.concatenate([np.array(doomed, dtype=np.int64),
                                              np.arange(n, old_n, dtype=np.int64)]))
            self._ivf.remove_ids(faiss.IDSelectorBatch(stale))
            live = np.array(sorted(t for t in targets if t < n), dtype=np.int64)
            if live.size:
                self._ivf.add_with_ids(np.ascontiguousarray(self.vectors()[live]), live)
        return len(doomed)

    # ------------------------------------------------------------------ approximate index

    @property
    def is_approximate(self) -> bool:
        """Whether searches currently go through the IVF index."""
        return len(self._keys) > self.ann.exact_max_items

    def build(self) -> None:
        """Train (or drop) the IVF index so that it matches the current size; cheap if current."""
        n = len(self._keys)
        if n <= self.ann.exact_max_items:
            self._ivf, self._ivf_trained_on = None, 0
            return
        if self._ivf is not None and n <= self.ann.retrain_growth * self._ivf_trained_on:
            return
        nlist = self.ann.lists_for(n)
        quantizer = faiss.IndexFlatIP(self.dim)
        ivf = faiss.IndexIVFScalarQuantizer(
            quantizer, self.dim, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
        )
        vecs = self.vectors()
        n_train = min(n, nlist * self.ann.train_per_list)
        # Our own sample is the training set: no further subsampling, no too-few-points warning.
        ivf.cp.max_points_per_centroid = self.ann.train_per_list
        ivf.cp.min_points_per_centroid = min(ivf.cp.min_points_per_centroid, n_train // nlist)
        sample = np.random.default_rng(0).choice(n, size=n_train, replace=False)
        sample.sort()  # sequential reads
        logger.info("training IVF%d,SQ8 on %d of %d vectors", nlist, n_train, n)
        ivf.train(np.ascontiguousarray(vecs[sample]))  # (n_train, D)
        chunk = 200_000
        for s in range(0, n, chunk):
            e = min(n, s + chunk)
            ivf.add_with_ids(vecs[s:e], np.arange(s, e, dtype=np.int64))
        self._ivf, self._ivf_trained_on = ivf, n

    def save_ann(self, path: Path) -> bool:
        """Write the IVF index (if built) to ``path``; returns whether a file was written."""
        if self._ivf is None:
            return False
        faiss.write_index(self._ivf, str(path))
        return True

    def load_ann(self, path: Path, trained_on: int) -> None:
        """Attach a saved IVF index whose ids are the current rows."""
        ivf = faiss.read_index(str(path))
        if not isinstance(ivf, faiss.IndexIVFScalarQuantizer):
            raise ConfigError(f"{path} is not an IVF-SQ index; delete the index folder and rebuild it")
        if ivf.d != self.dim or ivf.ntotal != len(self._keys):
            raise ConfigError(
                f"{path} holds {ivf.ntotal} vectors of dimension {ivf.d}, but the index has "
                f"{len(self._keys)} of dimension {self.dim}; delete the index folder and rebuild it"
            )
        self._ivf, self._ivf_trained_on = ivf, trained_on

    @property
    def ivf_trained_on(self) -> int:
        """Store size when the IVF lists were last trained (0: none)."""
        return self._ivf_trained_on

    # ------------------------------------------------------------------ search

    def search(
        self, queries: np.ndarray, k: int, *, exact: bool = False, nprobe: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` rows by cosine similarity.

        Args:
            queries: (Q, D) float32 C-contiguous, L2-normalised.
            k: Number of neighbours (clamped to the store size).
            exact: Force exact search even above ``exact_max_items``.
            nprobe: IVF lists to visit, overriding ``ann.nprobe``.

        Returns:
            ``(scores, rows)``, both (Q, k'), descending scores; rows are -1 where fewer than
            k' candidates were found (approximate search only).
        """
        n = len(self._keys)
        k = min(k, n)
        if k == 0:
            return (np.empty((len(queries), 0), np.float32), np.empty((len(queries), 0), np.int64))
        if exact or not self.is_approximate:
            return self._search_exact(queries, k)
        self.build()
        assert self._ivf is not None
        return self._search_ivf(queries, k, nprobe or self.ann.probes_for(self._ivf.nlist))

    def _search_exact(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if len(queries) > _NUMPY_MAX_QUERIES:
            scores, rows = self._flat.search(queries, k)
            return scores, rows
        sims = (self.vectors() @ queries.T).T  # (Q, N); matrix-vector form is the fast BLAS path
        return _top_k(sims, k)

    def _search_ivf(
        self, queries: np.ndarray, k: int, nprobe: int
    ) -> tuple[np.ndarray, np.ndarray]:
        assert self._ivf is not None
        self._ivf.nprobe = min(nprobe, self._ivf.nlist)
        n_cand = min(len(self._keys), max(64, self.ann.rerank * k))
        _, cand = self._ivf.search(queries, n_cand)  # (Q, C), -1 padded
        vecs = self.vectors()
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        rows = np.full((len(queries), k), -1, dtype=np.int64)
        for i, (q, c) in enumerate(zip(queries, cand, strict=True)):
            c = c[c >= 0]
            exact_scores = vecs[c] @ q  # (C,), exact cosine re-ranking
            s, r = _top_k(exact_scores[None], min(k, len(c)))
            scores[i, : s.shape[1]] = s[0]
            rows[i, : r.shape[1]] = c[r[0]]
        return scores, rows


def _top_k(sims: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Descending top-k of each row of ``sims`` (Q, N) -> scores (Q, k), columns (Q, k)."""
    if k < sims.shape[1]:
        part = np.argpartition(-sims, k - 1, axis=1)[:, :k]  # (Q, k), unordered
    else:
        part = np.broadcast_to(np.arange(sims.shape[1]), sims.shape).copy()
    part_scores = np.take_along_axis(sims, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    return (np.take_along_axis(part_scores, order, axis=1).astype(np.float32),
            np.take_along_axis(part, order, axis=1).astype(np.int64))
