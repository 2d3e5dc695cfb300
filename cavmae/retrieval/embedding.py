"""Clip embeddings and search hits: the values exchanged with the index.

A clip embedding follows the official retrieval protocol (OFFICIAL_CAVMAE.md §6.1): the tokens
of the modality-specific path (``forward_feat``) are mean-pooled over all tokens and
L2-normalised, one vector per modality. A clip may lack a modality (a silent video, an audio
file, an image), which is then ``None``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import numpy as np

from cavmae.errors import ConfigError

__all__ = [
    "MODALITIES",
    "NORM_TOLERANCE",
    "ClipEmbedding",
    "Hit",
    "Modality",
    "check_meta",
    "check_modality",
]

Modality = Literal["audio", "visual"]
MODALITIES: tuple[Modality, ...] = get_args(Modality)

# Vectors whose norm is this close to 1 are re-normalised silently (bf16/fp16 rounding);
# anything further off is a caller bug (an un-normalised embedding) and is refused.
NORM_TOLERANCE = 1e-2


def _as_unit_vector(name: str, value: Any) -> np.ndarray:
    """Validate one embedding: 1-D, finite, unit norm within tolerance -> read-only float32."""
    arr = np.array(value, dtype=np.float32, copy=True)  # own copy: the caller's array stays writable
    if arr.ndim != 1 or arr.size == 0:
        raise ConfigError(f"the {name} embedding must be a non-empty 1-D vector, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ConfigError(f"the {name} embedding contains NaN or infinite values")
    norm = float(np.linalg.norm(arr))
    if abs(norm - 1.0) > NORM_TOLERANCE:
        raise ConfigError(
            f"the {name} embedding has L2 norm {norm:.4f}, not 1; build it with "
            "ClipEmbedding.normalized(...) to L2-normalise it"
        )
    if abs(norm - 1.0) > 1e-5:  # keep float32-exact unit vectors bit-identical
        arr /= norm
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True, eq=False)
class ClipEmbedding:
    """Clip-level embeddings of one media file.

    Attributes:
        audio: (D,) float32, L2-normalised mean-pooled audio tokens, or None (no audio track).
        visual: (D,) float32, L2-normalised mean-pooled visual tokens, or None (no video/image).
        duration: Duration of the media in seconds, when known (stored in the index metadata).

    Raises:
        ConfigError: Neither modality is given, a vector is not 1-D, not finite, not of unit norm
            (within 1e-2; use :meth:`normalized`), or the two dimensions differ.
    """

    audio: np.ndarray | None = None
    visual: np.ndarray | None = None
    duration: float | None = None

    def __post_init__(self) -> None:
        if self.audio is None and self.visual is None:
            raise ConfigError("a ClipEmbedding needs an audio or a visual vector (both are None)")
        for name in MODALITIES:
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, _as_unit_vector(name, value))
        if self.audio is not None and self.visual is not None and self.audio.shape != self.visual.shape:
            raise ConfigError(
                f"audio and visual embeddings differ in dimension: {self.audio.shape[0]} vs "
                f"{self.visual.shape[0]}"
            )

    @classmethod
    def normalized(
        cls,
        audio: np.ndarray | None = None,
        visual: np.ndarray | None = None,
        duration: float | None = None,
    ) -> ClipEmbedding:
        """Build from raw pooled features, L2-normalising each vector (D,).

        Raises:
            ConfigError: A vector is all zeros or not finite.
        """

        def unit(name: str, v: np.ndarray | None) -> np.ndarray | None:
            if v is None:
                return None
            v = np.asarray(v, dtype=np.float32)
            norm = float(np.linalg.norm(v))
            if not np.isfinite(norm) or norm == 0.0:
                raise ConfigError(f"cannot L2-normalise the {name} embedding (norm {norm})")
            return v / norm

        return cls(unit("audio", audio), unit("visual", visual), duration)

    @property
    def dim(self) -> int:
        """Embedding dimension D."""
        vec = self.audio if self.audio is not None else self.visual
        assert vec is not None
        return int(vec.shape[0])

    def get(self, modality: Modality) -> np.ndarray | None:
        """The vector of ``modality`` ('audio' or 'visual'), or None."""
        return getattr(self, check_modality(modality))


@dataclass(frozen=True)
class Hit:
    """One search result.

    Attributes:
        key: Item key (usually the media file path).
        score: Cosine similarity to the query, exact even when the candidates came from the
            approximate index.
        rank: 1-based position in the result list.
        meta: A copy of the item's metadata.
    """

    key: str
    score: float
    rank: int
    meta: dict[str, Any] = field(default_factory=dict)


def check_modality(modality: str) -> Modality:
    """Return ``modality`` if it is 'audio' or 'visual', else raise ConfigError."""
    if modality not in MODALITIES:
        raise ConfigError(f"modality must be one of {MODALITIES}, got {modality!r}")
    return modality  # type: ignore[return-value]


def check_meta(key: str, meta: Mapping[str, Any] | None) -> dict[str, Any]:
    """Copy ``meta`` into a plain dict, raising ConfigError if JSON cannot encode it."""
    meta = dict(meta or {})
    try:
        json.dumps(meta)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"metadata of {key!r} is not JSON-serialisable: {exc}") from exc
    return meta
