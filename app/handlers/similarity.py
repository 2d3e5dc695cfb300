"""Audio-visual similarity: the temporal matrix, "where is the sound", contrastive scores, attention.

- :func:`temporal`: audio of window i against the frame of window j over the whole file.
- :func:`where_sound`: a per-patch map of one frame against the clip's audio (cosine, or
  occlusion: the similarity lost without the patch), overlaid on the frame (the slider picks
  the frame, i.e. the time).
- :func:`contrastive`: the clip's matched audio-visual score against its audio paired with the
  frames of other clips (the samples, or the session's retrieval folder), and the reverse.
- :func:`attention`: attention of the last shared (joint) block between the two modalities.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from app import plots
from app.handlers.common import SessionState, clip_for, progress_fn, session, user_errors
from app.handlers.display import geometry_for, render_frame
from app.services import Services
from cavmae import viz
from cavmae.errors import ConfigError, NoAudioStream, NoVideoStream

__all__ = ["temporal", "where_sound", "contrastive", "attention", "attention_maps"]

logger = logging.getLogger(__name__)


@user_errors
def temporal(
    services: Services,
    state: SessionState | None,
    window_s: float,
    hop_s: float,
    progress: Any = None,
) -> tuple[SessionState, Any, str]:
    """Temporal audio x visual similarity matrix of the whole file.

    Args:
        window_s / hop_s: Window length and hop in seconds; 0 picks defaults for the duration.
    """
    state = session(services, state)
    predictor, clip = clip_for(services, state, progress_fn(progress))
    w = float(window_s) if window_s and window_s > 0 else None
    h = float(hop_s) if hop_s and hop_s > 0 else None
    if (w is None) != (h is None):
        w = w or h
        h = h or w
    out = predictor.temporal_similarity(
        state.clip_path, window_s=w, hop_s=h, progress=progress_fn(progress)
    )
    m = np.asarray(out["matrix"])
    diag = float(np.mean(np.diag(m))) if m.size else float("nan")
    off = float((m.sum() - np.trace(m)) / max(m.size - len(m), 1)) if len(m) > 1 else float("nan")
    text = (
        f"{len(m)} window{'s' if len(m) != 1 else ''} of {out['window_s']:g} s "
        f"(hop {out['hop_s']:g} s). Mean cosine on the "
        f"diagonal (same time) **{diag:.3f}**, off the diagonal **{off:.3f}**: a model that links "
        "sound and image at the right time shows a brighter diagonal."
    )
    return state, plots.similarity_matrix(m, out["starts"], out["window_s"]), text


@user_errors
def where_sound(
    services: Services,
    state: SessionState | None,
    frame_index: float,
    method: str = "cosine",
    progress: Any = None,
) -> tuple[SessionState, np.ndarray, str]:
    """Patch-level "where is the sound" map of one frame, overlaid on it (enlarged).

    Args:
        method: "cosine" (audio embedding vs each patch) or "occlusion" (drop of the
            audio-visual cosine when the patch is left out; one encoder pass per patch).
    """
    state = session(services, state)
    predictor, clip = clip_for(services, state)
    if not clip.has_audio or not clip.has_video:
        raise (NoAudioStream if not clip.has_audio else NoVideoStream)(
            "the sound map needs a clip with both audio and video"
        )
    k = int(np.clip(int(frame_index or 0), 0, clip.frames.shape[0] - 1))
    method = (method or "cosine").lower()
    sim = predictor.patch_similarity(clip, k, method=method, progress=progress_fn(progress))
    geom = geometry_for(predictor)
    img = render_frame(sim.overlay, geom)
    g = np.asarray(sim.grid)
    r, c = np.unravel_index(int(np.argmax(g)), g.shape)
    what = (
        "cosine from" if method == "cosine" else "cosine drop when a patch is left out, from"
    )
    text = (
        f"Frame {k + 1}/{clip.frames.shape[0]} at {sim.time_s:.1f} s · {what} {g.min():.3f} to "
        f"{g.max():.3f} · hottest patch: row {r + 1}, column {c + 1}."
    )
    return state, img, text


def _other_embeddings(
    services: Services, state: SessionState, predictor: Any, progress: Any
) -> list[tuple[str, Any]]:
    """(name, ClipEmbedding) of other clips with audio and video: the samples and the session's
    retrieval folder, through the shared (incremental) indexes."""
    folders = [services.settings.samples_dir]
    if state.index_folder:
        folders.append(Path(state.index_folder))
    me = str(Path(state.clip_path or "").resolve())
    out: dict[str, tuple[str, Any]] = {}
    for folder in folders:
        if not folder.is_dir():
            continue
        assert state.model is not None
        index, _ = services.indexes.update(state.model, folder, predictor, progress)
        for key in index.keys():
            if key == me or key in out:
                continue
            e = index.get(key)
            if e.audio is not None and e.visual is not None:
                out[key] = (Path(key).name, e)
    return list(out.values())


@user_errors
def contrastive(
    services: Services, state: SessionState | None, max_clips: int = 24, progress: Any = None
) -> tuple[SessionState, Any, str]:
    """The clip's matched audio-visual cosine against mismatched pairs with other clips."""
    state = session(services, state)
    predictor, clip = clip_for(services, state, progress_fn(progress))
    if not clip.has_audio or not clip.has_video:
        raise ConfigError("the contrastive score needs a clip with both audio and video")
    others = _other_embeddings(services, state, predictor, progress_fn(progress))[: int(max_clips)]
    if not others:
        raise ConfigError(
            "no other clips with audio and video to compare with: add samples, or index a "
            "folder in the Retrieve tab (its clips are used here)"
        )
    mine = predictor.embed(clip)
    names = [n for n, _ in others]
    a_to_v = [float(mine.audio @ e.visual) for _, e in others]
    v_to_a = [float(e.audio @ mine.visual) for _, e in others]
    matched = float(mine.audio @ mine.visual)
    rank = 1 + sum(s > matched for s in a_to_v)
    text = (
        f"Matched pair (this clip's audio with its own frame): **{matched:.3f}**. Its audio with "
        f"{len(names)} other clips' frames: mean {np.mean(a_to_v):.3f}, max {np.max(a_to_v):.3f}. "
        f"The true frame ranks **{rank}/{len(names) + 1}** for this audio."
    )
    return state, plots.contrastive_scores(matched, names, a_to_v, v_to_a), text


