"""Typed inputs and results of the inference layer (frozen dataclasses, numpy arrays).

These are the boundary between the engine (``cavmae.inference.predictor``) and its consumers
(CLI, web app, Python users): plain arrays ready to display or serialise, no tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from cavmae.errors import ConfigError

__all__ = [
    "AudioMaskMode",
    "ClassifyMode",
    "MaskSpec",
    "Reconstruction",
    "Prediction",
    "Classification",
    "Timeline",
    "SimilarityMap",
]

AudioMaskMode = Literal["unstructured", "time", "freq", "tf"]
ClassifyMode = Literal[
    "auto", "multimodal", "audioonly", "videoonly", "missingaudioonly", "missingvideoonly"
]
_AUDIO_MODES = ("unstructured", "time", "freq", "tf")


@dataclass(frozen=True)
class MaskSpec:
    """What to mask for a reconstruction.

    Either ratios (with a seed, reproducible) or explicit patch sets. ``patches_a`` /
    ``patches_v`` are boolean arrays over the tokens (True = masked; audio tokens are
    frequency-major: token = f * t_patches + t) and take precedence over the ratios.
    A ratio of 1.0 masks a whole modality: it is then reconstructed from the other one alone.
    """

    ratio_a: float = 0.75
    ratio_v: float = 0.75
    mode_a: AudioMaskMode = "unstructured"
    seed: int = 0
    patches_a: np.ndarray | None = None
    patches_v: np.ndarray | None = None

    def __post_init__(self) -> None:
        for name in ("ratio_a", "ratio_v"):
            r = getattr(self, name)
            if not 0.0 <= r <= 1.0:
                raise ConfigError(f"{name} must be within [0, 1], got {r}")
        if self.mode_a not in _AUDIO_MODES:
            raise ConfigError(f"mode_a must be one of {_AUDIO_MODES}, got {self.mode_a!r}")


@dataclass(frozen=True)
class Reconstruction:
    """Original, masked input and reconstruction of both modalities, ready to display.

    Spectrogram arrays are normalised fbanks (T, F); frame arrays are RGB uint8 (S, S, 3).
    ``pixel_mask_*`` are 1 where a patch was masked: (F, T) for audio (image orientation
    before the vertical flip of the display), (S, S) for the frame. ``composite`` pastes the
    visible input patches back over the reconstruction, as the official inpainting figure does.
    """

    spec_original: np.ndarray  # (T, F)
    spec_reconstruction: np.ndarray  # (T, F)
    spec_composite: np.ndarray  # (T, F)
    frame_original: np.ndarray  # (S, S, 3) uint8
    frame_reconstruction: np.ndarray  # (S, S, 3) uint8
    frame_composite: np.ndarray  # (S, S, 3) uint8
    mask_a: np.ndarray  # (L_a,) 1 = masked
    mask_v: np.ndarray  # (L_v,)
    pixel_mask_a: np.ndarray  # (F, T)
    pixel_mask_v: np.ndarray  # (S, S)
    loss_a: float  # mean squared error over masked audio patches (nan if none masked)
    loss_v: float
    norm_pix_denormalised: bool  # predictions were de-normalised with the input patch statistics
    has_audio: bool = True
    has_video: bool = True
    note: str = ""


@dataclass(frozen=True)
class Prediction:
    """One label with its probability."""

    index: int
    label: str
    score: float


@dataclass(frozen=True)
class Classification:
    """Top-k predictions of one clip and how they were obtained."""

    predictions: list[Prediction]
    probabilities: np.ndarray  # (C,)
    mode: str  # the model mode actually used
    multi_label: bool  # sigmoid (True) or softmax (False)
    frames_used: int  # 1, or K for the multi-frame ensemble
    note: str = ""  # e.g. why a fallback mode was chosen


@dataclass(frozen=True)
class Timeline:
    """Per-window predictions over a long clip, plus the clip-level pooled result."""

    starts: np.ndarray  # (W,) seconds
    ends: np.ndarray  # (W,)
    probabilities: np.ndarray  # (W, C)
    labels: list[str]
    clip: Classification  # pooled over windows (mean of probabilities)

    def top_classes(self, k: int = 5) -> list[int]:
        """Indices of the k classes with the highest pooled probability."""
        return [int(i) for i in np.argsort(-self.clip.probabilities)[:k]]


@dataclass(frozen=True)
class SimilarityMap:
    """A "where is the sound" map of one frame (``extra["method"]``: cosine or occlusion)."""

    grid: np.ndarray  # (gh, gw) per-patch scores
    frame: np.ndarray  # (S, S, 3) uint8
    overlay: np.ndarray  # (S, S, 3) uint8 heat map blended over the frame
    time_s: float
    extra: dict = field(default_factory=dict)
