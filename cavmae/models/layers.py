"""Transformer layers with the official CAV-MAE parameter names.

Paper: Gong et al., "Contrastive Audio-Visual Masked Autoencoder", ICLR 2023.
Reference implementation: github.com/YuanGongND/cav-mae ``src/models/cav_mae.py`` (``Block``),
built on timm 0.4.5 ``Attention``/``Mlp``. Spec: OFFICIAL_CAVMAE.md §1.1.

``Attention`` is a small own module (not ``timm.layers.Attention``) because the app needs the
attention weights, which timm's fused path does not return. Its parameter names (``qkv``,
``proj``) and the fused-qkv row layout ([q | k | v], heads contiguous) are timm's, so the
official checkpoints load unchanged. The MLP is ``timm.layers.Mlp`` (``fc1``, ``fc2``).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from torch import nn

__all__ = ["ATTN_IMPLS", "AttnImpl", "Attention", "Block", "Modality", "validate_attn_impl"]

AttnImpl = Literal["sdpa", "eager"]
ATTN_IMPLS: tuple[str, ...] = ("sdpa", "eager")

#: Which LayerNorm pair a Block uses: ``None`` joint, ``"a"`` audio, ``"v"`` visual.
Modality = Literal["a", "v"] | None

# Parity: OFFICIAL_CAVMAE.md §1.1 -- modality None -> norm1/norm2, 'a' -> _a, 'v' -> _v.
_NORM_NAMES: dict[str | None, tuple[str, str]] = {
    None: ("norm1", "norm2"),
    "a": ("norm1_a", "norm2_a"),
    "v": ("norm1_v", "norm2_v"),
}


def validate_attn_impl(name: str) -> str:
    """Return ``name`` if it is a known attention implementation.

    Raises:
        ValueError: if ``name`` is not ``"sdpa"`` or ``"eager"``.
    """
    if name not in ATTN_IMPLS:
        raise ValueError(f"unknown attn_impl {name!r}; choose one of {ATTN_IMPLS}")
    return name


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (timm 0.4.5 semantics).

    Args:
        dim: token width D.
        num_heads: number of heads; the scale is ``(D / num_heads) ** -0.5``.
        qkv_bias: bias on the qkv projection (True everywhere in CAV-MAE).
        attn_impl: ``"sdpa"`` (``F.scaled_dot_product_attention``) or ``"eager"``
            (explicit softmax, the same maths).
    """

    def __init__(
        self, dim: int, num_heads: int, qkv_bias: bool = True, attn_impl: AttnImpl = "sdpa"
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.attn_impl: str = validate_attn_impl(attn_impl)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Split the fused projection into q, k, v of shape (B, h, N, hd)."""
        B, N, D = x.shape
        # Parity: qkv rows are [q | k | v], heads contiguous (OFFICIAL_CAVMAE.md §1.1).
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim)  # (B, N, 3, h, hd)
        qkv = qkv.permute(2, 0, 3, 1, 4)  # (3, B, h, N, hd)
        return qkv[0], qkv[1], qkv[2]

    def attention_weights(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax attention weights of this layer.

        Args:
            x: (B, N, D) normalised input tokens.

        Returns:
            (B, h, N, N) weights; each row sums to 1.
        """
        q, k, _ = self._qkv(x)
        attn = (q * self.scale) @ k.transpose(-2, -1)  # (B, h, N, N)
        return attn.softmax(dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Self-attention over (B, N, D) tokens; returns (B, N, D)."""
        B, N, D = x.shape
        q, k, v = self._qkv(x)  # (B, h, N, hd) each
        if self.attn_impl == "sdpa":
            out = F.scaled_dot_product_attention(q, k, v)  # (B, h, N, hd)
        else:
            attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # (B, h, N, N)
            out = attn @ v  # (B, h, N, hd)
        out = out.transpose(1, 2).reshape(B, N, D)  # (B, N, D)
        return self.proj(out)


class Block(nn.Module):
    """Pre-norm transformer block with three LayerNorm pairs (OFFICIAL_CAVMAE.md §1.1).

    Every block owns ``norm1``/``norm1_a``/``norm1_v`` and ``norm2``/``norm2_a``/``norm2_v``,
    even where only one pair is ever used (modality-specific and decoder blocks): the official
    checkpoints carry all six. Registration order equals the official state_dict order.

    Args:
        dim: token width D.
        num_heads: attention heads.
        mlp_ratio: hidden width of the MLP relative to D.
        norm_layer: LayerNorm factory (official: ``nn.LayerNorm``, eps 1e-5).
        attn_impl: attention implementation, see :class:`Attention`.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        attn_impl: AttnImpl = "sdpa",
    ) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.norm1_a = norm_layer(dim)
        self.norm1_v = norm_layer(dim)
        self.attn = Attention(dim, num_heads, qkv_bias=True, attn_impl=attn_impl)
        self.norm2 = norm_layer(dim)
        self.norm2_a = norm_layer(dim)
        self.norm2_v = norm_layer(dim)
        # Parity: exact (erf) GELU, no dropout, no drop-path (OFFICIAL_CAVMAE.md §1.1).
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=nn.GELU)

    def _norms(self, modality: Modality) -> tuple[nn.Module, nn.Module]:
        """The (pre-attention, pre-MLP) LayerNorms for ``modality``."""
        names = _NORM_NAMES.get(modality)
        if names is None:
            raise ValueError(f"unknown modality {modality!r}; use None (joint), 'a' or 'v'")
        return getattr(self, names[0]), getattr(self, names[1])

    def forward(self, x: torch.Tensor, modality: Modality = None) -> torch.Tensor:
        """Apply the block to (B, N, D) tokens with the norm pair of ``modality``.

        Raises:
            ValueError: for a modality other than None, ``"a"`` or ``"v"``.
        """
        n1, n2 = self._norms(modality)
        x = x + self.attn(n1(x))  # (B, N, D)
        x = x + self.mlp(n2(x))  # (B, N, D)
        return x

    def attention_weights(self, x: torch.Tensor, modality: Modality = None) -> torch.Tensor:
        """Attention weights (B, h, N, N) this block computes on (B, N, D) input tokens."""
        n1, _ = self._norms(modality)
        return self.attn.attention_weights(n1(x))
