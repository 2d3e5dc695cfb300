"""Clip retrieval: an embedding index with faiss search, incremental folder indexing, metrics.

Follows the official CAV-MAE retrieval protocol (Gong et al., ICLR 2023; OFFICIAL_CAVMAE.md §6.1):
clip embeddings are the mean-pooled, L2-normalised tokens of each modality, compared by cosine
similarity, evaluated with R@1/5/10 and the median rank in both directions (audio->visual,
visual->audio). The model is not imported here: embeddings come from an injected
``embed_fn(path) -> ClipEmbedding``.

Modules: :mod:`~cavmae.retrieval.embedding` (ClipEmbedding, Hit),
:mod:`~cavmae.retrieval.index` (EmbeddingIndex),
:mod:`~cavmae.retrieval.store` (per-modality faiss storage, exact / IVF search),
:mod:`~cavmae.retrieval.persist` (atomic on-disk format), :mod:`~cavmae.retrieval.folder`
(FolderIndexer), :mod:`~cavmae.retrieval.metrics` (R@k, MR, precision@k).
"""

from cavmae.retrieval.embedding import MODALITIES, ClipEmbedding, Hit, Modality
from cavmae.retrieval.folder import (
    DEFAULT_MEDIA_EXTENSIONS,
    FolderIndexer,
    IndexReport,
    parent_folder_label,
)
from cavmae.retrieval.index import EmbeddingIndex
from cavmae.retrieval.metrics import (
    DIRECTIONS,
    evaluate_labelled,
    evaluate_pairs,
    label_precision_at_k,
    pair_ranks,
    retrieval_metrics,
)
from cavmae.retrieval.store import AnnConfig

__all__ = [
    "DEFAULT_MEDIA_EXTENSIONS",
    "DIRECTIONS",
    "MODALITIES",
    "AnnConfig",
    "ClipEmbedding",
    "EmbeddingIndex",
    "FolderIndexer",
    "Hit",
    "IndexReport",
    "Modality",
    "evaluate_labelled",
    "evaluate_pairs",
    "label_precision_at_k",
    "pair_ranks",
    "retrieval_metrics",
    "parent_folder_label",
]
