"""Named outputs of the pretraining model (tuples, so DDP and torch.compile handle them)."""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["PretrainOutput", "EncoderOutput", "InpaintOutput"]


class PretrainOutput(NamedTuple):
    """Result of :meth:`CAVMAE.forward`, in the official return order.

    ``loss_c`` is already multiplied by the contrastive weight; ``loss_mae`` by the MAE weight
    (``loss_mae_a``/``loss_mae_v`` are unweighted). Skipped terms are 0.
    """

    loss: torch.Tensor
    loss_mae: torch.Tensor
    loss_mae_a: torch.Tensor
    loss_mae_v: torch.Tensor
    loss_c: torch.Tensor
    mask_a: torch.Tensor  # (B, L_a), 1 = removed
    mask_v: torch.Tensor  # (B, L_v)
    c_acc: torch.Tensor


class EncoderOutput(NamedTuple):
    """Result of :meth:`CAVMAE.forward_encoder` (official order)."""

    x: torch.Tensor  # (B, K_a + K_v, D) joint stream after ``norm``: kept audio, kept visual
    mask_a: torch.Tensor  # (B, L_a)
    ids_restore_a: torch.Tensor  # (B, L_a)
    mask_v: torch.Tensor  # (B, L_v)
    ids_restore_v: torch.Tensor  # (B, L_v)
    ca: torch.Tensor  # (B, K_a, D) audio-only stream after ``norm_a``
    cv: torch.Tensor  # (B, K_v, D) visual-only stream after ``norm_v``


class InpaintOutput(NamedTuple):
    """Result of :meth:`CAVMAE.forward_inpaint` (official order)."""

    pred_a: torch.Tensor  # (B, L_a, P_a) predictions for every audio patch, token order
    pred_v: torch.Tensor  # (B, L_v, P_v)
    mask_a: torch.Tensor  # (B, L_a)
    mask_v: torch.Tensor  # (B, L_v)
    loss_a: torch.Tensor  # MAE loss over removed audio patches (obeys norm_pix_loss)
    loss_v: torch.Tensor
