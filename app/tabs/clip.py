"""The clip panel above the tabs: a sample, an upload or a webcam recording, with a preview."""

from __future__ import annotations

from typing import Any

import gradio as gr

from app.handlers import clips
from app.services import MEDIA_EXTENSIONS
from app.tabs import Context

__all__ = ["build", "ClipPanel"]


class ClipPanel:
    """Components of the clip panel and the events that choose a clip (for chaining)."""

    def __init__(
        self,
        sample: gr.Dropdown,
        upload: gr.File,
        webcam: gr.Video,
        preview: gr.HTML,
        info: gr.Markdown,
    ) -> None:
        self.sample = sample
        self.upload = upload
        self.webcam = webcam
        self.preview = preview
        self.info = info
        self.events: list[tuple[Any, str]] = []  # (dependency, name) of each way to choose a clip


def build(ctx: Context) -> ClipPanel:
    """Lay out the clip panel and wire its events; returns its components."""
    services = ctx.services
    names = clips.sample_choices(services)
    with gr.Row(elem_classes=["cav-clip-panel"]):
        with gr.Column(scale=3, min_width=320):
            gr.Markdown("#### 1 · Choose a clip", elem_classes=["cav-step"])
            with gr.Row(equal_height=True):
                sample = gr.Dropdown(
                    choices=names,
                    value=None,
                    label="Sample clip",
                    scale=1,
                    info=None if names else "No bundled samples here: upload a clip instead.",
                    elem_id="sample-dropdown",
                )
                upload = gr.File(
                    label="…or upload a video, audio file or image",
                    scale=1,
                    file_types=list(MEDIA_EXTENSIONS),
                    type="filepath",
                    height=130,
                    elem_id="clip-upload",
                )
            with gr.Accordion("…or record with the webcam and microphone", open=False):
                webcam = gr.Video(
                    sources=["webcam"],
                    include_audio=True,
                    format=None,
                    webcam_options=gr.WebcamOptions(mirror=False),
                    label="Webcam",
                    height=220,
                    elem_id="webcam",
                )
        with gr.Column(scale=2, min_width=280):
            preview = gr.HTML(elem_id="clip-preview")
            info = gr.Markdown(elem_id="clip-info")
    panel = ClipPanel(sample, upload, webcam, preview, info)
    outputs = [ctx.state, preview, info]

    def on_sample(state: Any, sample: str | None, progress: gr.Progress = gr.Progress()) -> Any:
        if not sample:
            return gr.skip(), gr.skip(), gr.skip()
        return clips.use_sample(services, state, sample, progress=progress)

    def on_upload(state: Any, path: str | None, progress: gr.Progress = gr.Progress()) -> Any:
        if not path:
            return gr.skip(), gr.skip(), gr.skip()
        return clips.use_upload(services, state, path, progress=progress)

    def on_record(state: Any, path: str | None, progress: gr.Progress = gr.Progress()) -> Any:
        if not path:
            return gr.skip(), gr.skip(), gr.skip()
        return clips.use_recording(services, state, path, progress=progress)

    panel.events.append(
        (
            sample.input(
                on_sample, [ctx.state, sample], outputs, api_name="use_sample", **ctx.model_kwargs
            ),
            "sample",
        )
    )
    panel.events.append(
        (
            upload.upload(
                on_upload, [ctx.state, upload], outputs, api_name="use_upload", **ctx.model_kwargs
            ),
            "upload",
        )
    )
    panel.events.append(
        (
            webcam.change(
                on_record,
                [ctx.state, webcam],
                outputs,
                api_name="use_recording",
                **ctx.model_kwargs,
            ),
            "recording",
        )
    )
    return panel
