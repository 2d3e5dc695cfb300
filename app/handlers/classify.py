"""Classify: top-k labels of the clip, a timeline over long files, and a batch mode with CSV."""

from __future__ import annotations

import csv
import html
import logging
import time
from pathlib import Path
from typing import Any

from app import plots
from app.handlers.common import (
    SessionState,
    clip_for,
    predictor_for,
    progress_fn,
    session,
    user_errors,
)
from app.services import Services
from cavmae.errors import CavmaeError, ConfigError

__all__ = ["MODES", "MODE_HELP", "classify", "timeline", "batch", "BATCH_COLUMNS"]

logger = logging.getLogger(__name__)

MODES = ("auto", "multimodal", "audioonly", "videoonly", "missingaudioonly", "missingvideoonly")
MODE_HELP = {
    "multimodal": "audio and video through the joint layer",
    "audioonly": "audio only (an audio-only classifier)",
    "videoonly": "video frames only (a visual-only classifier)",
    "missingaudioonly": "audio only, through the multimodal model (its missing-video fallback)",
    "missingvideoonly": "video only, through the multimodal model (its missing-audio fallback)",
}
BATCH_COLUMNS = ["file", "mode", "top-1", "score", "top-k", "error"]


def _check(mode: str, top_k: float) -> int:
    if mode not in MODES:
        raise ConfigError(f"mode must be one of {MODES}, got {mode!r}")
    k = int(top_k or 5)
    if k < 1:
        raise ConfigError(f"top-k must be at least 1, got {k}")
    return k


def _mode_text(result: Any, requested: str) -> str:
    how = MODE_HELP.get(result.mode, result.mode)
    head = "sigmoid per class (multi-label)" if result.multi_label else "softmax (single label)"
    frames = f"{result.frames_used} frames averaged" if result.frames_used > 1 else "one frame"
    chosen = "chosen automatically" if requested == "auto" else "as requested"
    text = f"Mode **{result.mode}** ({how}), {chosen} · {head} · {frames}."
    if result.note:
        text += f"\n\n**Fallback:** {html.escape(result.note)}."
    return text


@user_errors
def classify(
    services: Services,
    state: SessionState | None,
    top_k: float,
    mode: str,
    ensemble: bool,
    progress: Any = None,
) -> tuple[SessionState, Any, str]:
    """Top-k labels of the session's clip as a bar chart, with the mode that was used."""
    state = session(services, state)
    k = _check(mode, top_k)
    predictor, clip = clip_for(services, state, progress_fn(progress))
    result = predictor.classify(clip, top_k=k, mode=mode, ensemble=bool(ensemble))  # type: ignore[arg-type]
    return state, plots.top_k_bars(result.predictions, result.multi_label), _mode_text(result, mode)


@user_errors
def timeline(
    services: Services,
    state: SessionState | None,
    window_s: float,
    hop_s: float,
    mode: str,
    top_classes: float,
    progress: Any = None,
) -> tuple[SessionState, Any, str]:
    """Predictions per window over the whole file, as a heat map of the top classes."""
    state = session(services, state)
    k = _check(mode, top_classes)
    if not window_s or window_s <= 0 or not hop_s or hop_s <= 0:
        raise ConfigError("window and hop must be positive numbers of seconds")
    predictor, _ = clip_for(services, state, progress_fn(progress))
    tl = predictor.classify_timeline(
        state.clip_path,
        window_s=float(window_s),
        hop_s=float(hop_s),
        mode=mode,  # type: ignore[arg-type]
        top_k=k,
        progress=progress_fn(progress),
    )
    top = tl.top_classes(k)
    text = (
        f"{len(tl.starts)} window{'s' if len(tl.starts) != 1 else ''} of {float(window_s):g} s "
        f"every {float(hop_s):g} s · "
        f"mode **{tl.clip.mode}** · over the whole file: "
        + ", ".join(f"{p.label} ({p.score:.2f})" for p in tl.clip.predictions[:3])
    )
    if tl.clip.note:
        text += f"\n\n**Fallback:** {html.escape(tl.clip.note)}."
    return (
        state,
        plots.timeline_heatmap(
            tl.starts, tl.ends, tl.probabilities[:, top], [tl.labels[i] for i in top]
        ),
        text,
    )


@user_errors
def batch(
    services: Services,
    state: SessionState | None,
    files: list[Any] | None,
    top_k: float,
    mode: str,
    progress: Any = None,
) -> tuple[SessionState, list[list[Any]], str | None, str]:
    """Classify several files; a file that cannot be used gets its error in the table.

    Returns:
        ``(state, table rows, CSV path, status)``.
    """
    state = session(services, state)
    k = _check(mode, top_k)
    paths = [str(getattr(f, "name", f)) for f in (files or [])]
    if not paths:
        raise ConfigError("upload one or more files first")
    predictor = predictor_for(services, state)
    report = progress_fn(progress)
    rows: list[list[Any]] = []
    for i, p in enumerate(paths):
        name = Path(p).name
        if report is not None:
            report(i / len(paths), f"{i + 1}/{len(paths)}: {name}")
        try:
            result = predictor.classify(predictor.prepare(p), top_k=k, mode=mode)  # type: ignore[arg-type]
        except CavmaeError as e:
            rows.append([name, "", "", None, "", str(e)])
            continue
        top = result.predictions[0]
        rest = "; ".join(f"{q.label} ({q.score:.3f})" for q in result.predictions)
        rows.append([name, result.mode, top.label, round(top.score, 4), rest, result.note])
    out = state.folder(services) / f"classify_{time.strftime('%Y%m%d_%H%M%S')}.csv"
    with out.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(BATCH_COLUMNS)
        w.writerows(rows)
    failed = sum(1 for r in rows if r[3] is None)
    status = f"Classified {len(rows) - failed} of {len(rows)} files" + (
        f"; {failed} could not be used (see the error column)." if failed else "."
    )
    return state, rows, str(out), status
