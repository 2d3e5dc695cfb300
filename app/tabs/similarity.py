"""Similarity tab: where is the sound, temporal matrix, contrastive scores, shared-layer attention."""

from __future__ import annotations

from typing import Any

import gradio as gr

from app.handlers import similarity as sh
from app.tabs import Context

__all__ = ["build"]


def build(ctx: Context) -> None:
    """Lay out the tab and wire its events."""
    services = ctx.services
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=300):
            gr.Markdown(
                "#### Where is the sound?\nWhich patches of a frame go with the clip's sound. "
                "Move the slider through time."
            )
            frame = gr.Slider(0, 9, value=5, step=1, label="Frame (0–9)", elem_id="sim-frame")
            method = gr.Radio(
                ["cosine", "occlusion"],
                value="cosine",
                label="Map",
                info="cosine: audio embedding vs each patch (instant). occlusion: how much the "
                "audio-visual match drops when the encoder does not see the patch (one pass "
                "per patch: about a second on the demo model, slow on a full-size one on CPU)",
                elem_id="sim-method",
            )
            sound_btn = gr.Button("Show the sound map", variant="primary", elem_id="sim-sound")
            sound_img = gr.Image(
                label="Sound map on the frame",
                type="numpy",
                format="png",
                interactive=False,
                height=340,
                elem_id="sim-sound-map",
            )
            sound_txt = gr.Markdown(elem_id="sim-sound-text")
        with gr.Column(scale=1, min_width=300):
            gr.Markdown(
                "#### Attention in the shared layer\nHow much the audio tokens attend to each "
                "visual patch, and the visual tokens to each audio patch (mean over heads)."
            )
            attn_btn = gr.Button("Show attention", elem_id="sim-attention")
            attn_frame = gr.Image(
                label="Audio → frame",
                type="numpy",
                format="png",
                interactive=False,
                height=340,
                elem_id="sim-attn-frame",
            )
            attn_spec = gr.Image(
                label="Frame → spectrogram",
                type="numpy",
                format="png",
                interactive=False,
                height=170,
                elem_id="sim-attn-spec",
            )
            attn_txt = gr.Markdown(elem_id="sim-attn-text")
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=300):
            gr.Markdown(
                "#### Temporal similarity over the whole file\nAudio of each window against the "
                "frame of each window. Leave 0 for automatic windows."
            )
            with gr.Row():
                window = gr.Number(0, label="Window (s)", minimum=0, elem_id="sim-window")
                hop = gr.Number(0, label="Hop (s)", minimum=0, elem_id="sim-hop")
            temporal_btn = gr.Button("Compute the matrix", elem_id="sim-temporal")
            temporal_plot = gr.Plot(elem_id="sim-temporal-plot")
            temporal_txt = gr.Markdown(elem_id="sim-temporal-text")
        with gr.Column(scale=1, min_width=300):
            gr.Markdown(
                "#### Contrastive score against mismatched clips\nThe clip's own audio-frame "
                "pair against pairs with the samples' (or the indexed folder's) clips."
            )
            contrast_btn = gr.Button("Compare with other clips", elem_id="sim-contrast")
            contrast_plot = gr.Plot(elem_id="sim-contrast-plot")
            contrast_txt = gr.Markdown(elem_id="sim-contrast-text")

    def on_sound(
        state: Any, frame: float, method: str, progress: gr.Progress = gr.Progress()
    ) -> Any:
        return sh.where_sound(services, state, frame, method, progress=progress)

    def on_sound_frame(state: Any, frame: float, method: str) -> Any:
        if state is None or not state.clip_path or state.clip is None:
            return gr.skip(), gr.skip(), gr.skip()  # moving the slider before choosing a clip
        return sh.where_sound(services, state, frame, method)

    sound_btn.click(
        on_sound,
        [ctx.state, frame, method],
        [ctx.state, sound_img, sound_txt],
        api_name="where_sound",
        **ctx.model_kwargs,
    )
    # Moving the slider re-renders quietly; choosing another map shows Gradio's busy indicator.
    for trigger, api_name, progress in (
        (frame, "where_sound_frame", "hidden"),
        (method, "where_sound_method", "full"),
    ):
        trigger.change(
            on_sound_frame,
            [ctx.state, frame, method],
            [ctx.state, sound_img, sound_txt],
            api_name=api_name,
            trigger_mode="always_last",
            show_progress=progress,
            **ctx.model_kwargs,
        )

    def on_attention(state: Any, frame: float) -> Any:
        return sh.attention(services, state, frame)

    attn_btn.click(
        on_attention,
        [ctx.state, frame],
        [ctx.state, attn_frame, attn_spec, attn_txt],
        api_name="attention",
        **ctx.model_kwargs,
    )

    def on_temporal(
        state: Any, window_s: float, hop_s: float, progress: gr.Progress = gr.Progress()
    ) -> Any:
        return sh.temporal(services, state, window_s, hop_s, progress=progress)

    temporal_btn.click(
        on_temporal,
        [ctx.state, window, hop],
        [ctx.state, temporal_plot, temporal_txt],
        api_name="temporal_similarity",
        **ctx.model_kwargs,
    )

    def on_contrast(state: Any, progress: gr.Progress = gr.Progress()) -> Any:
        return sh.contrastive(services, state, progress=progress)

    contrast_btn.click(
        on_contrast,
        [ctx.state],
        [ctx.state, contrast_plot, contrast_txt],
        api_name="contrastive",
        **ctx.model_kwargs,
    )
