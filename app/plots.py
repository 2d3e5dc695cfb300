"""Plotly figures of the app: loss sweep, similarity matrix, top-k bars, timeline, training curves.

Pure functions from numbers to ``plotly.graph_objects.Figure``; one visual style for all.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go

__all__ = [
    "loss_sweep",
    "similarity_matrix",
    "contrastive_scores",
    "top_k_bars",
    "timeline_heatmap",
    "training_curves",
    "AUDIO_COLOUR",
    "VISUAL_COLOUR",
]

AUDIO_COLOUR = "#7c3aed"
VISUAL_COLOUR = "#f97316"
_FONT = dict(family="Inter, system-ui, sans-serif", size=13)


def _layout(fig: go.Figure, title: str, height: int = 360, **kw: Any) -> go.Figure:
    fig.update_layout(
        title=dict(text=title, x=0.01, font=dict(size=15)),
        height=height,
        margin=dict(l=60, r=20, t=50, b=50),
        template="plotly_white",
        font=_FONT,
        legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1.0),
        **kw,
    )
    return fig


def _finite(xs: Sequence[float]) -> list[float | None]:
    return [None if x is None or not math.isfinite(float(x)) else float(x) for x in xs]


def loss_sweep(sweep: dict[str, list[float]], mode_a: str = "unstructured") -> go.Figure:
    """Reconstruction MSE of each modality against the mask ratio."""
    ratios = [100 * r for r in sweep["ratio"]]
    fig = go.Figure()
    fig.add_scatter(
        x=ratios,
        y=_finite(sweep["loss_a"]),
        mode="lines+markers",
        name="audio",
        line=dict(color=AUDIO_COLOUR, width=3),
    )
    fig.add_scatter(
        x=ratios,
        y=_finite(sweep["loss_v"]),
        mode="lines+markers",
        name="visual",
        line=dict(color=VISUAL_COLOUR, width=3),
    )
    fig.update_xaxes(title="mask ratio (%) — both modalities", ticksuffix="%")
    fig.update_yaxes(title="MSE on masked patches")
    return _layout(fig, f"Reconstruction loss vs. mask ratio (audio mode: {mode_a})")


def similarity_matrix(matrix: np.ndarray, starts: Sequence[float], window_s: float) -> go.Figure:
    """Heat map of audio windows (rows) against visual windows (columns), cosine similarity."""
    labels = [f"{s:.0f}s" if window_s >= 2 else f"{s:.1f}s" for s in starts]
    fig = go.Figure(
        go.Heatmap(
            z=np.asarray(matrix),
            x=labels,
            y=labels,
            colorscale="Viridis",
            colorbar=dict(title="cos"),
            hovertemplate="audio %{y} · frame %{x}<br>cos %{z:.3f}<extra></extra>",
        )
    )
    fig.update_xaxes(title="visual (frame of window starting at)")
    fig.update_yaxes(title="audio (window starting at)", autorange="reversed")
    side = max(360, min(620, 120 + 18 * len(labels)))
    return _layout(fig, f"Temporal audio × visual similarity ({window_s:g} s windows)", height=side)


def contrastive_scores(
    matched: float, names: Sequence[str], a_to_v: Sequence[float], v_to_a: Sequence[float]
) -> go.Figure:
    """The matched pair's cosine next to mismatched pairs, in both directions."""
    fig = go.Figure()
    fig.add_bar(
        x=list(names), y=list(a_to_v), name="this audio × other frame", marker_color=AUDIO_COLOUR
    )
    fig.add_bar(
        x=list(names), y=list(v_to_a), name="other audio × this frame", marker_color=VISUAL_COLOUR
    )
    fig.add_hline(
        y=matched,
        line=dict(color="#16a34a", width=3, dash="dash"),
        annotation_text=f"matched pair {matched:.3f}",
        annotation_position="top left",
    )
    fig.update_layout(barmode="group")
    fig.update_yaxes(title="cosine similarity")
    fig.update_xaxes(tickangle=-30)
    return _layout(fig, "Contrastive score: matched vs. mismatched pairs")


def top_k_bars(predictions: Sequence[Any], multi_label: bool) -> go.Figure:
    """Horizontal bars of the top-k labels (best on top) with their probabilities."""
    preds = list(predictions)[::-1]
    fig = go.Figure(
        go.Bar(
            x=[p.score for p in preds],
            y=[p.label for p in preds],
            orientation="h",
            text=[f"{p.score:.1%}" for p in preds],
            textposition="auto",
            marker=dict(color=[p.score for p in preds], colorscale="Purples", cmin=0, cmax=1),
            hovertemplate="%{y}: %{x:.4f}<extra></extra>",
        )
    )
    fig.update_xaxes(
        range=[0, 1],
        title="probability" + (" (sigmoid, per class)" if multi_label else " (softmax)"),
    )
    return _layout(fig, f"Top {len(preds)} labels", height=max(260, 70 + 42 * len(preds)))


def timeline_heatmap(
    starts: np.ndarray, ends: np.ndarray, probs: np.ndarray, labels: Sequence[str]
) -> go.Figure:
    """Heat map of the top classes' probabilities (rows) over windows of a long file (columns)."""
    mids = (np.asarray(starts) + np.asarray(ends)) / 2.0
    fig = go.Figure(
        go.Heatmap(
            z=np.asarray(probs).T,
            x=mids,
            y=list(labels),
            colorscale="Magma",
            zmin=0,
            colorbar=dict(title="p"),
            hovertemplate="%{y}<br>t=%{x:.1f}s · p=%{z:.3f}<extra></extra>",
        )
    )
    fig.update_xaxes(title="time (s, window centre)")
    fig.update_yaxes(autorange="reversed")
    return _layout(fig, "Top classes over time", height=max(280, 90 + 36 * len(labels)))


_SKIP = {
    "type",
    "epoch",
    "step",
    "epoch_step",
    "steps_per_epoch",
    "epoch_1000x",
    "time",
    "lr",
    "samples_per_s",
    "data_time",
    "step_time",
    "max_mem_mb",
    "epoch_seconds",
    "eval_seconds",
}


def training_curves(records: Sequence[dict[str, Any]], kind: str) -> go.Figure:
    """Curves of a run: ``kind="step"`` plots the step losses, ``"epoch"`` the epoch metrics."""
    rows = [r for r in records if r.get("type") == kind]
    x_key = "step" if kind == "step" else "epoch"
    keys: list[str] = []
    for r in rows:
        for k, v in r.items():
            if (
                k not in _SKIP
                and k not in keys
                and "num_" not in k
                and "candidates" not in k
                and isinstance(v, (int, float))
                and not isinstance(v, bool)
            ):
                keys.append(k)
    if kind == "step":
        keys = [k for k in keys if "loss" in k] or keys
    fig = go.Figure()
    for k in keys[:8]:
        pts = [(r[x_key], r[k]) for r in rows if isinstance(r.get(k), (int, float))]
        fig.add_scatter(
            x=[p[0] for p in pts],
            y=_finite([p[1] for p in pts]),
            mode="lines+markers" if kind == "epoch" or len(pts) < 20 else "lines",
            name=k,
        )
    fig.update_xaxes(title=x_key)
    title = (
        "Training losses (per logged step)"
        if kind == "step"
        else "Epoch metrics (train and validation)"
    )
    if not rows:
        title += " — waiting for the first records"
    return _layout(fig, title, height=320)
