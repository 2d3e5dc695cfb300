"""Classify tab: top-k bars with the mode used, a timeline over long files, batch with CSV."""

from __future__ import annotations

from typing import Any

import gradio as gr

from app.handlers import classify as ch
from app.services import MEDIA_EXTENSIONS
from app.tabs import Context

__all__ = ["build"]


def build(ctx: Context) -> None:
    """Lay out the tab and wire its events."""
    services = ctx.services
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=260):
            top_k = gr.Slider(1, 20, value=5, step=1, label="Top k", elem_id="cls-topk")
            mode = gr.Dropdown(
                list(ch.MODES),
                value="auto",
                label="Mode",
                elem_id="cls-mode",
                info="auto uses the model's mode and falls back when a stream is missing",
            )
            ensemble = gr.Checkbox(
                True,
                label="Average over all 10 frames (official evaluation)",
                elem_id="cls-ensemble",
            )
            go = gr.Button("Classify the clip", variant="primary", elem_id="cls-run")
        with gr.Column(scale=3):
            bars = gr.Plot(label="Top labels", elem_id="cls-bars")
            mode_txt = gr.Markdown(elem_id="cls-mode-text")
    with gr.Accordion("Timeline over the whole file (long videos)", open=False):
        with gr.Row():
            window = gr.Number(10, label="Window (s)", minimum=0.5, elem_id="cls-window")
            hop = gr.Number(5, label="Hop (s)", minimum=0.5, elem_id="cls-hop")
            n_top = gr.Slider(1, 15, value=6, step=1, label="Classes shown", elem_id="cls-ntop")
            tl_btn = gr.Button("Classify over time", elem_id="cls-timeline-run")
        tl_plot = gr.Plot(elem_id="cls-timeline")
        tl_txt = gr.Markdown(elem_id="cls-timeline-text")
    with gr.Accordion("Batch: several files, CSV download", open=False):
        with gr.Row():
            files = gr.File(
                file_count="multiple",
                file_types=list(MEDIA_EXTENSIONS),
                label="Files",
                elem_id="cls-batch-files",
            )
            with gr.Column():
                batch_btn = gr.Button("Classify all", elem_id="cls-batch-run")
                csv_file = gr.File(label="CSV", interactive=False, elem_id="cls-batch-csv")
        batch_txt = gr.Markdown(elem_id="cls-batch-text")
        table = gr.Dataframe(
            headers=ch.BATCH_COLUMNS, interactive=False, wrap=True, elem_id="cls-batch-table"
        )

    def on_classify(
        state: Any, top_k: float, mode: str, ensemble: bool, progress: gr.Progress = gr.Progress()
    ) -> Any:
        return ch.classify(services, state, top_k, mode, ensemble, progress=progress)

    go.click(
        on_classify,
        [ctx.state, top_k, mode, ensemble],
        [ctx.state, bars, mode_txt],
        api_name="classify",
        **ctx.model_kwargs,
    )

    def on_timeline(
        state: Any,
        window_s: float,
        hop_s: float,
        mode: str,
        classes: float,
        progress: gr.Progress = gr.Progress(),
    ) -> Any:
        return ch.timeline(services, state, window_s, hop_s, mode, classes, progress=progress)

    tl_btn.click(
        on_timeline,
        [ctx.state, window, hop, mode, n_top],
        [ctx.state, tl_plot, tl_txt],
        api_name="classify_timeline",
        **ctx.model_kwargs,
    )

    def on_batch(
        state: Any,
        files: list[Any] | None,
        top_k: float,
        mode: str,
        progress: gr.Progress = gr.Progress(),
    ) -> Any:
        state, rows, csv_path, status = ch.batch(
            services, state, files, top_k, mode, progress=progress
        )
        return state, rows, csv_path, status

    batch_btn.click(
        on_batch,
        [ctx.state, files, top_k, mode],
        [ctx.state, table, csv_file, batch_txt],
        api_name="classify_batch",
        **ctx.model_kwargs,
    )
