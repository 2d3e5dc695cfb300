"""The CAV-MAE encoder shared by the pretraining and the fine-tuning model.

Paper: Gong et al., "Contrastive Audio-Visual Masked Autoencoder", ICLR 2023.
Reference implementation: ``CAVMAE`` / ``CAVMAEFT`` in ``src/models/cav_mae.py``.
Spec: OFFICIAL_CAVMAE.md §1.2, §1.3, §1.5, §1.6, §2.7, §2.8.

The encoder is composed of named stages:

* :meth:`CAVMAEBackbone.embed_audio` / :meth:`~CAVMAEBackbone.embed_visual`: patch embedding +
  fixed positional table + modality token;
* :meth:`~CAVMAEBackbone.encode_modality`: the modality-specific blocks (``norm1``/``norm2``);
* :meth:`~CAVMAEBackbone.encode_shared`: the shared blocks ``blocks_u`` with the norm pair of
  a stream ("joint" ``norm1``/``norm2`` + ``norm``, "audio" ``_a`` + ``norm_a``, "visual"
  ``_v`` + ``norm_v``), properly chained when there is more than one shared block.

Parameter registration order reproduces the official state_dict order: a module's own
parameters come first, so the subclasses' tokens (``mask_token``, ...) still follow
``pos_embed_v``, and their child modules follow ``norm``.
"""

from __future__ import annotations

from typing import Literal, cast

import torch
from timm.layers import PatchEmbed
from torch import nn

from cavmae.config import ModelConfig
from cavmae.models.layers import (
    ATTN_IMPLS,
    Attention,
    AttnImpl,
    Block,
    Modality,
    validate_attn_impl,
)
from cavmae.models.patchify import fbank_to_patch_input
from cavmae.models.pos_embed import sincos_2d

__all__ = ["Stream", "STREAMS", "CAVMAEBackbone"]

Stream = Literal["joint", "audio", "visual"]
#: stream -> (Block modality, final norm attribute). Parity: OFFICIAL_CAVMAE.md §9 pitfall 4.
_STREAM_NORMS: dict[str, tuple[Modality, str]] = {
    "joint": (None, "norm"),
    "audio": ("a", "norm_a"),
    "visual": ("v", "norm_v"),
}
STREAMS: tuple[str, ...] = tuple(_STREAM_NORMS)


