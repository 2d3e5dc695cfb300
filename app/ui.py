"""``build_demo(services, settings) -> gr.Blocks``: the page layout, one builder per tab.

The page: a header with the model status, the clip panel (sample / upload / webcam), then six
tabs: Mask & reconstruct, Similarity, Classify, Retrieve, Train, Model. All model events share
one queue slot (``concurrency_id="model"``); each browser session has its own
:class:`~app.handlers.common.SessionState` in a ``gr.State`` with a time to live. Theme and CSS
go to ``launch()`` (Gradio 6): use :func:`launch_kwargs`.
"""

from __future__ import annotations

import logging
from typing import Any

import gradio as gr

from app.handlers import clips
from app.handlers.common import drop_session, session
from app.handlers.model import model_status
from app.services import Services
from app.settings import AppSettings
from app.tabs import Context
from app.tabs import classify as classify_tab
from app.tabs import clip as clip_panel
from app.tabs import model as model_tab
from app.tabs import reconstruct as reconstruct_tab
from app.tabs import retrieve as retrieve_tab
from app.tabs import similarity as similarity_tab
from app.tabs import train as train_tab

__all__ = ["build_demo", "launch_kwargs", "theme", "CSS", "TAB_NAMES"]

logger = logging.getLogger(__name__)

TAB_NAMES = ("Mask & reconstruct", "Similarity", "Classify", "Retrieve", "Train", "Model")

CSS = """
.gradio-container {max-width: 1500px !important; margin: auto;}
#cav-header h1 {margin-bottom: 0; font-size: 1.7em;}
#cav-header p {margin-top: 2px; opacity: .8;}
.cav-step h4 {margin: 0 0 4px 0;}
.cav-section p {margin: 6px 0 0 0; font-size: .95em;}
.cav-view img {image-rendering: pixelated; object-fit: contain;}
.cav-media video, .cav-media img {border-radius: 8px;}
.cav-caption {font-size: .85em; opacity: .7; margin-top: 2px;}
.cav-clip-panel {border: 1px solid var(--border-color-primary); border-radius: 12px; padding: 8px 12px;}
#model-status {padding: 4px 10px; border-radius: 8px; background: var(--background-fill-secondary);}
footer {display: none !important;}
"""


def theme() -> gr.themes.Base:
    """The app's theme (violet audio, orange visual accents)."""
    return gr.themes.Soft(
        primary_hue="violet",
        secondary_hue="orange",
        neutral_hue="slate",
        radius_size="md",
        text_size="md",
    )


def launch_kwargs(settings: AppSettings) -> dict[str, Any]:
    """Keyword arguments of ``demo.launch`` for ``settings`` (bind address, auth, limits, style)."""
    return {
        "server_name": settings.host,
        "server_port": settings.port,
        "share": settings.share,
        "auth": settings.auth,
        "allowed_paths": settings.serve_paths(),
        "max_file_size": f"{settings.max_upload_mb}mb",
        "theme": theme(),
        "css": CSS,
        "footer_links": [],
        "show_error": True,
    }


def build_demo(services: Services, settings: AppSettings) -> gr.Blocks:
    """The whole app as a ``gr.Blocks`` (not launched).

    Args:
        services: Shared model cache, indexes and training jobs.
        settings: App settings (limits, folders, time to live).
    """
    with gr.Blocks(title="CAV-MAE Studio", delete_cache=(1800, 3600)) as demo:
        state = gr.State(None, time_to_live=settings.state_ttl_s, delete_callback=drop_session)
        with gr.Row():
            with gr.Column(scale=3):
                gr.Markdown(
                    "# CAV-MAE Studio\nContrastive Audio-Visual Masked Autoencoder (Gong et al., "
                    "ICLR 2023): hide parts of the sound and the image, and watch the model fill "
                    "them in from what is left.",
                    elem_id="cav-header",
                )
            with gr.Column(scale=2):
                status = gr.Markdown("Loading the model…", elem_id="model-status")
        ctx = Context(services=services, settings=settings, state=state, status=status)
        panel = clip_panel.build(ctx)
        with gr.Tabs(elem_id="cav-tabs") as tabs:
            with gr.Tab(TAB_NAMES[0], id="reconstruct"):
                reconstruct_tab.build(ctx)
            with gr.Tab(TAB_NAMES[1], id="similarity"):
                similarity_tab.build(ctx)
            with gr.Tab(TAB_NAMES[2], id="classify"):
                classify_tab.build(ctx)
            with gr.Tab(TAB_NAMES[3], id="retrieve"):
                retrieve_tab.build(ctx)
            with gr.Tab(TAB_NAMES[4], id="train"):
                train_placeholder = gr.Column()
            with gr.Tab(TAB_NAMES[5], id="model"):
                mtab = model_tab.build(ctx)
        with train_placeholder:
            used = train_tab.build(ctx, mtab.overview, mtab.labels)

        chain = ctx.chains["reconstruct"]
        for dep, name in [*panel.events, (mtab.loaded, "model"), (used, "run")]:
            chain.after(dep, api_name=f"reconstruct_after_{name}")

        def on_page_load(st: Any) -> Any:
            st, text, overview, labels = model_status(services, st)
            names = clips.sample_choices(services)
            no_model = services.models.peek(st.model) is None
            return (
                st,
                text,
                overview,
                labels,
                gr.update(choices=names),
                gr.Tabs(selected="model") if no_model else gr.skip(),
            )

        def first_sample(st: Any, progress: gr.Progress = gr.Progress()) -> Any:
            st = session(services, st)
            names = clips.sample_choices(services)
            if st.clip_path or not names or services.models.peek(st.model) is None:
                return gr.skip(), gr.skip(), gr.skip(), gr.skip()
            try:
                st, html_, info = clips.use_sample(services, st, names[0], progress=progress)
            except gr.Error as e:
                logger.warning("could not open the first sample %s: %s", names[0], e)
                return gr.skip(), gr.skip(), gr.skip(), gr.skip()
            return st, html_, info, names[0]

        loaded = demo.load(
            on_page_load,
            [state],
            [state, status, mtab.overview, mtab.labels, panel.sample, tabs],
            api_name="page_load",
            api_visibility="private",
            **ctx.model_kwargs,
        )
        opened = loaded.then(
            first_sample,
            [state],
            [state, panel.preview, panel.info, panel.sample],
            api_name="open_first_sample",
            api_visibility="private",
            **ctx.model_kwargs,
        )
        chain.after(opened, api_name="reconstruct_first_sample", always=True)
    return demo
