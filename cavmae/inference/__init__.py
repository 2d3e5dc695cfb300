"""Inference layer: ``Predictor`` and its typed results (see ``predictor.py``)."""

from cavmae.inference.predictor import Predictor, PreparedClip, Progress
from cavmae.inference.results import (
    Classification,
    MaskSpec,
    Prediction,
    Reconstruction,
    SimilarityMap,
    Timeline,
)

__all__ = [
    "Classification",
    "MaskSpec",
    "Prediction",
    "Predictor",
    "PreparedClip",
    "Progress",
    "Reconstruction",
    "SimilarityMap",
    "Timeline",
]
