"""Model and feature configuration: frozen dataclasses with named presets.

``ModelConfig`` carries exactly the constructor arguments of the official ``CAVMAE`` /
``CAVMAEFT`` classes (OFFICIAL_CAVMAE.md §1.2, §1.3), under the official names and defaults,
plus three extensions that the official code hard-codes: ``num_mel_bins`` (128),
``shared_depth`` (``12 - modality_specific_depth``) and ``label_dim`` (``None`` for a
pretraining model with a decoder). Everything derived (token grids, patch counts) is a
property, never a stored number.

``FeatureConfig`` carries the preprocessing constants that must travel with a model
(OFFICIAL_CAVMAE.md §4): sample rate, mel bins, target length, the fbank normalisation
statistics and the image statistics. They are stored in our checkpoints' metadata, never in
the state_dict, so official key sets stay unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cavmae.errors import ConfigError

#: Values of the inference ``precision`` option (Predictor, CLI, app); see
#: :func:`cavmae.accel.resolve_precision`.
PRECISIONS: tuple[str, ...] = ("auto", "float32", "bfloat16")


def check_precision(precision: str) -> str:
    """``precision`` itself if it is one of :data:`PRECISIONS`.

    Raises:
        ConfigError: for any other value.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    return precision

__all__ = [
    "ModelConfig",
    "FeatureConfig",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MODEL_PRESETS",
    "cavmae_base",
    "cavmae_ft_base",
    "cavmae_tiny",
    "cavmae_demo",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: The official encoder has 12 blocks in total; ``blocks_u`` gets ``12 - modality_specific_depth``.
OFFICIAL_TOTAL_DEPTH = 12


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a CAV-MAE model (pretraining or fine-tuning).

    Field names and defaults are the official constructor's, so ``ModelConfig(**kwargs)``
    accepts any official call. ``label_dim=None`` means the pretraining model (``CAVMAE``, with
    decoder); an integer means the classifier (``CAVMAEFT``).
    """

    img_size: int = 224
    audio_length: int = 1024  # fbank frames (time axis) fed to the model
    patch_size: int = 16  # both modalities
    in_chans: int = 3
    embed_dim: int = 768
    modality_specific_depth: int = 11
    num_heads: int = 12
    decoder_embed_dim: int = 512
    decoder_depth: int = 8
    decoder_num_heads: int = 16
    mlp_ratio: float = 4.0
    # Official pretraining recipes use True; CAVMAE's constructor default is False.
    norm_pix_loss: bool = False
    # Positional tables trainable? Official default: False for CAVMAE, True for CAVMAEFT.
    tr_pos: bool = False
    # --- extensions (hard-coded in the official code) ---
    num_mel_bins: int = 128  # fbank frequency bins (the official code assumes 128)
    shared_depth: int | None = None  # None -> OFFICIAL_TOTAL_DEPTH - modality_specific_depth
    label_dim: int | None = None  # None -> pretraining model with decoder

    def __post_init__(self) -> None:
        p = self.patch_size
        if self.audio_length % p or self.num_mel_bins % p:
            raise ConfigError(
                f"audio_length ({self.audio_length}) and num_mel_bins ({self.num_mel_bins}) "
                f"must be multiples of patch_size ({p})"
            )
        if self.img_size % p:
            raise ConfigError(f"img_size ({self.img_size}) must be a multiple of patch_size ({p})")
        if self.embed_dim % self.num_heads:
            raise ConfigError(
                f"embed_dim ({self.embed_dim}) must be divisible by num_heads ({self.num_heads})"
            )
        if self.decoder_embed_dim % self.decoder_num_heads:
            raise ConfigError(
                f"decoder_embed_dim ({self.decoder_embed_dim}) must be divisible by "
                f"decoder_num_heads ({self.decoder_num_heads})"
            )
        if self.modality_specific_depth < 0 or self.num_shared_blocks < 1:
            raise ConfigError(
                "need modality_specific_depth >= 0 and at least one shared block, got "
                f"modality_specific_depth={self.modality_specific_depth}, "
                f"shared_depth={self.shared_depth}"
            )
        if self.label_dim is not None and self.label_dim < 1:
            raise ConfigError(f"label_dim must be positive, got {self.label_dim}")

    # --- derived geometry -------------------------------------------------------------
    @property
    def num_shared_blocks(self) -> int:
        """Depth of ``blocks_u``."""
        if self.shared_depth is not None:
            return self.shared_depth
        return OFFICIAL_TOTAL_DEPTH - self.modality_specific_depth

    @property
    def audio_grid(self) -> tuple[int, int]:
        """(frequency patches, time patches), e.g. (8, 64) for 128 x 1024."""
        return self.num_mel_bins // self.patch_size, self.audio_length // self.patch_size

    @property
    def visual_grid(self) -> tuple[int, int]:
        """(rows, columns) of image patches, e.g. (14, 14)."""
        n = self.img_size // self.patch_size
        return n, n

    @property
    def num_audio_patches(self) -> int:
        """L_a, e.g. 512."""
        f, t = self.audio_grid
        return f * t

    @property
    def num_visual_patches(self) -> int:
        """L_v, e.g. 196."""
        h, w = self.visual_grid
        return h * w

    @property
    def is_pretrain(self) -> bool:
        """True for the pretraining model (decoder, no head)."""
        return self.label_dim is None

    # --- conversion -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict (stored in checkpoint metadata)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown model config keys: {unknown}")
        return cls(**d)

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class FeatureConfig:
    """Preprocessing constants of a model (OFFICIAL_CAVMAE.md §4.1-4.5)."""

    sample_rate: int = 16000
    num_mel_bins: int = 128
    target_length: int = 1024  # fbank frames after pad/crop
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    # Parity: (x - mean) / std with std NOT doubled (unlike AST); OFFICIAL_CAVMAE.md §4.4 step 8.
    fbank_mean: float = -5.081
    fbank_std: float = 4.4849
    img_size: int = 224
    image_mean: tuple[float, float, float] = IMAGENET_MEAN
    image_std: tuple[float, float, float] = IMAGENET_STD
    num_frames: int = 10  # frames per 10 s clip in the official extraction
    clip_seconds: float = 10.0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict (tuples become lists)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown feature config keys: {unknown}")
        d = dict(d)
        for k in ("image_mean", "image_std"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)

    @classmethod
    def for_model(cls, model: ModelConfig, **changes: Any) -> FeatureConfig:
        """The default feature settings matching a model's input geometry."""
        return cls(
            num_mel_bins=model.num_mel_bins,
            target_length=model.audio_length,
            img_size=model.img_size,
            **changes,
        )


# --- presets ----------------------------------------------------------------------------


def cavmae_base(**overrides: Any) -> ModelConfig:
    """Official full-size pretraining model (all published CAVMAE checkpoints)."""
    return ModelConfig(**overrides)


def cavmae_ft_base(label_dim: int = 527, **overrides: Any) -> ModelConfig:
    """Official full-size classifier (``CAVMAEFT`` defaults: ``tr_pos=True``)."""
    return ModelConfig(label_dim=label_dim, tr_pos=overrides.pop("tr_pos", True), **overrides)


def cavmae_tiny(**overrides: Any) -> ModelConfig:
    """A very small model for unit tests (runs in milliseconds on CPU)."""
    kw: dict[str, Any] = dict(
        img_size=32,
        audio_length=64,
        num_mel_bins=32,
        patch_size=16,
        embed_dim=32,
        modality_specific_depth=1,
        shared_depth=1,
        num_heads=2,
        decoder_embed_dim=16,
        decoder_depth=1,
        decoder_num_heads=2,
    )
    kw.update(overrides)
    return ModelConfig(**kw)


def cavmae_demo(**overrides: Any) -> ModelConfig:
    """The small model bundled in ``assets/``: standard input size, narrow and shallow."""
    kw: dict[str, Any] = dict(
        embed_dim=192,
        modality_specific_depth=3,
        shared_depth=1,
        num_heads=3,
        decoder_embed_dim=128,
        decoder_depth=2,
        decoder_num_heads=4,
        norm_pix_loss=False,
    )
    kw.update(overrides)
    return ModelConfig(**kw)


MODEL_PRESETS: dict[str, Callable[..., ModelConfig]] = {
    "cavmae_base": cavmae_base,
    "cavmae_ft_base": cavmae_ft_base,
    "cavmae_tiny": cavmae_tiny,
    "cavmae_demo": cavmae_demo,
}
