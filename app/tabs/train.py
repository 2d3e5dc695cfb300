"""Train tab: start a run as a subprocess, live curves and log, stop / resume / use the model."""

from __future__ import annotations

from typing import Any

import gradio as gr

from app.handlers import train as th
from app.tabs import Context

__all__ = ["build"]

POLL_SECONDS = 3.0


def build(ctx: Context, model_overview: gr.Markdown, model_labels: gr.Dataframe) -> Any:
    """Lay out the tab and wire its events; returns the "Use this model" event (for chaining).

    ``model_overview`` and ``model_labels`` (the Model tab's description) are refreshed by
    "Use this model".
    """
    services = ctx.services
    runs = th.run_names(services)
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=300):
            gr.Markdown("#### New run")
            kind = gr.Radio(list(th.KINDS), value="pretrain", label="Kind", elem_id="train-kind")
            recipe = gr.Dropdown(
                th.recipe_choices("pretrain"),
                value="tiny_smoke",
                label="Recipe",
                elem_id="train-recipe",
                info="training/recipes; fields below override it",
            )
            source = gr.Radio(
                list(th.DATA_SOURCES),
                value=th.DATA_SOURCES[0],
                label="Data",
                elem_id="train-source",
            )
            data_path = gr.Textbox(
                label="Folder (videos in class sub-folders for fine-tuning) or prepared dataset",
                placeholder="/path/to/videos",
                elem_id="train-data",
            )
            synthetic_n = gr.Number(
                100, label="Synthetic clips", precision=0, elem_id="train-synthetic-n"
            )
            preset = gr.Dropdown(
                list(th.PRESETS),
                value="cavmae_tiny",
                label="Model",
                elem_id="train-preset",
                info="cavmae_tiny trains in seconds on a CPU; cavmae_base needs GPUs",
            )
            with gr.Row():
                epochs = gr.Number(2, label="Epochs", precision=0, elem_id="train-epochs")
                batch = gr.Number(0, label="Batch (0 = recipe)", precision=0, elem_id="train-batch")
                lr = gr.Number(0, label="LR (0 = recipe)", elem_id="train-lr")
            init = gr.Textbox(
                "scratch",
                label="Fine-tuning starts from",
                elem_id="train-init",
                info="scratch, a run name, a checkpoint path or a zoo name",
            )
            name = gr.Textbox(label="Run name (optional)", elem_id="train-name")
            start = gr.Button("Start training", variant="primary", elem_id="train-start")
        with gr.Column(scale=2):
            with gr.Row():
                run = gr.Dropdown(
                    runs,
                    value=runs[0] if runs else None,
                    label="Run",
                    allow_custom_value=True,
                    elem_id="train-run",
                    scale=3,
                )
                refresh = gr.Button("↻", size="sm", scale=0, min_width=40, elem_id="train-refresh")
            with gr.Row():
                stop = gr.Button("Stop", variant="stop", elem_id="train-stop")
                resume = gr.Button("Resume", elem_id="train-resume")
                use = gr.Button("Use this model", elem_id="train-use")
            status = gr.Markdown("No run selected.", elem_id="train-status")
            loss_plot = gr.Plot(elem_id="train-loss")
            metric_plot = gr.Plot(elem_id="train-metrics")
            with gr.Accordion("Output", open=False):
                log = gr.Code(language=None, lines=12, interactive=False, elem_id="train-log")
    timer = gr.Timer(POLL_SECONDS)

    def on_kind(kind: str) -> Any:
        choices = th.recipe_choices(kind)
        default = "tiny_smoke" if kind == "pretrain" else "tiny_smoke_ft"
        return gr.update(
            choices=choices,
            value=default if default in choices else (choices[0] if choices else None),
        )

    kind.change(
        on_kind, [kind], [recipe], api_name="train_recipes", queue=False, show_progress="hidden"
    )

    def on_start(
        kind: str,
        recipe: str | None,
        data_source: str,
        data_path: str,
        synthetic_clips: float,
        model: str,
        epochs: float,
        batch_size: float,
        lr: float,
        init: str,
        run_name: str,
    ) -> Any:
        text, run_name = th.start(
            services,
            kind,
            recipe,
            data_source,
            data_path,
            synthetic_clips,
            model,
            epochs,
            batch_size,
            lr,
            init,
            run_name,
        )
        return text, gr.update(choices=th.run_names(services) or [run_name], value=run_name)

    start.click(
        on_start,
        [kind, recipe, source, data_path, synthetic_n, preset, epochs, batch, lr, init, name],
        [status, run],
        api_name="train_start",
    )

    def on_poll(run: str | None) -> Any:
        return th.poll(services, run)

    poll_out = [status, log, loss_plot, metric_plot]
    timer.tick(on_poll, [run], poll_out, api_name="train_poll", show_progress="hidden")
    run.change(on_poll, [run], poll_out, api_name="train_select", show_progress="hidden")

    def on_refresh(run: str | None) -> Any:
        names = th.run_names(services)
        return gr.update(
            choices=names, value=run if run in names else (names[0] if names else None)
        )

    refresh.click(on_refresh, [run], [run], api_name="train_runs", queue=False)

    def on_stop(run: str | None) -> str:
        return th.stop(services, run)

    def on_resume(run: str | None) -> str:
        return th.resume(services, run)

    stop.click(on_stop, [run], [status], api_name="train_stop")
    resume.click(on_resume, [run], [status], api_name="train_resume")

    def on_use(state: Any, run: str | None) -> Any:
        state, text, overview, labels = th.use_run(services, state, run)
        return state, text, text, overview, labels

    return use.click(
        on_use,
        [ctx.state, run],
        [ctx.state, status, ctx.status, model_overview, model_labels],
        api_name="train_use",
        **ctx.model_kwargs,
    )
