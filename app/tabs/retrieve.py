"""Retrieve tab: index a folder or the samples, query in either direction, play results, R@K."""

from __future__ import annotations

from typing import Any

import gradio as gr

from app.handlers import retrieve as rh
from app.services import MEDIA_EXTENSIONS
from app.tabs import Context

__all__ = ["build"]


def build(ctx: Context) -> None:
    """Lay out the tab and wire its events."""
    services = ctx.services
    has_samples = bool(services.samples())
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=280):
            gr.Markdown("#### Index")
            source = gr.Radio(
                ["Samples", "Folder"],
                value="Samples" if has_samples else "Folder",
                label="What to index",
                elem_id="ret-source",
            )
            folder = gr.Textbox(
                label="Folder on this machine (searched recursively)",
                placeholder="/path/to/clips",
                elem_id="ret-folder",
            )
            build_btn = gr.Button(
                "Build / update the index", variant="primary", elem_id="ret-build"
            )
            index_txt = gr.Markdown(elem_id="ret-index-status")
        with gr.Column(scale=1, min_width=280):
            gr.Markdown("#### Query")
            query_file = gr.File(
                label="Query: a video, an audio file or an image",
                file_types=list(MEDIA_EXTENSIONS),
                type="filepath",
                height=130,
                elem_id="ret-query",
            )
            use_clip = gr.Checkbox(
                False, label="Query with the current clip instead", elem_id="ret-use-clip"
            )
            with gr.Row():
                direction = gr.Dropdown(
                    list(rh.DIRECTIONS), value="auto", label="Direction", elem_id="ret-direction"
                )
                k = gr.Slider(1, 24, value=8, step=1, label="Results", elem_id="ret-k")
            search_btn = gr.Button("Search", variant="primary", elem_id="ret-search")
    search_txt = gr.Markdown(elem_id="ret-search-status")
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            gallery = gr.Gallery(
                label="Results (select one to play it)",
                columns=4,
                height=320,
                object_fit="cover",
                allow_preview=False,
                buttons=[],
                elem_id="ret-gallery",
            )
        with gr.Column(scale=2):
            player = gr.HTML(elem_id="ret-player")
            hits = gr.Dataframe(headers=rh.HIT_COLUMNS, interactive=False, elem_id="ret-hits")
    with gr.Accordion(
        "Evaluate retrieval on the indexed folder (R@K; labels = folder names)", open=False
    ):
        eval_btn = gr.Button("Evaluate", elem_id="ret-eval")
        eval_txt = gr.Markdown(elem_id="ret-eval-text")
        eval_table = gr.Dataframe(
            headers=["direction", "R@1", "R@5", "R@10", "MR", "P@1", "P@5", "P@10"],
            interactive=False,
            elem_id="ret-eval-table",
        )

    def on_build(
        state: Any, source: str, folder: str, progress: gr.Progress = gr.Progress()
    ) -> Any:
        return rh.build_index(services, state, source, folder, progress=progress)

    build_btn.click(
        on_build,
        [ctx.state, source, folder],
        [ctx.state, index_txt],
        api_name="build_index",
        **ctx.model_kwargs,
    )

    def on_search(
        state: Any,
        query: str | None,
        use_clip: bool,
        direction: str,
        k: float,
        progress: gr.Progress = gr.Progress(),
    ) -> Any:
        state, items, rows, status = rh.query(
            services, state, query, use_clip, direction, k, progress=progress
        )
        return state, items, rows, status, ""

    search_btn.click(
        on_search,
        [ctx.state, query_file, use_clip, direction, k],
        [ctx.state, gallery, hits, search_txt, player],
        api_name="search",
        **ctx.model_kwargs,
    )

    def on_select(state: Any, evt: gr.SelectData) -> Any:
        return rh.play_hit(services, state, evt.index)

    gallery.select(
        on_select,
        [ctx.state],
        [ctx.state, player],
        api_name="play_result",
        api_visibility="private",
    )

    def on_play(state: Any, rank: float) -> Any:
        return rh.play_hit(services, state, int(rank) - 1)

    rank = gr.Number(1, visible=False)
    rank.change(on_play, [ctx.state, rank], [ctx.state, player], api_name="play_rank")

    def on_eval(state: Any) -> Any:
        state, rows, text = rh.recall(services, state)
        return state, rows, text

    eval_btn.click(
        on_eval,
        [ctx.state],
        [ctx.state, eval_table, eval_txt],
        api_name="evaluate_retrieval",
        **ctx.model_kwargs,
    )
