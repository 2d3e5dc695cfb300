"""Build the right model class from a :class:`~cavmae.config.ModelConfig`."""

from __future__ import annotations

from typing import Any

from cavmae.config import ModelConfig
from cavmae.models.cavmae import CAVMAE
from cavmae.models.cavmae_ft import CAVMAEFT

__all__ = ["build_model"]


def build_model(cfg: ModelConfig, **kw: Any) -> CAVMAE | CAVMAEFT:
    """``CAVMAE`` when ``cfg.label_dim`` is None (pretraining, with decoder), else ``CAVMAEFT``.

    Args:
        cfg: model configuration.
        **kw: extra constructor arguments (``attn_impl``, ``norm_layer``) or field overrides.

    Returns:
        The freshly initialised model.
    """
    if kw.get("label_dim", cfg.label_dim) is None:
        return CAVMAE.from_config(cfg, **kw)
    return CAVMAEFT.from_config(cfg, **kw)
