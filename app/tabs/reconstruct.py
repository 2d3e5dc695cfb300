"""Mask & reconstruct tab: sliders, click-to-mask views, four views per modality, audio, sweep."""

from __future__ import annotations

from typing import Any

import gradio as gr

from app.handlers import reconstruct as rh
from app.handlers.display import save_jpeg, save_png
from app.tabs import Chain, Context

__all__ = ["build"]

_SPEC_H = 150
NO_DECODER = (
    "This model is a classifier without a decoder, so it cannot reconstruct. Load a pretrained "
    "model (alone, or as the second checkpoint next to the classifier) in the Model tab; "
    "Classify and Similarity work with this one."
)
_FRAME_H = 230


def _image(label: str, elem_id: str, height: int) -> gr.Image:
    return gr.Image(
        label=label,
        type="numpy",
        format="png",
        interactive=False,
        height=height,
        elem_id=elem_id,
        buttons=["download", "fullscreen"],
        elem_classes=["cav-view"],
    )


def build(ctx: Context) -> None:
    """Lay out the tab, wire its events and publish the "reconstruct" chain."""
    services = ctx.services
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=270, elem_classes=["cav-controls"]):
            gr.Markdown("#### 2 · Mask", elem_classes=["cav-step"])
            ratio_a = gr.Slider(
                0, 100, value=75, step=1, label="Audio masked (%)", elem_id="ratio-a"
            )
            ratio_v = gr.Slider(
                0, 100, value=75, step=1, label="Visual masked (%)", elem_id="ratio-v"
            )
            mode_a = gr.Radio(
                list(rh.AUDIO_MODES),
                value="unstructured",
                label="Audio masking",
                elem_id="mode-a",
                info="time/freq hide whole columns/rows of patches; tf both",
            )
            seed = gr.Slider(0, 999, value=0, step=1, label="Seed", elem_id="seed")
            frame = gr.Slider(
                0,
                9,
                value=5,
                step=1,
                label="Frame (0–9; the model's default is 5)",
                elem_id="frame-index",
            )
            gr.Markdown("**By hand:** click patches on the *masked* views to hide or reveal them.")
            target = gr.Radio(
                ["both", "audio", "visual"],
                value="both",
                label="Buttons act on",
                elem_id="mask-target",
            )
            with gr.Row():
                clear = gr.Button("Clear", size="sm", elem_id="mask-clear", min_width=60)
                invert = gr.Button("Invert", size="sm", elem_id="mask-invert", min_width=60)
            with gr.Row():
                rand = gr.Button("Random", size="sm", elem_id="mask-random", min_width=60)
                sliders = gr.Button("Use sliders", size="sm", elem_id="mask-sliders", min_width=60)
        with gr.Column(scale=4):
            summary = gr.Markdown(
                "Choose a clip above; the reconstruction appears here.", elem_id="rec-summary"
            )
            gr.Markdown(
                "**Audio** — log-mel spectrogram, time → right, low frequencies at the bottom",
                elem_classes=["cav-section"],
            )
            with gr.Row():
                s_orig = _image("Original", "spec-original", _SPEC_H)
                s_mask = _image("Masked input (click to toggle)", "spec-masked", _SPEC_H)
            with gr.Row():
                s_rec = _image("Reconstruction", "spec-reconstruction", _SPEC_H)
                s_comp = _image(
                    "Composite (visible patches pasted back)", "spec-composite", _SPEC_H
                )
            gr.Markdown("**Visual** — one frame", elem_classes=["cav-section"])
            with gr.Row():
                f_orig = _image("Original", "frame-original", _FRAME_H)
                f_mask = _image("Masked input (click to toggle)", "frame-masked", _FRAME_H)
                f_rec = _image("Reconstruction", "frame-reconstruction", _FRAME_H)
                f_comp = _image("Composite", "frame-composite", _FRAME_H)
            with gr.Row(equal_height=True):
                listen = gr.Button("Listen to the reconstruction", elem_id="render-audio", scale=1)
                a_orig = gr.Audio(
                    label="Original audio",
                    type="filepath",
                    interactive=False,
                    scale=2,
                    elem_id="audio-original",
                )
                a_rec = gr.Audio(
                    label="Reconstructed audio",
                    type="filepath",
                    interactive=False,
                    scale=2,
                    elem_id="audio-reconstruction",
                )
            audio_status = gr.Markdown(elem_id="audio-status")
            with gr.Accordion("Loss against mask ratio (sweep)", open=False):
                sweep_btn = gr.Button("Run the sweep for this clip", elem_id="run-sweep")
                sweep_plot = gr.Plot(label="Loss sweep", elem_id="sweep-plot")

    images = [s_orig, s_mask, s_rec, s_comp, f_orig, f_mask, f_rec, f_comp]
    outputs = [ctx.state, *images, summary]
    knobs = [ratio_a, ratio_v, mode_a, seed, frame]

    names = (
        "spec_original",
        "spec_masked",
        "spec_reconstruction",
        "spec_composite",
        "frame_original",
        "frame_masked",
        "frame_reconstruction",
        "frame_composite",
    )

    def show(result: tuple[Any, rh.ReconstructView], originals: bool = True) -> tuple[Any, ...]:
        """Outputs of a reconstruction as files in the session folder.

        The clickable masked views are PNG (exact patch edges, fast compression level); the
        others JPEG, which encodes ~10x faster.

        ``originals=False`` leaves the original spectrogram and frame as they are (a mask
        change does not change them), which halves the encoding work of a slider move.
        """
        state, view = result
        folder = state.folder(services) / "views"
        files: list[Any] = []
        for name, img in zip(names, view.images(), strict=True):
            if not originals and name.endswith("_original"):
                files.append(gr.skip())
            elif name.endswith("_masked"):
                files.append(save_png(img, folder / f"{name}.png"))
            else:
                files.append(save_jpeg(img, folder / f"{name}.jpg"))
        return (state, *files, view.summary)

    def on_change(
        state: Any,
        audio_ratio: float,
        visual_ratio: float,
        audio_mode: str,
        seed: float,
        frame: float,
    ) -> tuple[Any, ...]:
        if state is None or not state.clip_path:
            return tuple(gr.skip() for _ in outputs)
        return show(
            rh.reconstruct(
                services,
                state,
                audio_ratio,
                visual_ratio,
                audio_mode,
                seed,
                frame,
                from_sliders=True,
            ),
            originals=False,
        )

    def on_frame(
        state: Any,
        audio_ratio: float,
        visual_ratio: float,
        audio_mode: str,
        seed: float,
        frame: float,
    ) -> tuple[Any, ...]:
        if state is None or not state.clip_path:
            return tuple(gr.skip() for _ in outputs)
        return show(
            rh.reconstruct(
                services,
                state,
                audio_ratio,
                visual_ratio,
                audio_mode,
                seed,
                frame,
                from_sliders=False,
            )
        )

    fast = dict(trigger_mode="always_last", show_progress="hidden", **ctx.model_kwargs)
    for i, knob in enumerate([ratio_a, ratio_v, mode_a, seed]):
        knob.change(
            on_change,
            [ctx.state, *knobs],
            outputs,
            api_name=f"mask_{['ratio_a', 'ratio_v', 'mode_a', 'seed'][i]}",
            **fast,
        )
    frame.change(on_frame, [ctx.state, *knobs], outputs, api_name="mask_frame", **fast)

    def on_click_audio(
        state: Any, ra: float, rv: float, m: str, s: float, k: float, evt: gr.SelectData
    ) -> tuple[Any, ...]:
        x, y = evt.index
        return show(rh.click_audio(services, state, x, y, ra, rv, m, s, k), originals=False)

    def on_click_visual(
        state: Any, ra: float, rv: float, m: str, s: float, k: float, evt: gr.SelectData
    ) -> tuple[Any, ...]:
        x, y = evt.index
        return show(rh.click_visual(services, state, x, y, ra, rv, m, s, k), originals=False)

    s_mask.select(
        on_click_audio,
        [ctx.state, *knobs],
        outputs,
        api_name="click_audio",
        api_visibility="private",
        **fast,
    )
    f_mask.select(
        on_click_visual,
        [ctx.state, *knobs],
        outputs,
        api_name="click_visual",
        api_visibility="private",
        **fast,
    )

    def action(name: str) -> Any:
        def run(
            state: Any,
            target: str,
            audio_ratio: float,
            visual_ratio: float,
            audio_mode: str,
            seed: float,
            frame: float,
        ) -> tuple[Any, ...]:
            return show(
                rh.mask_action(
                    services,
                    state,
                    name,
                    target,
                    audio_ratio,
                    visual_ratio,
                    audio_mode,
                    seed,
                    frame,
                ),
                originals=False,
            )

        return run

    for btn, name in ((clear, "clear"), (invert, "invert"), (rand, "random"), (sliders, "sliders")):
        btn.click(
            action(name),
            [ctx.state, target, *knobs],
            outputs,
            api_name=f"mask_{name}",
            show_progress="minimal",
            **ctx.model_kwargs,
        )

    def on_listen(state: Any) -> tuple[Any, Any, str]:
        return rh.render_audio(services, state)

    listen.click(
        on_listen,
        [ctx.state],
        [a_orig, a_rec, audio_status],
        api_name="render_audio",
        concurrency_id="audio",
        concurrency_limit=ctx.settings.concurrency_limit,
    )

    def on_sweep(
        state: Any, audio_mode: str, seed: float, progress: gr.Progress = gr.Progress()
    ) -> tuple[Any, Any]:
        return rh.loss_sweep(services, state, audio_mode, seed, progress=progress)

    sweep_btn.click(
        on_sweep,
        [ctx.state, mode_a, seed],
        [ctx.state, sweep_plot],
        api_name="loss_sweep",
        **ctx.model_kwargs,
    )

    def after_clip(state: Any, ra: float, rv: float, m: str, s: float, k: float) -> tuple[Any, ...]:
        if state is None or not state.clip_path:
            return tuple(gr.skip() for _ in outputs)
        predictor = services.models.peek(state.model)
        if predictor is not None and not predictor.can_reconstruct:
            return (*(gr.skip() for _ in outputs[:-1]), NO_DECODER)
        return show(rh.reconstruct(services, state, ra, rv, m, s, k, from_sliders=True))

    ctx.chains["reconstruct"] = Chain(
        after_clip, [ctx.state, *knobs], outputs, {"show_progress": "minimal", **ctx.model_kwargs}
    )
