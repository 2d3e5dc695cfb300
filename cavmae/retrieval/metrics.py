"""Cross-modal retrieval metrics, as in the official CAV-MAE evaluation (OFFICIAL_CAVMAE.md §6.1).

Given N paired clips, row i of the query matrix and row i of the gallery matrix come from the same
clip, so the ground truth is the diagonal of the (N, N) cosine-similarity matrix. The rank of a
query is the 0-based position of its diagonal score in its row sorted in descending order:
R@k is the fraction of queries with rank < k, and MR = median(rank) + 1.

Parity: the official ``compute_metrics`` computes the similarities in float64 from the embeddings
(dot / (|a| |b|)) and finds the diagonal score in the sorted row with an equality test. We compute
the same float64 similarities and count the strictly greater scores in the row, which is the same
rank whenever scores do not tie; with ties the official code emits one rank per tied entry (a
defect), where we give the best tied position.

Also a labelled evaluation (class-level precision@k) for folders whose clips carry labels.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np

from cavmae.errors import ConfigError

__all__ = [
    "DIRECTIONS",
    "evaluate_labelled",
    "evaluate_pairs",
    "label_precision_at_k",
    "pair_ranks",
    "retrieval_metrics",
]

DIRECTIONS = ("audio->visual", "visual->audio")
_BLOCK = 1024  # query rows per similarity block: bounds memory to _BLOCK x N float64

Labels = Sequence[str] | Sequence[Collection[str]]


def _unit_rows(name: str, x: np.ndarray) -> np.ndarray:
    """Float64 copy of ``x`` (N, D) with L2-normalised rows; rejects zero or non-finite rows."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ConfigError(f"{name} must be a non-empty (N, D) matrix, got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)  # (N, 1)
    if not np.isfinite(norms).all() or (norms == 0).any():
        raise ConfigError(f"{name} has zero or non-finite rows; every clip needs a valid embedding")
    return x / norms


