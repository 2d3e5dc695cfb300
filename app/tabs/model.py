"""Model tab: choose the session's model (demo, zoo, local file, training run) and describe it."""

from __future__ import annotations

from typing import Any

import gradio as gr

from app.handlers import model as mh
from app.tabs import Context
from cavmae.config import PRECISIONS

__all__ = ["build", "ModelTab"]


class ModelTab:
    """The components other parts of the UI refresh (page load, "Use this model")."""

    def __init__(
        self, overview: gr.Markdown, labels: gr.Dataframe, runs: gr.Dropdown, loaded: Any
    ) -> None:
        self.overview = overview
        self.labels = labels
        self.runs = runs
        self.loaded = loaded  # the "Load model" event, for chaining


def build(ctx: Context) -> ModelTab:
    """Lay out the tab and wire its events."""
    services = ctx.services
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=300):
            source = gr.Radio(
                list(mh.SOURCES), value=mh.SOURCES[0], label="Source", elem_id="model-source"
            )
            zoo = gr.Dropdown(
                mh.zoo_choices(),
                label="Published checkpoint (downloaded once into the cache)",
                visible=False,
                elem_id="model-zoo",
            )
            with gr.Group(visible=False) as local:
                path = gr.Textbox(
                    label="Checkpoint path on this machine (.pth or .safetensors)",
                    elem_id="model-path",
                )
                upload = gr.File(
                    label="…or upload a checkpoint",
                    file_types=[".pth", ".pt", ".safetensors"],
                    type="filepath",
                    height=130,
                    elem_id="model-upload",
                )
            runs = gr.Dropdown(
                mh.run_choices(services),
                label="Finished training run",
                visible=False,
                allow_custom_value=True,
                elem_id="model-run",
            )
            precision = gr.Radio(
                list(PRECISIONS),
                value=services.settings.precision,
                label="Precision",
                info="auto: bf16 on a GPU, exact float32 on a CPU; bfloat16 on a CPU with "
                "AMX/AVX512-BF16 is 2-3x faster (probabilities within ~5e-3)",
                elem_id="model-precision",
            )
            with gr.Accordion("Optional: a second checkpoint, labels", open=False):
                pretrain = gr.Textbox(
                    label="Pretrained model next to a classifier (name or path)",
                    info="used for reconstruction, similarity and retrieval",
                    elem_id="model-pretrain",
                )
                pretrain_upload = gr.File(
                    label="…or upload it",
                    file_types=[".pth", ".pt", ".safetensors"],
                    type="filepath",
                    height=130,
                    elem_id="model-pretrain-upload",
                )
                labels = gr.Textbox(
                    label="Label CSV (index,mid,display_name)", elem_id="model-labels"
                )
            load = gr.Button("Load model", variant="primary", elem_id="model-load")
        with gr.Column(scale=2):
            overview = gr.Markdown(elem_id="model-overview")
            table = gr.Dataframe(
                headers=["index", "label"],
                interactive=False,
                max_height=320,
                label="Labels",
                elem_id="model-labels-table",
            )

    def on_source(source: str) -> Any:
        return (
            gr.update(visible=source == "Model zoo"),
            gr.update(visible=source == "Local file"),
            gr.update(visible=source == "Training run", choices=mh.run_choices(services)),
        )

    source.change(
        on_source,
        [source],
        [zoo, local, runs],
        api_name="model_source",
        queue=False,
        show_progress="hidden",
    )

    def on_load(
        state: Any,
        source: str,
        zoo_name: str | None,
        path: str | None,
        upload: str | None,
        pretrain: str | None,
        pretrain_upload: str | None,
        labels: str | None,
        run: str | None,
        prec: str | None,
        progress: gr.Progress = gr.Progress(),
    ) -> Any:
        return mh.load_model(
            services,
            state,
            source,
            zoo_name,
            path,
            upload,
            pretrain,
            pretrain_upload,
            labels,
            run,
            prec,
            progress=progress,
        )

    loaded = load.click(
        on_load,
        [ctx.state, source, zoo, path, upload, pretrain, pretrain_upload, labels, runs, precision],
        [ctx.state, ctx.status, overview, table],
        api_name="load_model",
        **ctx.model_kwargs,
    )
    return ModelTab(overview, table, runs, loaded)