@torch.inference_mode()
def attention_maps(predictor: Any, clip: Any, frame_index: int) -> dict[str, np.ndarray]:
    """Cross-modal attention of the last shared block on the unmasked clip (mean over heads).

    Returns:
        ``audio_to_visual`` (gh, gw): attention the audio tokens pay to each visual patch;
        ``visual_to_audio`` (F/p, T/p): attention the visual tokens pay to each audio patch;
        ``cross_share`` (2,): the share of attention that crosses modalities, for audio and
        visual queries.
    """
    cfg = (predictor.pretrain or predictor.classifier).config
    attn = predictor.attention(clip, frame_index, "joint").mean(0)  # (N, N)
    la = cfg.num_audio_patches
    a2v = attn[:la, la:]  # (L_a, L_v)
    v2a = attn[la:, :la]  # (L_v, L_a)
    return {
        "audio_to_visual": a2v.mean(0).reshape(cfg.visual_grid),
        "visual_to_audio": v2a.mean(0).reshape(cfg.audio_grid),
        "cross_share": np.array([a2v.sum(1).mean(), v2a.sum(1).mean()]),
    }


@user_errors
def attention(
    services: Services, state: SessionState | None, frame_index: float
) -> tuple[SessionState, np.ndarray, np.ndarray, str]:
    """Attention maps of the shared layer: on the frame (from audio) and the spectrogram (from video)."""
    state = session(services, state)
    predictor, clip = clip_for(services, state)
    if not clip.has_audio or not clip.has_video:
        raise ConfigError("attention between modalities needs a clip with both audio and video")
    k = int(np.clip(int(frame_index or 0), 0, clip.frames.shape[0] - 1))
    maps = attention_maps(predictor, clip, k)
    geom = geometry_for(predictor)
    frame = clip.frames_uint8[k]
    on_frame = render_frame(viz.heatmap_overlay(frame, maps["audio_to_visual"], alpha=0.55), geom)
    spec_img = viz.spectrogram_image(clip.fbank.numpy())  # (F, T, 3), low bins at the bottom
    heat = maps["visual_to_audio"][::-1]  # same vertical flip as the image
    on_spec = viz.heatmap_overlay(spec_img, np.ascontiguousarray(heat), alpha=0.6)
    on_spec = np.repeat(np.repeat(on_spec, geom.sy, axis=0), geom.sx, axis=1)
    share_a, share_v = maps["cross_share"]
    text = (
        f"Last shared block, mean over heads, frame {k + 1}. Audio tokens give "
        f"**{share_a:.1%}** of their attention to visual tokens; visual tokens give "
        f"**{share_v:.1%}** to audio tokens."
    )
    return state, on_frame, on_spec, text