def _check_pair(query: np.ndarray, gallery: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    q, g = _unit_rows("query", query), _unit_rows("gallery", gallery)
    if q.shape != g.shape:
        raise ConfigError(
            f"query and gallery must have the same shape (row i of each is the same clip), got "
            f"{q.shape} and {g.shape}"
        )
    return q, g


def pair_ranks(query: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """0-based rank of each query's own pair among all gallery items.

    Args:
        query: (N, D) query embeddings.
        gallery: (N, D) gallery embeddings; row i pairs with query row i.

    Returns:
        (N,) int64 ranks; 0 means the pair scored highest.

    Raises:
        ConfigError: Shapes differ, or a row is zero or not finite.
    """
    q, g = _check_pair(query, gallery)
    n = q.shape[0]
    ranks = np.empty(n, dtype=np.int64)
    for s in range(0, n, _BLOCK):
        e = min(n, s + _BLOCK)
        sims = q[s:e] @ g.T  # (b, N) cosine, float64 as the official code
        diag = sims[np.arange(e - s), np.arange(s, e)]  # (b,)
        ranks[s:e] = (sims > diag[:, None]).sum(axis=1)
    return ranks


def retrieval_metrics(query: np.ndarray, gallery: np.ndarray) -> dict[str, float]:
    """R@1, R@5, R@10 (fractions in [0, 1]) and MR (1-based median rank) of paired retrieval.

    Args:
        query: (N, D) query embeddings (audio for audio->visual).
        gallery: (N, D) gallery embeddings, row i the pair of query row i.

    Returns:
        ``{"R@1": ..., "R@5": ..., "R@10": ..., "MR": ...}``.

    Raises:
        ConfigError: Shapes differ, or a row is zero or not finite.
    """
    ranks = pair_ranks(query, gallery)
    return {
        "R@1": float(np.mean(ranks < 1)),
        "R@5": float(np.mean(ranks < 5)),
        "R@10": float(np.mean(ranks < 10)),
        "MR": float(np.median(ranks) + 1),
    }


def evaluate_pairs(audio: np.ndarray, visual: np.ndarray) -> dict[str, dict[str, float]]:
    """Paired retrieval metrics in both directions of the paper.

    Args:
        audio: (N, D) audio embeddings.
        visual: (N, D) visual embeddings; row i is the same clip as ``audio`` row i.

    Returns:
        ``{"audio->visual": metrics, "visual->audio": metrics}`` (see :func:`retrieval_metrics`).
    """
    return {
        "audio->visual": retrieval_metrics(audio, visual),
        "visual->audio": retrieval_metrics(visual, audio),
    }


def _label_matrix(labels: Labels, vocab: dict[str, int]) -> np.ndarray:
    """Multi-hot (N, C) bool matrix; a plain string is one label."""
    rows = [[lab] if isinstance(lab, str) else list(lab) for lab in labels]
    out = np.zeros((len(rows), len(vocab)), dtype=bool)
    for i, row in enumerate(rows):
        out[i, [vocab[str(lab)] for lab in row]] = True
    return out


def label_precision_at_k(
    query: np.ndarray,
    gallery: np.ndarray,
    query_labels: Labels,
    gallery_labels: Labels,
    ks: Sequence[int] = (1, 5, 10),
    *,
    exclude_diagonal: bool = False,
) -> dict[str, float]:
    """Class-level precision@k: the fraction of the top-k gallery items sharing a label with
    the query, averaged over queries.

    Args:
        query: (Nq, D) query embeddings.
        gallery: (Ng, D) gallery embeddings.
        query_labels: Nq labels; each a string or a collection of strings (multi-label: a hit
            counts when the label sets intersect).
        gallery_labels: Ng labels, likewise.
        ks: Cut-offs.
        exclude_diagonal: Drop gallery item i from the results of query i (within-modality
            retrieval over one set, where item i is the query itself).

    Returns:
        ``{"P@1": ..., "P@5": ..., ...}`` (fractions in [0, 1]).

    Raises:
        ConfigError: Mismatched lengths or dimensions, or a cut-off larger than the gallery.
    """
    q, g = _unit_rows("query", query), _unit_rows("gallery", gallery)
    if q.shape[1] != g.shape[1]:
        raise ConfigError(f"query and gallery dimensions differ: {q.shape[1]} vs {g.shape[1]}")
    if len(query_labels) != len(q) or len(gallery_labels) != len(g):
        raise ConfigError(
            f"got {len(query_labels)} query labels for {len(q)} queries and "
            f"{len(gallery_labels)} gallery labels for {len(g)} gallery items"
        )
    if exclude_diagonal and len(q) != len(g):
        raise ConfigError("exclude_diagonal needs query and gallery of the same length")
    kmax = max(ks)
    available = len(g) - (1 if exclude_diagonal else 0)
    if min(ks) < 1 or kmax > available:
        raise ConfigError(f"cut-offs {tuple(ks)} must lie in 1..{available} for this gallery")
    vocab: dict[str, int] = {}
    for labs in (query_labels, gallery_labels):
        for lab in labs:
            for name in [lab] if isinstance(lab, str) else lab:
                vocab.setdefault(str(name), len(vocab))
    lq, lg = _label_matrix(query_labels, vocab), _label_matrix(gallery_labels, vocab)
    hits = np.zeros(kmax, dtype=np.float64)  # summed relevance at each position
    for s in range(0, len(q), _BLOCK):
        e = min(len(q), s + _BLOCK)
        sims = q[s:e] @ g.T  # (b, Ng)
        if exclude_diagonal:
            sims[np.arange(e - s), np.arange(s, e)] = -np.inf
        top = np.argpartition(-sims, kmax - 1, axis=1)[:, :kmax]  # (b, kmax) unordered
        order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)  # (b, kmax) best first
        relevant = (lq[s:e, None, :] & lg[top]).any(axis=-1)  # (b, kmax)
        hits += relevant.sum(axis=0)
    cumulative = np.cumsum(hits)  # relevant items within the first j+1 positions, summed
    return {f"P@{k}": float(cumulative[k - 1] / (k * len(q))) for k in ks}


def evaluate_labelled(
    audio: np.ndarray,
    visual: np.ndarray,
    labels: Labels,
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, dict[str, float]]:
    """Full evaluation of a labelled, paired set (what ``cavmae evaluate retrieval`` reports).

    Args:
        audio: (N, D) audio embeddings.
        visual: (N, D) visual embeddings; row i is the same clip.
        labels: N labels (strings or collections of strings).
        ks: Precision cut-offs.

    Returns:
        For 'audio->visual' and 'visual->audio': R@1/5/10, MR and P@k; for 'audio->audio' and
        'visual->visual': P@k with the query itself excluded.
    """
    pairs = evaluate_pairs(audio, visual)
    n = len(labels)
    cross_ks = [k for k in ks if k <= n]
    within_ks = [k for k in ks if k <= n - 1]
    out: dict[str, dict[str, float]] = {}
    for direction, (q, g) in {"audio->visual": (audio, visual), "visual->audio": (visual, audio)}.items():
        precision = label_precision_at_k(q, g, labels, labels, cross_ks) if cross_ks else {}
        out[direction] = {**pairs[direction], **precision}
    for direction, x in {"audio->audio": audio, "visual->visual": visual}.items():
        out[direction] = (
            label_precision_at_k(x, x, labels, labels, within_ks, exclude_diagonal=True) if within_ks else {}
        )
    return out