class CAVMAEBackbone(nn.Module):
    """Audio and visual embeddings, modality-specific blocks and shared blocks.

    Not used on its own: :class:`~cavmae.models.CAVMAE` and :class:`~cavmae.models.CAVMAEFT`
    extend it. Geometry comes from ``config`` (``audio_grid``, ``visual_grid``,
    ``num_shared_blocks``).

    Args:
        config: the model configuration.
        norm_layer: LayerNorm factory (official ``nn.LayerNorm``, eps 1e-5).
        attn_impl: ``"sdpa"`` or ``"eager"`` for every attention layer.
    """

    def __init__(
        self,
        config: ModelConfig,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        attn_impl: AttnImpl = "sdpa",
    ) -> None:
        super().__init__()
        validate_attn_impl(attn_impl)
        self.config = config
        c = config
        D = c.embed_dim
        self.modality_a = nn.Parameter(torch.zeros(1, 1, D))
        self.modality_v = nn.Parameter(torch.zeros(1, 1, D))
        # Parity: frozen tables stay nn.Parameter (not buffers) so the official keys match.
        self.pos_embed_a = nn.Parameter(
            torch.zeros(1, c.num_audio_patches, D), requires_grad=c.tr_pos
        )
        self.pos_embed_v = nn.Parameter(
            torch.zeros(1, c.num_visual_patches, D), requires_grad=c.tr_pos
        )
        # Parity: the audio "image" is (F, T) with one channel (OFFICIAL_CAVMAE.md §1.5).
        self.patch_embed_a = PatchEmbed(
            img_size=(c.num_mel_bins, c.audio_length),
            patch_size=c.patch_size,
            in_chans=1,
            embed_dim=D,
        )
        self.patch_embed_v = PatchEmbed(
            img_size=c.img_size, patch_size=c.patch_size, in_chans=c.in_chans, embed_dim=D
        )

        def blocks(n: int) -> nn.ModuleList:
            return nn.ModuleList(
                Block(D, c.num_heads, c.mlp_ratio, norm_layer, attn_impl) for _ in range(n)
            )

        self.blocks_a = blocks(c.modality_specific_depth)
        self.blocks_v = blocks(c.modality_specific_depth)
        self.blocks_u = blocks(c.num_shared_blocks)
        self.norm_a = norm_layer(D)
        self.norm_v = norm_layer(D)
        self.norm = norm_layer(D)

    # ------------------------------------------------------------------ initialisation
    def _sincos_tables(self) -> list[tuple[nn.Parameter, tuple[int, int]]]:
        """(table, grid) pairs filled with fixed sin-cos values at initialisation."""
        return [
            (self.pos_embed_a, self.config.audio_grid),
            (self.pos_embed_v, self.config.visual_grid),
        ]

    def _token_parameters(self) -> list[nn.Parameter]:
        """Learned tokens initialised with N(0, 0.02)."""
        return [self.modality_a, self.modality_v]

    def initialize_weights(self) -> None:
        """Official initialisation (OFFICIAL_CAVMAE.md §1.2 "Initialisation order").

        Sin-cos tables; xavier-uniform patch-embedding weights viewed as (out, in*p*p) (biases
        keep PyTorch's Conv2d default); N(0, 0.02) tokens (plain, not truncated, normal);
        xavier-uniform Linear weights with zero bias; LayerNorm weight 1, bias 0.
        """
        with torch.no_grad():
            for table, grid in self._sincos_tables():
                values = sincos_2d(table.shape[-1], grid, device=table.device)  # (L, D)
                table.copy_(values.to(table.dtype).unsqueeze(0))
            for embed in (self.patch_embed_a, self.patch_embed_v):
                w = embed.proj.weight
                nn.init.xavier_uniform_(w.view(w.shape[0], -1))
            for token in self._token_parameters():
                nn.init.normal_(token, std=0.02)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        """Per-module init applied by :meth:`initialize_weights`."""
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    # ------------------------------------------------------------------ helpers
    @property
    def attn_impl(self) -> str:
        """The attention implementation of the first attention layer."""
        for m in self.modules():
            if isinstance(m, Attention):
                return m.attn_impl
        return "sdpa"

    def set_attn_impl(self, name: AttnImpl) -> None:
        """Switch every attention layer to ``"sdpa"`` or ``"eager"`` (same maths, same weights).

        Raises:
            ValueError: for an unknown name.
        """
        if name not in ATTN_IMPLS:
            raise ValueError(f"unknown attn_impl {name!r}; choose one of {ATTN_IMPLS}")
        for m in self.modules():
            if isinstance(m, Attention):
                m.attn_impl = name

    def no_weight_decay(self) -> set[str]:
        """Names of token and positional parameters (timm convention for optimiser groups)."""
        return {"modality_a", "modality_v", "pos_embed_a", "pos_embed_v"}

    def _unused_backbone_names(self, modalities: set[str], streams: set[str]) -> set[str]:
        """Backbone parameters untouched by a forward that embeds ``modalities`` ('a', 'v')
        and runs the shared blocks on ``streams`` ('joint', 'audio', 'visual')."""
        side_norms = ("norm1_a", "norm1_v", "norm2_a", "norm2_v")
        used_shared = {
            s: {
                "joint": ("norm1", "norm2"),
                "audio": ("norm1_a", "norm2_a"),
                "visual": ("norm1_v", "norm2_v"),
            }[s]
            for s in streams
        }
        used_shared_norms = {n for pair in used_shared.values() for n in pair}
        used_final = {_STREAM_NORMS[s][1] for s in streams}
        unused: set[str] = set()
        for name, _ in self.named_parameters():
            parts = name.split(".")
            top = parts[0]
            branch = {
                "modality_a": "a",
                "pos_embed_a": "a",
                "patch_embed_a": "a",
                "blocks_a": "a",
                "modality_v": "v",
                "pos_embed_v": "v",
                "patch_embed_v": "v",
                "blocks_v": "v",
            }.get(top)
            if branch is not None and branch not in modalities:
                unused.add(name)
            elif top in ("blocks_a", "blocks_v") and parts[2] in side_norms:
                unused.add(name)
            elif (
                top == "blocks_u"
                and parts[2].startswith("norm")
                and (parts[2] not in used_shared_norms)
            ):
                unused.add(name)
            elif top in ("norm", "norm_a", "norm_v") and top not in used_final:
                unused.add(name)
        return unused

    # ------------------------------------------------------------------ stages
    def embed_audio(self, audio: torch.Tensor) -> torch.Tensor:
        """Audio tokens before any block.

        Args:
            audio: (B, T, F) normalised fbank.

        Returns:
            (B, L_a, D): patch embedding + ``pos_embed_a`` + ``modality_a``, frequency-major.
        """
        x = self.patch_embed_a(fbank_to_patch_input(audio))  # (B, L_a, D)
        # Parity: positional table first, then the modality token (OFFICIAL_CAVMAE.md §2.2).
        x = x + self.pos_embed_a  # (B, L_a, D)
        return x + self.modality_a  # (B, L_a, D)

    def embed_visual(self, imgs: torch.Tensor) -> torch.Tensor:
        """Visual tokens before any block: (B, C, H, W) image -> (B, L_v, D)."""
        x = self.patch_embed_v(imgs)  # (B, L_v, D)
        x = x + self.pos_embed_v  # (B, L_v, D)
        return x + self.modality_v  # (B, L_v, D)

    @staticmethod
    def encode_modality(tokens: torch.Tensor, blocks: nn.ModuleList) -> torch.Tensor:
        """Run modality-specific ``blocks`` (``norm1``/``norm2``) on (B, N, D) tokens."""
        for blk in blocks:
            tokens = blk(tokens)  # (B, N, D)
        return tokens

    def encode_shared(self, tokens: torch.Tensor, norm: Stream = "joint") -> torch.Tensor:
        """Run the shared blocks with the norm pair of ``norm``, then that stream's final norm.

        The blocks are chained. (The official contrastive branch feeds the *input* tokens to
        every shared block and keeps the last output: identical at the official depth 1,
        wrong beyond; OFFICIAL_CAVMAE.md §2.2.)

        Args:
            tokens: (B, N, D).
            norm: "joint" (``norm1``/``norm2``, ``norm``), "audio" (``_a``, ``norm_a``) or
                "visual" (``_v``, ``norm_v``).

        Returns:
            (B, N, D).

        Raises:
            ValueError: for an unknown stream.
        """
        if norm not in _STREAM_NORMS:
            raise ValueError(f"unknown stream {norm!r}; choose one of {STREAMS}")
        modality, final = _STREAM_NORMS[norm]
        for blk in self.blocks_u:
            tokens = blk(tokens, modality)  # (B, N, D)
        return getattr(self, final)(tokens)  # (B, N, D)

    def encode_audio_specific(self, audio: torch.Tensor) -> torch.Tensor:
        """Unmasked audio through embedding and ``blocks_a``: (B, T, F) -> (B, L_a, D)."""
        return self.encode_modality(self.embed_audio(audio), self.blocks_a)

    def encode_visual_specific(self, imgs: torch.Tensor) -> torch.Tensor:
        """Unmasked image through embedding and ``blocks_v``: (B, C, H, W) -> (B, L_v, D)."""
        return self.encode_modality(self.embed_visual(imgs), self.blocks_v)

    def forward_feat(self, a: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unmasked token features of the modality-specific streams (retrieval features).

        Args:
            a: (B, T, F) fbank.
            v: (B, C, H, W) image.

        Returns:
            (audio tokens (B, L_a, D) after ``norm_a``, visual tokens (B, L_v, D) after
            ``norm_v``); not pooled.
        """
        a_tok = self.encode_shared(self.encode_audio_specific(a), "audio")  # (B, L_a, D)
        v_tok = self.encode_shared(self.encode_visual_specific(v), "visual")  # (B, L_v, D)
        return a_tok, v_tok

    @torch.no_grad()
    def shared_attention(
        self,
        audio: torch.Tensor | None,
        imgs: torch.Tensor | None,
        stream: Stream = "joint",
    ) -> torch.Tensor:
        """Attention weights of the last shared block on unmasked inputs.

        Args:
            audio: (B, T, F) fbank; may be None for ``stream="visual"``.
            imgs: (B, C, H, W) image; may be None for ``stream="audio"``.
            stream: "joint" (tokens: L_a audio then L_v visual), "audio" or "visual".

        Returns:
            (B, h, N, N) attention weights (rows sum to 1); N = L_a + L_v, L_a or L_v.

        Raises:
            ValueError: for an unknown stream or a missing input.
        """
        if stream not in _STREAM_NORMS:
            raise ValueError(f"unknown stream {stream!r}; choose one of {STREAMS}")
        if stream in ("joint", "audio") and audio is None:
            raise ValueError(f"shared_attention(stream={stream!r}) needs audio")
        if stream in ("joint", "visual") and imgs is None:
            raise ValueError(f"shared_attention(stream={stream!r}) needs imgs")
        parts = []
        if audio is not None and stream != "visual":
            parts.append(self.encode_audio_specific(audio))  # (B, L_a, D)
        if imgs is not None and stream != "audio":
            parts.append(self.encode_visual_specific(imgs))  # (B, L_v, D)
        x = torch.cat(parts, dim=1)  # (B, N, D)
        modality = _STREAM_NORMS[stream][0]
        for blk in self.blocks_u[:-1]:
            x = blk(x, modality)  # (B, N, D)
        last = cast(Block, self.blocks_u[-1])
        return last.attention_weights(x, modality)  # (B, h, N, N)
