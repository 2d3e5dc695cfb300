"""Helpers shared by several test modules (tiny models with the standard input geometry)."""

from __future__ import annotations

from pathlib import Path

import torch

from cavmae.checkpoint import save_model
from cavmae.config import FeatureConfig, ModelConfig
from cavmae.models import CAVMAE, CAVMAEFT

# Standard input geometry (1024 x 128 fbank, 224 x 224 frames), very narrow network.
TINY_STD = ModelConfig(
    embed_dim=32,
    modality_specific_depth=1,
    shared_depth=1,
    num_heads=2,
    decoder_embed_dim=16,
    decoder_depth=1,
    decoder_num_heads=2,
)


def make_tiny_models(directory: Path, num_classes: int = 4, seed: int = 0) -> tuple[Path, Path]:
    """Saves a random tiny pretraining model and classifier; returns their paths."""
    torch.manual_seed(seed)
    feats = FeatureConfig.for_model(TINY_STD)
    pt = directory / "pt.safetensors"
    ft = directory / "ft.safetensors"
    save_model(CAVMAE.from_config(TINY_STD), pt, features=feats)
    cfg = TINY_STD.replace(label_dim=num_classes, tr_pos=True)
    save_model(CAVMAEFT.from_config(cfg), ft, features=feats, multi_label=False)
    return pt, ft
