"""CAVMAEFT: the CAV-MAE encoder with a classification head (fine-tuning and inference).

Paper: Gong et al., "Contrastive Audio-Visual Masked Autoencoder", ICLR 2023.
Reference implementation: ``CAVMAEFT`` in ``src/models/cav_mae.py``.
Spec: OFFICIAL_CAVMAE.md §1.3 (parameters), §2.8 (modes), §3.2 (loading a pretrained CAVMAE).

Each mode is a short composition of the backbone stages. The modality-specific part is public
(:meth:`~cavmae.models.backbone.CAVMAEBackbone.encode_audio_specific`,
:meth:`~cavmae.models.backbone.CAVMAEBackbone.encode_visual_specific`) and
:meth:`CAVMAEFT.forward_from_specific` finishes from there, so that inference can encode the
audio once and reuse it for every video frame:
``forward(a, v, mode) == forward_from_specific(encode_audio_specific(a),
encode_visual_specific(v), mode)``.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from cavmae.config import ModelConfig
from cavmae.errors import ConfigError
from cavmae.models.backbone import CAVMAEBackbone
from cavmae.models.layers import AttnImpl

__all__ = ["CAVMAEFT", "FTMode", "FT_MODES", "FeatMode"]

FTMode = Literal["multimodal", "audioonly", "videoonly", "missingaudioonly", "missingvideoonly"]
#: mode -> (needs audio, needs visual)
_MODE_INPUTS: dict[str, tuple[bool, bool]] = {
    "multimodal": (True, True),
    "audioonly": (True, False),
    "videoonly": (False, True),
    "missingaudioonly": (True, False),
    "missingvideoonly": (False, True),
}
#: mode -> shared-block streams it runs (for :meth:`CAVMAEFT.unused_parameter_names`)
_MODE_STREAMS: dict[str, set[str]] = {
    "multimodal": {"joint"},
    "audioonly": {"audio"},
    "videoonly": {"visual"},
    "missingaudioonly": {"joint", "audio"},
    "missingvideoonly": {"joint", "visual"},
}
FT_MODES: tuple[str, ...] = tuple(_MODE_INPUTS)
FeatMode = Literal["av", "a"]


def _require(t: torch.Tensor | None, what: str, mode: str) -> torch.Tensor:
    """Return ``t`` or raise ValueError naming the mode that needs it."""
    if t is None:
        raise ValueError(f"mode {mode!r} needs {what}, got None")
    return t


def _check_mode(mode: str) -> None:
    """Raise ValueError for an unknown fine-tuning mode."""
    if mode not in _MODE_INPUTS:
        raise ValueError(f"unknown mode {mode!r}; choose one of {FT_MODES}")


class CAVMAEFT(CAVMAEBackbone):
    """Classifier: CAV-MAE encoder, mean pooling, ``mlp_head`` = LayerNorm + Linear.

    Positional arguments and defaults are the official ones (OFFICIAL_CAVMAE.md §1.3); note
    ``tr_pos=True``: the positional tables are fine-tuned.

    Args:
        label_dim: number of classes C.
        img_size: image side.
        audio_length: fbank frames T.
        patch_size: p.
        in_chans: image channels.
        embed_dim: encoder width D.
        modality_specific_depth: depth of ``blocks_a`` / ``blocks_v``.
        num_heads: encoder heads.
        mlp_ratio: MLP hidden width / D.
        norm_layer: LayerNorm factory (eps 1e-5).
        norm_pix_loss: unused (kept for the official signature).
        tr_pos: make ``pos_embed_a/v`` trainable.
        num_mel_bins: fbank bins F.
        shared_depth: depth of ``blocks_u`` (None: 12 - modality_specific_depth).
        attn_impl: "sdpa" or "eager".

    Raises:
        ConfigError: for an inconsistent geometry or a non-positive label_dim.
    """

    def __init__(
        self,
        label_dim: int,
        img_size: int = 224,
        audio_length: int = 1024,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        modality_specific_depth: int = 11,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        norm_pix_loss: bool = False,
        tr_pos: bool = True,
        *,
        num_mel_bins: int = 128,
        shared_depth: int | None = None,
        attn_impl: AttnImpl = "sdpa",
    ) -> None:
        config = ModelConfig(
            img_size=img_size,
            audio_length=audio_length,
            patch_size=patch_size,
            in_chans=in_chans,
            embed_dim=embed_dim,
            modality_specific_depth=modality_specific_depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            norm_pix_loss=norm_pix_loss,
            tr_pos=tr_pos,
            num_mel_bins=num_mel_bins,
            shared_depth=shared_depth,
            label_dim=label_dim,
        )
        super().__init__(config, norm_layer, attn_impl)
        # Parity: plain nn.LayerNorm (eps 1e-5) + Linear (OFFICIAL_CAVMAE.md §1.3).
        self.mlp_head = nn.Sequential(nn.LayerNorm(embed_dim), nn.Linear(embed_dim, label_dim))
        self.initialize_weights()

    @classmethod
    def from_config(cls, cfg: ModelConfig, **kw: Any) -> CAVMAEFT:
        """Build from a :class:`ModelConfig` (decoder fields are ignored); ``kw`` overrides
        fields or adds ``norm_layer`` / ``attn_impl``.

        Raises:
            ConfigError: if no ``label_dim`` is given.
        """
        args = cfg.to_dict()
        args.update(kw)
        for name in ("decoder_embed_dim", "decoder_depth", "decoder_num_heads"):
            args.pop(name)
        if args.get("label_dim") is None:
            raise ConfigError("CAVMAEFT needs label_dim (number of classes); the config has None")
        return cls(**args)

    # ------------------------------------------------------------------ helpers
    def head_parameters(self) -> list[nn.Parameter]:
        """Parameters of ``mlp_head`` (the official recipe gives them head_lr x the LR)."""
        return list(self.mlp_head.parameters())

    def unused_parameter_names(self, mode: FTMode = "multimodal") -> set[str]:
        """Parameters that ``forward(..., mode)`` never touches (no gradient by design).

        Raises:
            ValueError: for an unknown mode.
        """
        _check_mode(mode)
        need_a, need_v = _MODE_INPUTS[mode]
        modalities = {m for m, need in (("a", need_a), ("v", need_v)) if need}
        return self._unused_backbone_names(modalities, _MODE_STREAMS[mode])

    # ------------------------------------------------------------------ stages
    @staticmethod
    def pool(tokens: torch.Tensor) -> torch.Tensor:
        """Mean over tokens (there is no CLS token): (B, N, D) -> (B, D)."""
        return tokens.mean(dim=1)

    def head(self, feat: torch.Tensor) -> torch.Tensor:
        """Logits from pooled features: (B, D) -> (B, C)."""
        return self.mlp_head(feat)

    def forward_from_specific(
        self,
        a_tokens: torch.Tensor | None,
        v_tokens: torch.Tensor | None,
        mode: FTMode = "multimodal",
    ) -> torch.Tensor:
        """Finish a forward pass from modality-specific tokens (OFFICIAL_CAVMAE.md §2.8).

        Args:
            a_tokens: (B, L_a, D) from :meth:`encode_audio_specific`; may be None when the
                mode does not use audio.
            v_tokens: (B, L_v, D) from :meth:`encode_visual_specific`; may be None when the
                mode does not use video.
            mode: 'multimodal', 'audioonly', 'videoonly', 'missingaudioonly' (only audio
                present for a multimodally fine-tuned model) or 'missingvideoonly'.

        Returns:
            (B, C) raw logits.

        Raises:
            ValueError: for an unknown mode or a missing input.
        """
        _check_mode(mode)
        match mode:
            case "multimodal":
                a = _require(a_tokens, "audio tokens", mode)
                v = _require(v_tokens, "video tokens", mode)
                # Parity: mean over all L_a + L_v joint tokens (OFFICIAL_CAVMAE.md §2.8).
                x = torch.cat([a, v], dim=1)  # (B, L_a + L_v, D)
                feat = self.pool(self.encode_shared(x, "joint"))  # (B, D)
            case "audioonly":
                a = _require(a_tokens, "audio tokens", mode)
                feat = self.pool(self.encode_shared(a, "audio"))  # (B, D)
            case "videoonly":
                v = _require(v_tokens, "video tokens", mode)
                feat = self.pool(self.encode_shared(v, "visual"))  # (B, D)
            case "missingaudioonly":
                a = _require(a_tokens, "audio tokens", mode)
                u = self.pool(self.encode_shared(a, "joint"))  # (B, D)
                feat = (u + self.pool(self.encode_shared(a, "audio"))) / 2  # (B, D)
            case _:  # "missingvideoonly"
                v = _require(v_tokens, "video tokens", mode)
                u = self.pool(self.encode_shared(v, "joint"))  # (B, D)
                feat = (u + self.pool(self.encode_shared(v, "visual"))) / 2  # (B, D)
        return self.head(feat)  # (B, C)

    def forward(
        self,
        a: torch.Tensor | None,
        v: torch.Tensor | None,
        mode: FTMode = "multimodal",
    ) -> torch.Tensor:
        """Classify a clip.

        Args:
            a: (B, T, F) fbank (may be None for video-only modes).
            v: (B, C, H, W) image (may be None for audio-only modes).
            mode: see :meth:`forward_from_specific`.

        Returns:
            (B, C) raw logits (no sigmoid/softmax).

        Raises:
            ValueError: for an unknown mode or a missing input.
        """
        _check_mode(mode)
        need_a, need_v = _MODE_INPUTS[mode]
        a_tokens = v_tokens = None
        if need_a:
            a_tokens = self.encode_audio_specific(_require(a, "audio", mode))  # (B, L_a, D)
        if need_v:
            v_tokens = self.encode_visual_specific(_require(v, "an image", mode))  # (B, L_v, D)
        return self.forward_from_specific(a_tokens, v_tokens, mode)

    def forward_feat(  # type: ignore[override]
        self, a: torch.Tensor, v: torch.Tensor | None = None, mode: FeatMode = "av"
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Unmasked modality-specific token features.

        Args:
            a: (B, T, F) fbank.
            v: (B, C, H, W) image (ignored for mode 'a').
            mode: 'av' -> (audio (B, L_a, D), visual (B, L_v, D)); 'a' -> audio (B, L_a, D).

        Raises:
            ValueError: for an unknown mode or a missing image in mode 'av'.
        """
        if mode == "a":
            return self.encode_shared(self.encode_audio_specific(a), "audio")  # (B, L_a, D)
        if mode != "av":
            raise ValueError(f"unknown forward_feat mode {mode!r}; use 'av' or 'a'")
        if v is None:
            raise ValueError("forward_feat(mode='av') needs an image")
        return super().forward_feat(a, v)
