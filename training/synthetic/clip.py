"""Rendering of whole AV-Shapes clips with their ground truth, and the fast training path."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from numpy.typing import ArrayLike

from cavmae.errors import ConfigError
from training.synthetic.audio import render_audio
from training.synthetic.classes import CLASSES
from training.synthetic.config import AVShapesConfig
from training.synthetic.plan import ClipPlan, plan_clip
from training.synthetic.visual import object_boxes, render_frames

__all__ = ["SyntheticClip", "render_clip", "render_arrays", "patch_mask", "default_frame_times",
           "audio_plan"]


@dataclass(frozen=True, eq=False)
class SyntheticClip:
    """One rendered clip with its ground truth.

    Attributes:
        waveform: mono audio in [-1, 1], shape (N,) float32.
        frames: RGB frames, shape (K, H, W, 3) uint8.
        fps: frame rate of the default frame grid.
        labels: classes of the visible sound-source objects (2 for a mixture).
        label_names: their display names.
        boxes: (x0, y0, x1, y1) pixel boxes of every object, shape (K, n_obj, 4) float32;
            objects are ordered as ``object_classes``: sources first, then a distractor.
        masks: pixels of the objects that make the clip's sound, shape (K, H, W) bool, at every
            frame whether or not the sound plays at that moment; all False for a mismatched
            clip (no visible object makes its sound).
        active: whether a class sound plays at each frame time, shape (K,) bool.
        mismatched: True when the audio comes from another clip.
        audio_source_index: index of the clip whose sounds the audio holds (== ``index``
            unless mismatched).
        index: clip index; seed: dataset seed.
        sample_rate: audio sample rate.
        frame_times: time of each frame in seconds, shape (K,).
        object_classes: class of every object, length n_obj.
        num_sources: number of source objects (the first entries of ``object_classes``).
        visual_active: whether each source object is shown sounding, shape (K, num_sources).
        glowing: whether each object glows, shape (K, n_obj): sources while they sound,
            distractors at their own silent glow times.
        object_sizes: instance size of every object in [0, 1] (sets a source's pitch).
        object_shades: instance shade of every object in [0, 1] (sets a source's loudness).
        audio_labels: classes heard in the audio (== ``labels`` unless mismatched).
        events: per audio source, its sound events as (start, end) seconds.
    """

    waveform: np.ndarray
    frames: np.ndarray
    fps: float
    labels: list[int]
    label_names: list[str]
    boxes: np.ndarray
    masks: np.ndarray
    active: np.ndarray
    mismatched: bool
    audio_source_index: int
    index: int
    seed: int
    sample_rate: int
    frame_times: np.ndarray
    object_classes: list[int]
    num_sources: int
    visual_active: np.ndarray
    glowing: np.ndarray
    object_sizes: list[float]
    object_shades: list[float]
    audio_labels: list[int]
    events: list[list[tuple[float, float]]]


def default_frame_times(cfg: AVShapesConfig) -> np.ndarray:
    """Returns the default frame times k / fps, k = 0..K-1, in seconds, shape (K,)."""
    return np.arange(cfg.num_frames, dtype=np.float64) / cfg.fps


def _resolve_times(cfg: AVShapesConfig, times: ArrayLike | None) -> np.ndarray:
    if times is None:
        return default_frame_times(cfg)
    times = np.atleast_1d(np.asarray(times, dtype=np.float64))
    if times.ndim != 1 or np.any(times < 0) or np.any(times > cfg.duration_s):
        raise ConfigError(f"frame_times must be a 1-D list of times in [0, {cfg.duration_s}] s")
    return times


def audio_plan(plan: ClipPlan, cfg: AVShapesConfig) -> ClipPlan:
    """Returns the plan whose sources are heard: the clip's own, or its mismatch partner's."""
    if not plan.mismatched:
        return plan
    return plan_clip(plan.audio_source_index, plan.seed, cfg, allow_mismatch=False)


def render_clip(
    index: int, seed: int, cfg: AVShapesConfig | None = None, frame_times: ArrayLike | None = None
) -> SyntheticClip:
    """Renders clip ``index`` of dataset ``seed`` with all of its ground truth.

    Args:
        index: clip index (>= 0); the first class is ``index % cfg.num_classes``.
        seed: dataset seed (>= 0).
        cfg: dataset configuration (defaults when None).
        frame_times: times in seconds to render, shape (K,); the default is every k / fps.

    Returns:
        The clip; see :class:`SyntheticClip`.

    Raises:
        ConfigError: on a negative index or seed, or frame times outside the clip.
    """
    cfg = cfg or AVShapesConfig()
    times = _resolve_times(cfg, frame_times)
    plan = plan_clip(index, seed, cfg)
    heard = audio_plan(plan, cfg)
    frames, masks = render_frames(plan, cfg, times)
    assert masks is not None  # requested above
    if plan.mismatched:
        masks[:] = False
    visual_active = np.stack([o.active_at(times, cfg.fps) for o in plan.sources], axis=1)
    active = np.any([o.active_at(times, cfg.fps) for o in heard.sources], axis=0)  # (K,)
    return SyntheticClip(
        waveform=render_audio(heard, cfg),
        frames=frames,
        fps=float(cfg.fps),
        labels=list(plan.labels),
        label_names=[CLASSES[c].name for c in plan.labels],
        boxes=object_boxes(plan, cfg, times),
        masks=masks,
        active=active,
        mismatched=plan.mismatched,
        audio_source_index=plan.audio_source_index,
        index=index,
        seed=seed,
        sample_rate=cfg.sample_rate,
        frame_times=times,
        object_classes=[o.class_id for o in plan.objects],
        num_sources=len(plan.sources),
        visual_active=visual_active,
        glowing=np.stack([o.active_at(times, cfg.fps) for o in plan.objects], axis=1),
        object_sizes=[o.size for o in plan.objects],
        object_shades=[o.shade for o in plan.objects],
        audio_labels=list(heard.labels),
        events=[[(s / cfg.fps, e / cfg.fps) for s, e in o.events] for o in heard.sources],
    )


def render_arrays(
    index: int, seed: int, cfg: AVShapesConfig | None = None, frame_times: ArrayLike | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Renders only the waveform and the requested frames: the fast path for training.

    The arrays equal those of :func:`render_clip` at the same times.

    Args:
        index: clip index (>= 0).
        seed: dataset seed (>= 0).
        cfg: dataset configuration (defaults when None).
        frame_times: times in seconds to render, shape (K,); the default is every k / fps.

    Returns:
        ``(waveform, frames)``: (N,) float32 and (K, H, W, 3) uint8.
    """
    cfg = cfg or AVShapesConfig()
    times = _resolve_times(cfg, frame_times)
    plan = plan_clip(index, seed, cfg)
    frames, _ = render_frames(plan, cfg, times, want_masks=False)
    return render_audio(audio_plan(plan, cfg), cfg), frames


def patch_mask(clip: SyntheticClip, frame_idx: int, grid: int = 14) -> np.ndarray:
    """Returns the fraction of each patch of a frame covered by the sound-source objects.

    With the default 224 x 224 frames and grid 14, a patch is one 16 x 16 ViT patch, in the
    row-major order of the visual tokens.

    Args:
        clip: a rendered clip.
        frame_idx: frame index into ``clip.frames``.
        grid: patches per side.

    Returns:
        Coverage in [0, 1], shape (grid, grid) float32; its sum times the patch area is the
        object area in pixels.
    """
    mask = clip.masks[frame_idx].astype(np.float32)  # (H, W)
    h, w = mask.shape
    if h % grid == 0 and w % grid == 0:
        return mask.reshape(grid, h // grid, grid, w // grid).mean(axis=(1, 3))
    return cv2.resize(mask, (grid, grid), interpolation=cv2.INTER_AREA)
