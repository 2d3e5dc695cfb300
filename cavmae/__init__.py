"""CAV-MAE Studio library: models, checkpoints, media, features, inference and retrieval.

The public names below are imported lazily (PEP 562), so ``import cavmae`` is cheap and has no
side effects; the heavy modules load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY: dict[str, str] = {
    # models
    "CAVMAE": "cavmae.models",
    "CAVMAEFT": "cavmae.models",
    # configs
    "ModelConfig": "cavmae.config",
    "FeatureConfig": "cavmae.config",
    # checkpoints
    "load_model": "cavmae.checkpoint",
    "save_model": "cavmae.checkpoint",
    # errors
    "CavmaeError": "cavmae.errors",
    "MediaError": "cavmae.errors",
    "CheckpointError": "cavmae.errors",
    "ConfigError": "cavmae.errors",
    # media and inference
    "load_clip": "cavmae.media",
    "Predictor": "cavmae.inference",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'cavmae' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return __all__
