"""Patch-level "where is the sound" maps of one frame: cosine and occlusion.

Two maps answer "which patches of the frame go with the sound", on the embeddings that the
contrastive loss trains (the audio and visual streams after the shared layer, mean-pooled,
L2-normalised; OFFICIAL_CAVMAE.md §2.3):

- ``cosine``: the cosine similarity of the clip's audio embedding with each visual patch token.
  It is the usual view and costs one visual forward pass. The loss only constrains the *mean*
  of the patch tokens, so single tokens need not point towards the audio embedding: on the
  bundled demo model the object patches are the least similar ones.
- ``occlusion``: how much the audio-visual similarity drops when one patch is left out. CAV-MAE's
  encoder takes any subset of patches (masked patches are dropped, not zeroed), so leaving a
  patch out is a plain forward pass on the other L - 1 tokens, with no grey filler that the model
  never saw in training. It costs L visual forward passes (batched), so it suits the small
  models; for the full-size model on a CPU it takes tens of seconds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F

__all__ = [
    "SoundMapMethod",
    "SOUND_MAP_METHODS",
    "audio_embedding",
    "patch_cosine",
    "cosine_map",
    "occlusion_embeddings",
    "occlusion_drops",
    "occlusion_map",
]

SoundMapMethod = Literal["cosine", "occlusion"]
SOUND_MAP_METHODS: tuple[str, ...] = ("cosine", "occlusion")


def audio_embedding(model: torch.nn.Module, fbank: torch.Tensor) -> torch.Tensor:
    """Contrastive audio embedding: (B, T, F) fbank -> (B, D), L2-normalised, float32."""
    tokens = model.encode_shared(model.encode_audio_specific(fbank), "audio")  # (B, L_a, D)
    return F.normalize(tokens.float().mean(1), dim=-1)  # (B, D)


def _visual_embedding(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Embedded visual tokens (B, N, D) -> contrastive visual embedding (B, D), normalised."""
    out = model.encode_shared(model.encode_modality(tokens, model.blocks_v), "visual")  # (B, N, D)
    return F.normalize(out.float().mean(1), dim=-1)  # (B, D)


def patch_cosine(audio: torch.Tensor, visual_tokens: torch.Tensor) -> torch.Tensor:
    """Cosine of normalised audio embeddings (B, D) with each visual token (B, L_v, D) -> (B, L_v)."""
    return torch.einsum("bd,bld->bl", audio, F.normalize(visual_tokens.float(), dim=-1))


@torch.inference_mode()
def cosine_map(model: torch.nn.Module, fbank: torch.Tensor, frame: torch.Tensor) -> torch.Tensor:
    """Cosine of the audio embedding with each visual patch token.

    Args:
        model: a pretraining ``CAVMAE`` (the ``cavmae.models`` backbone API).
        fbank: (1, T, F) normalised fbank.
        frame: (1, 3, S, S) normalised frame.

    Returns:
        (L_v,) float32 cosine similarities, patch order row-major over the visual grid.
    """
    a = audio_embedding(model, fbank)  # (1, D)
    v = model.encode_shared(model.encode_visual_specific(frame), "visual")  # (1, L_v, D)
    return patch_cosine(a, v)[0]  # (L_v,)


@torch.inference_mode()
def occlusion_embeddings(
    model: torch.nn.Module,
    frame: torch.Tensor,
    chunk: int = 28,
    progress: Callable[[float], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Contrastive visual embeddings of a frame, whole and with each patch left out.

    They do not depend on the audio, so one call serves any number of audio embeddings.

    Args:
        model: a pretraining ``CAVMAE``.
        frame: (1, 3, S, S) normalised frame.
        chunk: patches left out per batched forward pass (memory vs speed).
        progress: called with the fraction done after each chunk.

    Returns:
        ``(full, without)``: (D,) the whole frame's embedding and (L_v, D) row j the embedding
        without patch j; float32, L2-normalised.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    x = model.embed_visual(frame)[0]  # (L_v, D): patch embedding + position + modality
    n = x.shape[0]
    full = _visual_embedding(model, x[None])[0]  # (D,)
    idx = torch.arange(n, device=x.device)
    parts = []
    for start in range(0, n, chunk):
        left_out = idx[start : start + chunk]  # (c,)
        keep = idx[None, :].expand(len(left_out), n)  # (c, L_v)
        keep = keep[keep != left_out[:, None]].view(len(left_out), n - 1)  # (c, L_v - 1)
        parts.append(_visual_embedding(model, x[keep]))  # (c, D)
        if progress is not None:
            progress(min(1.0, (start + len(left_out)) / n))
    return full, torch.cat(parts)  # (D,), (L_v, D)


def occlusion_map(
    model: torch.nn.Module,
    fbank: torch.Tensor,
    frame: torch.Tensor,
    chunk: int = 28,
    progress: Callable[[float], None] | None = None,
) -> torch.Tensor:
    """Drop of the clip's audio-visual cosine when each patch is left out of the frame.

    Args:
        model: a pretraining ``CAVMAE``.
        fbank: (1, T, F) normalised fbank.
        frame: (1, 3, S, S) normalised frame.
        chunk: patches left out per batched forward pass (memory vs speed).
        progress: called with the fraction done after each chunk.

    Returns:
        (L_v,) float32 on CPU: ``cos(a, v_all) - cos(a, v_without_patch_j)``; positive where
        the patch makes the frame match its sound better.
    """
    with torch.inference_mode():
        a = audio_embedding(model, fbank)[0]  # (D,)
    full, without = occlusion_embeddings(model, frame, chunk, progress)  # (D,), (L_v, D)
    return occlusion_drops(a, full, without)


def occlusion_drops(audio: torch.Tensor, full: torch.Tensor, without: torch.Tensor) -> torch.Tensor:
    """(D,) normalised audio embedding + :func:`occlusion_embeddings` -> (L_v,) drops, on CPU."""
    return (full @ audio - without @ audio).cpu()  # (L_v,)
