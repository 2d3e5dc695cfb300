"""Mask & reconstruct: sliders, hand-drawn masks, the loss sweep and the audio player.

Every function takes the shared :class:`~app.services.Services`, the session's state and plain
UI values, and returns plain values (numpy images, strings, plotly figures, file paths), so
tests call them without a browser. The clip is decoded once (:func:`~app.handlers.common.clip_for`);
a slider change only runs the model and the numpy renderers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from app import plots
from app.handlers.common import SessionState, clip_for, progress_fn, session, user_errors
from app.handlers.display import DisplayGeometry, geometry_for, render_frame, render_spectrogram
from app.services import Services
from cavmae.errors import ConfigError
from cavmae.inference import MaskSpec
from cavmae.wav import write_wav

__all__ = [
    "ReconstructView",
    "reconstruct",
    "click_audio",
    "click_visual",
    "mask_action",
    "render_audio",
    "loss_sweep",
    "AUDIO_MODES",
    "MASK_ACTIONS",
]

AUDIO_MODES = ("unstructured", "time", "freq", "tf")
MASK_ACTIONS = ("sliders", "clear", "invert", "random")
Target = Literal["audio", "visual", "both"]


@dataclass(frozen=True)
class ReconstructView:
    """What the Mask & reconstruct tab shows after one model call.

    Images are RGB uint8, spectrograms (F*sy, T*sx, 3) and frames (S*sv, S*sv, 3).
    """

    spec_original: np.ndarray
    spec_masked: np.ndarray
    spec_reconstruction: np.ndarray
    spec_composite: np.ndarray
    frame_original: np.ndarray
    frame_masked: np.ndarray
    frame_reconstruction: np.ndarray
    frame_composite: np.ndarray
    summary: str
    seconds: float

    def images(self) -> tuple[np.ndarray, ...]:
        """The eight images in UI order (audio four, then visual four)."""
        return (
            self.spec_original, self.spec_masked, self.spec_reconstruction, self.spec_composite,
            self.frame_original, self.frame_masked, self.frame_reconstruction, self.frame_composite,
        )  # fmt: skip


def _spec(
    state: SessionState, ratio_a: float, ratio_v: float, mode_a: str, seed: float
) -> MaskSpec:
    if mode_a not in AUDIO_MODES:
        raise ConfigError(f"audio mask mode must be one of {AUDIO_MODES}, got {mode_a!r}")
    return MaskSpec(
        ratio_a=float(np.clip(ratio_a, 0, 100)) / 100.0,
        ratio_v=float(np.clip(ratio_v, 0, 100)) / 100.0,
        # A hand-drawn mask names the patches itself; the model refuses it with a structured mode.
        mode_a="unstructured" if state.hand_a is not None else mode_a,  # type: ignore[arg-type]
        seed=int(seed or 0),
        patches_a=state.hand_a,
        patches_v=state.hand_v,
    )


def _fmt_loss(x: float) -> str:
    return "n/a" if not np.isfinite(x) else f"{x:.4f}"


def _summary(rec: Any, geom: DisplayGeometry, state: SessionState, seconds: float) -> str:
    na, nv = int(rec.mask_a.sum()), int(rec.mask_v.sum())
    la, lv = geom.num_audio_tokens, geom.num_visual_tokens
    how_a = "by hand" if state.hand_a is not None else "random"
    how_v = "by hand" if state.hand_v is not None else "random"
    lines = [
        f"**Audio**: {na}/{la} patches masked ({how_a}), reconstruction MSE "
        f"**{_fmt_loss(rec.loss_a)}** &nbsp;·&nbsp; **Visual**: {nv}/{lv} patches masked "
        f"({how_v}), MSE **{_fmt_loss(rec.loss_v)}** &nbsp;·&nbsp; {seconds * 1000:.0f} ms",
    ]
    if rec.norm_pix_denormalised:
        lines.append(
            "The model predicts per-patch normalised values (norm_pix_loss); they are shown "
            "de-normalised with each original patch's mean and variance."
        )
    if rec.note:
        lines.append(f"Note: {rec.note}.")
    return "\n\n".join(lines)


def _run(
    services: Services,
    state: SessionState,
    spec: MaskSpec,
    frame_index: float | None,
    progress: Any = None,
) -> ReconstructView:
    predictor, clip = clip_for(services, state, progress_fn(progress))
    geom = geometry_for(predictor)
    k = None
    if clip.has_video:
        k = (
            int(np.clip(int(frame_index or 0), 0, clip.frames.shape[0] - 1))
            if frame_index is not None
            else None
        )
    t0 = time.perf_counter()
    rec = predictor.reconstruct(clip, spec, frame_index=k)
    seconds = time.perf_counter() - t0
    state.last_mask_a = rec.mask_a > 0.5
    state.last_mask_v = rec.mask_v > 0.5
    state.last_rec = rec
    return ReconstructView(
        spec_original=render_spectrogram(rec.spec_original, geom),
        spec_masked=render_spectrogram(rec.spec_original, geom, rec.pixel_mask_a, grid=True),
        spec_reconstruction=render_spectrogram(rec.spec_reconstruction, geom),
        spec_composite=render_spectrogram(rec.spec_composite, geom),
        frame_original=render_frame(rec.frame_original, geom),
        frame_masked=render_frame(rec.frame_original, geom, rec.pixel_mask_v, grid=True),
        frame_reconstruction=render_frame(rec.frame_reconstruction, geom),
        frame_composite=render_frame(rec.frame_composite, geom),
        summary=_summary(rec, geom, state, seconds),
        seconds=seconds,
    )


@user_errors
def reconstruct(
    services: Services,
    state: SessionState | None,
    ratio_a: float,
    ratio_v: float,
    mode_a: str,
    seed: float,
    frame_index: float | None,
    from_sliders: bool = False,
    progress: Any = None,
) -> tuple[SessionState, ReconstructView]:
    """Mask and reconstruct the session's clip.

    Args:
        ratio_a / ratio_v: Mask ratios in percent (0-100; 100 hides a whole modality).
        mode_a: Audio masking mode ("unstructured", "time", "freq", "tf").
        seed: Seed of the random masks.
        frame_index: Which of the clip's frames to reconstruct.
        from_sliders: A slider moved: drop hand-drawn masks and follow the sliders.
    """
    state = session(services, state)
    if from_sliders:
        state.hand_a = state.hand_v = None
    return state, _run(
        services, state, _spec(state, ratio_a, ratio_v, mode_a, seed), frame_index, progress
    )


def _toggle(mask: np.ndarray | None, last: np.ndarray | None, size: int, token: int) -> np.ndarray:
    base = (
        mask
        if mask is not None
        else (last if last is not None and last.size == size else np.zeros(size, bool))
    )
    out = np.array(base, dtype=bool, copy=True)
    out[token] = ~out[token]
    return out


@user_errors
def click_audio(
    services: Services,
    state: SessionState | None,
    x: float,
    y: float,
    ratio_a: float,
    ratio_v: float,
    mode_a: str,
    seed: float,
    frame_index: float | None,
) -> tuple[SessionState, ReconstructView]:
    """Toggle the audio patch under display pixel (x, y) of the masked spectrogram, then reconstruct."""
    state = session(services, state)
    predictor, _ = clip_for(services, state)
    geom = geometry_for(predictor)
    token = geom.audio_token_at(x, y)
    if token is not None:
        state.hand_a = _toggle(state.hand_a, state.last_mask_a, geom.num_audio_tokens, token)
        if state.hand_v is None and state.last_mask_v is not None:
            state.hand_v = state.last_mask_v.copy()  # keep the frame's mask as it is shown
    return state, _run(services, state, _spec(state, ratio_a, ratio_v, mode_a, seed), frame_index)


@user_errors
def click_visual(
    services: Services,
    state: SessionState | None,
    x: float,
    y: float,
    ratio_a: float,
    ratio_v: float,
    mode_a: str,
    seed: float,
    frame_index: float | None,
) -> tuple[SessionState, ReconstructView]:
    """Toggle the visual patch under display pixel (x, y) of the masked frame, then reconstruct."""
    state = session(services, state)
    predictor, _ = clip_for(services, state)
    geom = geometry_for(predictor)
    token = geom.visual_token_at(x, y)
    if token is not None:
        state.hand_v = _toggle(state.hand_v, state.last_mask_v, geom.num_visual_tokens, token)
        if state.hand_a is None and state.last_mask_a is not None:
            state.hand_a = state.last_mask_a.copy()
    return state, _run(services, state, _spec(state, ratio_a, ratio_v, mode_a, seed), frame_index)


@user_errors
def mask_action(
    services: Services,
    state: SessionState | None,
    action: str,
    target: str,
    ratio_a: float,
    ratio_v: float,
    mode_a: str,
    seed: float,
    frame_index: float | None,
) -> tuple[SessionState, ReconstructView]:
    """Edit the hand-drawn masks of ``target`` ("audio", "visual" or "both"), then reconstruct.

    Actions: "sliders" (back to random masks from the sliders), "clear" (nothing masked),
    "invert" (swap masked and visible), "random" (a fresh random mask at the slider ratio,
    with a new seed, kept as a hand mask to edit further).
    """
    if action not in MASK_ACTIONS:
        raise ConfigError(f"mask action must be one of {MASK_ACTIONS}, got {action!r}")
    if target not in ("audio", "visual", "both"):
        raise ConfigError(f"mask target must be audio, visual or both, got {target!r}")
    state = session(services, state)
    predictor, _ = clip_for(services, state)
    geom = geometry_for(predictor)
    rng = np.random.default_rng(int(time.time_ns() % 2**32))
    for modality, size, ratio in (
        ("audio", geom.num_audio_tokens, ratio_a),
        ("visual", geom.num_visual_tokens, ratio_v),
    ):
        if target not in (modality, "both"):
            continue
        attr, last = f"hand_{modality[0]}", getattr(state, f"last_mask_{modality[0]}")
        current = getattr(state, attr)
        if current is None:
            current = last if last is not None and last.size == size else np.zeros(size, bool)
        if action == "sliders":
            new = None
        elif action == "clear":
            new = np.zeros(size, bool)
        elif action == "invert":
            new = ~np.asarray(current, bool)
        else:
            new = np.zeros(size, bool)
            n = int(round(size * float(ratio) / 100.0))
            new[rng.choice(size, size=min(n, size), replace=False)] = True
        setattr(state, attr, new)
    return state, _run(services, state, _spec(state, ratio_a, ratio_v, mode_a, seed), frame_index)


@user_errors
def render_audio(
    services: Services, state: SessionState | None, iterations: int = 32
) -> tuple[str | None, str | None, str]:
    """Write the clip's audio and the reconstruction (visible patches pasted back) as wav files.

    The reconstruction is turned into sound by mel inversion and Griffin-Lim
    (:func:`cavmae.inversion.fbank_to_waveform`): audibly similar, not exact.

    Returns:
        ``(original wav, reconstruction wav, status)``; None for audio the clip does not have.
    """
    from cavmae.features import num_fbank_frames
    from cavmae.inversion import fbank_to_waveform

    state = session(services, state)
    rec = state.last_rec
    if rec is None or state.clip is None:
        return None, None, "Reconstruct first; the player then plays the result."
    if not rec.has_audio:
        return (
            None,
            None,
            "This clip has no audio track (its spectrogram was imagined from the frame).",
        )
    predictor, clip = clip_for(services, state)
    feats = predictor.features
    n_valid = None
    if clip.waveform is not None:
        n_valid = min(
            num_fbank_frames(len(clip.waveform), feats.sample_rate, feats), feats.target_length
        )
    folder = state.folder(services)
    stamp = time.strftime("%H%M%S") + f"_{time.perf_counter_ns() % 10**6:06d}"
    original = folder / "audio_original.wav"
    if not original.exists() and clip.waveform is not None:
        n = int(feats.clip_seconds * feats.sample_rate)
        write_wav(original, np.asarray(clip.waveform[:n], np.float32), feats.sample_rate)
    t0 = time.perf_counter()
    wav = fbank_to_waveform(
        rec.spec_composite, feats, n_iter=int(iterations), num_valid_frames=n_valid
    )
    out = folder / f"audio_reconstruction_{stamp}.wav"
    for old in folder.glob("audio_reconstruction_*.wav"):
        old.unlink(missing_ok=True)
    write_wav(out, wav, feats.sample_rate)
    status = f"Audio rendered from the spectrogram in {time.perf_counter() - t0:.1f} s (Griffin-Lim, approximate phase)."
    return (str(original) if original.exists() else None), str(out), status


@user_errors
def loss_sweep(
    services: Services,
    state: SessionState | None,
    mode_a: str,
    seed: float,
    steps: int = 9,
    progress: Any = None,
) -> tuple[SessionState, Any]:
    """Reconstruction loss of both modalities against the mask ratio (same ratio for both)."""
    state = session(services, state)
    predictor, clip = clip_for(services, state, progress_fn(progress))
    if mode_a not in AUDIO_MODES:
        raise ConfigError(f"audio mask mode must be one of {AUDIO_MODES}, got {mode_a!r}")
    ratios = [round(float(r), 3) for r in np.linspace(0.1, 0.95, int(steps))]
    report = progress_fn(progress)
    la, lv = [], []
    for i, r in enumerate(ratios):
        if report is not None:
            report(i / len(ratios), f"mask ratio {r:.0%}")
        out = predictor.loss_sweep(clip, [r], mode_a=mode_a, seed=int(seed or 0))
        la.extend(out["loss_a"])
        lv.extend(out["loss_v"])
    return state, plots.loss_sweep({"ratio": ratios, "loss_a": la, "loss_v": lv}, mode_a)
