"""CAV-MAE losses: masked reconstruction and audio-visual InfoNCE (OFFICIAL_CAVMAE.md §2.4, §2.5).

Reference implementation: ``CAVMAE.forward_mae_loss`` and ``CAVMAE.forward_contrastive`` in
``src/models/cav_mae.py``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = [
    "ContrastGather",
    "CONTRAST_TEMPERATURE",
    "mae_loss",
    "contrastive_loss",
    "patch_contrastive_loss",
]

#: Fixed (not learned) InfoNCE temperature of the official model.
CONTRAST_TEMPERATURE = 0.05

#: Maps local (B, D) representations to ``(global (B_total, D), offset)``: the local sample i
#: sits at row ``offset + i`` of the global tensor (``rank * B`` for an all-gather). It must
#: keep autograd to the local rows (e.g. replace the local chunk of an all-gather by the input).
ContrastGather = Callable[[torch.Tensor], tuple[torch.Tensor, int]]


def mae_loss(
    target: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor, norm_pix: bool = False
) -> torch.Tensor:
    """Mean squared error over removed patches.

    Args:
        target: (B, L, P) patchified input.
        pred: (B, L, P) decoder prediction.
        mask: (B, L), 1 = removed (counted), 0 = kept.
        norm_pix: standardise each target patch over its P values first, with the unbiased
            variance and eps 1e-6 inside the square root (official ``norm_pix_loss``).

    Returns:
        Scalar ``sum(per-patch MSE * mask) / sum(mask)``; 0 when nothing is removed (the
        official code divides by zero there; with a mask it gives the identical value).
    """
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)  # (B, L, 1)
        # Parity: unbiased variance, eps 1e-6 inside the sqrt (OFFICIAL_CAVMAE.md §2.4).
        var = target.var(dim=-1, keepdim=True)  # (B, L, 1)
        target = (target - mean) / (var + 1.0e-6) ** 0.5  # (B, L, P)
    loss = ((pred - target) ** 2).mean(dim=-1)  # (B, L)
    # clamp_min(1) only changes the 0/0 case: a non-empty mask sums to an integer >= 1.
    return (loss * mask).sum() / mask.sum().clamp_min(1)


def _one_direction(
    query: torch.Tensor, keys: torch.Tensor, offset: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """InfoNCE of local ``query`` (B, D) against ``keys`` (B_total, D); positives at offset + i."""
    B = query.shape[0]
    # Parity: logits laid out (keys, queries) and softmax over dim 0 (OFFICIAL_CAVMAE.md §2.5).
    total = keys @ query.t() / CONTRAST_TEMPERATURE  # (B_total, B)
    target = torch.arange(B, device=query.device) + offset  # (B,)
    log_prob = F.log_softmax(total, dim=0)  # (B_total, B)
    nce = -log_prob[target, torch.arange(B, device=query.device)].mean()
    acc = (total.argmax(dim=0) == target).sum() / B
    return nce, acc


def contrastive_loss(
    audio_rep: torch.Tensor,
    video_rep: torch.Tensor,
    bidirect_contrast: bool = False,
    gather: ContrastGather | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Audio-visual InfoNCE with temperature 0.05 (unweighted).

    The default direction is the official one, video -> audio: for each video j the softmax
    runs over the audio batch and the positive is audio j (``log_softmax(A V^T, dim=0)``).

    Args:
        audio_rep: (B, D) pooled audio representations.
        video_rep: (B, D) pooled visual representations.
        bidirect_contrast: also compute audio -> video and average losses and accuracies.
        gather: optional :data:`ContrastGather` (e.g. a torch.distributed all-gather injected
            by the trainer) that widens the negatives to the global batch. The model never
            imports torch.distributed.

    Returns:
        (nce scalar, c_acc scalar): the loss and the fraction of queries whose most similar key
        is their positive. Computed in float32 also under autocast.
    """
    with _float32(audio_rep):
        return _contrastive_float32(audio_rep.float(), video_rep.float(), bidirect_contrast, gather)


def _float32(x: torch.Tensor) -> torch.autocast:
    """Autocast off on ``x``'s device: similarities of embeddings that are 0.99 alike need
    float32 (bfloat16 keeps about 3 digits, fewer than the logits' spread early in training)."""
    return torch.autocast(device_type=x.device.type, enabled=False)


def _contrastive_float32(
    audio_rep: torch.Tensor,
    video_rep: torch.Tensor,
    bidirect_contrast: bool,
    gather: ContrastGather | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    a = F.normalize(audio_rep, dim=-1)  # (B, D)
    v = F.normalize(video_rep, dim=-1)  # (B, D)
    a_keys, offset = gather(a) if gather is not None else (a, 0)  # (B_total, D)
    nce, acc = _one_direction(v, a_keys, offset)  # video -> audio
    if not bidirect_contrast:
        return nce, acc
    v_keys, offset_v = gather(v) if gather is not None else (v, 0)  # (B_total, D)
    nce_2, acc_2 = _one_direction(a, v_keys, offset_v)  # audio -> video
    return (nce + nce_2) / 2, (acc + acc_2) / 2


def patch_contrastive_loss(
    audio_tokens: torch.Tensor,
    visual_tokens: torch.Tensor,
    temperature: float = CONTRAST_TEMPERATURE,
    top_k: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Audio-to-patch InfoNCE (multiple-instance, as EZ-VSL): not part of the official objective.

    A clip's audio embedding (its tokens mean-pooled, as the official contrastive term pools
    them) is compared with every visual patch token of every clip; the score of an
    (audio i, frame j) pair is the best patch of frame j. The positive is frame i, both ways.
    This trains single patch tokens, the ones of the object that makes the sound, to point
    towards the audio embedding: what the "where is the sound" cosine map shows. With
    ``top_k > 1`` the score is the mean of frame j's ``top_k`` best patches (all of them when
    fewer are visible), so an object's region, not one patch, has to match the sound.

    Args:
        audio_tokens: (B, K_a, D) audio tokens after the shared layer.
        visual_tokens: (B, K_v, D) visual tokens after the shared layer (the visible ones).
        temperature: softmax temperature of the pair scores.
        top_k: how many best patches of a frame make its score (1: the best one, EZ-VSL's max).

    Returns:
        (nce scalar, acc scalar): the mean of the two directions' losses, and the fraction of
        audio clips whose best-scoring frame is their own.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    with _float32(audio_tokens):
        a = F.normalize(audio_tokens.float().mean(dim=1), dim=-1)  # (B, D)
        v = F.normalize(visual_tokens.float(), dim=-1)  # (B, K_v, D)
        cos = torch.einsum("id,jkd->ijk", a, v)  # (B_a, B_v, K_v)
        best = cos.topk(min(top_k, cos.shape[-1]), dim=-1).values  # (B_a, B_v, k)
        scores = best.mean(dim=-1) / temperature  # (B_a, B_v)
        target = torch.arange(a.shape[0], device=a.device)  # (B,)
        nce = (F.cross_entropy(scores, target) + F.cross_entropy(scores.t(), target)) / 2
        acc = (scores.argmax(dim=1) == target).float().mean()
    return nce, acc
