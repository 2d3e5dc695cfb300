"""Handler logic with a fake predictor: display orientation, click-to-patch, masks, errors."""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from app_testkit import FakePredictor

from app.handlers import classify as ch
from app.handlers import clips
from app.handlers import reconstruct as rh
from app.handlers.common import SessionState
from app.handlers.display import MASK_COLOUR, DisplayGeometry, geometry_for, render_spectrogram
from app.services import ModelCache, ModelSpec, Services
from app.settings import AppSettings
from cavmae.errors import CheckpointError


@pytest.fixture()
def fake() -> FakePredictor:
    return FakePredictor()


@pytest.fixture()
def fake_services(tmp_path: Path, fake: FakePredictor) -> Services:
    settings = AppSettings(
        model="fake",
        samples_dir=tmp_path / "samples",
        runs_dir=tmp_path / "runs",
        work_dir=tmp_path / "work",
    )
    (tmp_path / "samples").mkdir()
    for name in ("a.mp4", "silent.mp4", "corrupt.mp4", "tone.wav"):
        (tmp_path / "samples" / name).write_bytes(b"x")
    return Services.create(settings, loader=lambda spec, progress: fake)


def _state_with_clip(services: Services, name: str = "a.mp4") -> SessionState:
    state, _, _ = clips.use_sample(services, None, name)
    return state


# --- display geometry ------------------------------------------------------------------------


def test_audio_click_maps_to_frequency_major_token_with_vertical_flip() -> None:
    g = DisplayGeometry(patch=16, audio_grid=(8, 64), visual_grid=(14, 14), sx=1, sy=2, sv=1)
    # Top-left display patch = highest frequency band (f = 7), first time patch.
    assert g.audio_token_at(3, 5) == 7 * 64 + 0
    # Bottom rows are the lowest band (f = 0): x in time patch 5 -> token 5.
    assert g.audio_token_at(5 * 16 + 8, 8 * 32 - 1) == 5
    # The official orientation check: token 197 = f 3, t 5 -> display row 7 - 3 = 4.
    assert g.audio_token_at(5 * 16, 4 * 32 + 1) == 197
    assert g.audio_token_at(1024, 0) is None and g.audio_token_at(0, 256) is None
    assert g.visual_token_at(16 * 13 + 1, 16 * 2 + 1) == 2 * 14 + 13
    assert g.visual_token_at(-1, 0) is None


def test_spectrogram_display_has_low_frequencies_at_the_bottom() -> None:
    g = DisplayGeometry(patch=16, audio_grid=(2, 4), visual_grid=(2, 2), sx=2, sy=3, sv=1)
    fbank = np.tile(np.linspace(-2.5, 2.5, 32, dtype=np.float32), (64, 1))  # (T, F): bin index ramp
    img = render_spectrogram(fbank, g)
    assert img.shape == (32 * 3, 64 * 2, 3)
    # Brightness (viridis: low = dark) grows from the top row (high bins) to... the bottom is bin 0.
    assert img[0].astype(int).sum() > img[-1].astype(int).sum()
    mask = np.zeros((32, 64))
    mask[:16, :16] = 1  # token 0: lowest band, first time patch, in (F, T) model orientation
    masked = render_spectrogram(fbank, g, mask)
    assert (masked[-1, 0] == MASK_COLOUR).all()  # drawn bottom-left
    assert not (masked[0, 0] == MASK_COLOUR).all()


def test_geometry_of_the_fake_predictor(fake: FakePredictor) -> None:
    g = geometry_for(fake)
    assert (g.audio_grid, g.visual_grid, g.patch) == ((2, 4), (2, 2), 16)
    assert (g.sx, g.sy, g.sv) == (16, 8, 7)  # 64 x 32 fbank -> 1024 x 256, 32 px frame -> 224


# --- reconstruction and masks ------------------------------------------------------------------


def test_reconstruct_passes_percent_ratios_and_renders_views(
    fake_services: Services, fake: FakePredictor
) -> None:
    state = _state_with_clip(fake_services)
    state, view = rh.reconstruct(fake_services, state, 50, 25, "time", 7, 3)
    spec = [c for c in fake.calls if c[0] == "reconstruct"][-1][1]
    assert (spec.ratio_a, spec.ratio_v, spec.mode_a, spec.seed) == (0.5, 0.25, "time", 7)
    assert spec.patches_a is None and spec.patches_v is None
    assert view.spec_masked.shape == (256, 1024, 3) and view.frame_masked.shape == (224, 224, 3)
    assert "4/8 patches masked" in view.summary and "1/4 patches masked" in view.summary


def test_click_toggles_the_patch_under_the_pointer(
    fake_services: Services, fake: FakePredictor
) -> None:
    state = _state_with_clip(fake_services)
    state, _ = rh.reconstruct(fake_services, state, 0, 0, "unstructured", 0, 5)
    # Display pixel (x=300, y=10): time patch 300 // (16*16) = 1, top row -> f = 1: token 1*4+1 = 5.
    state, view = rh.click_audio(fake_services, state, 300, 10, 0, 0, "unstructured", 0, 5)
    assert np.flatnonzero(state.hand_a).tolist() == [5]
    assert np.flatnonzero(fake.calls[-1][1].patches_a).tolist() == [5]
    assert (view.spec_masked[10, 300] == MASK_COLOUR).all()  # the clicked place is painted
    assert not (view.spec_masked[200, 300] == MASK_COLOUR).all()  # the band below is not
    state, _ = rh.click_audio(fake_services, state, 300, 10, 0, 0, "tf", 0, 5)
    assert not state.hand_a.any()  # a second click reveals it again
    assert fake.calls[-1][1].mode_a == "unstructured"  # a hand mask is never combined with "tf"
    state, _ = rh.click_visual(fake_services, state, 200, 20, 0, 0, "unstructured", 0, 5)
    assert np.flatnonzero(state.hand_v).tolist() == [1]  # row 0, column 200 // 112 = 1


def test_mask_buttons(fake_services: Services, fake: FakePredictor) -> None:
    state = _state_with_clip(fake_services)
    state, _ = rh.reconstruct(fake_services, state, 50, 50, "unstructured", 0, 5)
    state, _ = rh.mask_action(fake_services, state, "invert", "audio", 50, 50, "unstructured", 0, 5)
    assert state.hand_a.tolist() == [False] * 4 + [True] * 4 and state.hand_v is None
    state, _ = rh.mask_action(fake_services, state, "clear", "both", 50, 50, "unstructured", 0, 5)
    assert not state.hand_a.any() and not state.hand_v.any()
    state, view = rh.mask_action(
        fake_services, state, "random", "visual", 50, 75, "unstructured", 0, 5
    )
    assert state.hand_v.sum() == 3
    state, _ = rh.mask_action(fake_services, state, "sliders", "both", 50, 75, "unstructured", 0, 5)
    assert state.hand_a is None and state.hand_v is None
    with pytest.raises(gr.Error, match="mask action"):
        rh.mask_action(fake_services, state, "explode", "both", 50, 75, "unstructured", 0, 5)


def test_sliders_drop_hand_masks(fake_services: Services) -> None:
    state = _state_with_clip(fake_services)
    state, _ = rh.reconstruct(fake_services, state, 50, 50, "unstructured", 0, 5)
    state, _ = rh.click_audio(fake_services, state, 0, 0, 50, 50, "unstructured", 0, 5)
    assert state.hand_a is not None
    state, _ = rh.reconstruct(fake_services, state, 60, 50, "unstructured", 0, 5, from_sliders=True)
    assert state.hand_a is None


def test_errors_are_readable_messages(fake_services: Services) -> None:
    state = _state_with_clip(fake_services)
    with pytest.raises(gr.Error, match="at least one modality"):
        rh.reconstruct(fake_services, state, 100, 100, "unstructured", 0, 5)
    with pytest.raises(gr.Error, match="mask mode"):
        rh.reconstruct(fake_services, state, 50, 50, "diagonal", 0, 5)
    with pytest.raises(gr.Error, match="Choose a sample"):
        rh.reconstruct(fake_services, SessionState(), 50, 50, "unstructured", 0, 5)
    with pytest.raises(gr.Error, match="not a media file"):
        clips.use_sample(fake_services, state, "corrupt.mp4")
    with pytest.raises(gr.Error, match="not one of the samples"):
        clips.use_sample(fake_services, state, "../../etc/passwd")


def test_unexpected_exceptions_become_short_messages(
    fake_services: Services, fake: FakePredictor
) -> None:
    state = _state_with_clip(fake_services)

    def boom(*a, **k):
        raise RuntimeError("kaboom")

    fake.reconstruct = boom  # type: ignore[method-assign]
    with pytest.raises(gr.Error, match="RuntimeError: kaboom"):
        rh.reconstruct(fake_services, state, 50, 50, "unstructured", 0, 5)


def test_loss_sweep_plots_both_modalities(fake_services: Services) -> None:
    state = _state_with_clip(fake_services)
    state, fig = rh.loss_sweep(fake_services, state, "unstructured", 0, steps=5)
    assert [t.name for t in fig.data] == ["audio", "visual"]
    assert list(fig.data[1].y) == pytest.approx(
        [2 * round(r, 3) for r in np.linspace(0.1, 0.95, 5)]
    )
    assert list(fig.data[0].x) == pytest.approx(
        [100 * round(r, 3) for r in np.linspace(0.1, 0.95, 5)]
    )


# --- classification ----------------------------------------------------------------------------


def test_classify_explains_the_fallback(fake_services: Services) -> None:
    state = _state_with_clip(fake_services, "silent.mp4")
    state, fig, text = ch.classify(fake_services, state, 2, "auto", True)
    assert list(fig.data[0].y) == ["b", "a"]  # best on top of a horizontal bar chart
    assert "missingvideoonly" in text and "Fallback" in text and "10 frames" in text
    with pytest.raises(gr.Error, match="needs audio"):
        ch.classify(fake_services, state, 2, "audioonly", True)


def test_batch_reports_bad_files_in_the_table(fake_services: Services, tmp_path: Path) -> None:
    files = [str(tmp_path / "samples" / n) for n in ("a.mp4", "corrupt.mp4", "tone.wav")]
    state, rows, csv_path, status = ch.batch(fake_services, None, files, 2, "auto")
    assert [r[0] for r in rows] == ["a.mp4", "corrupt.mp4", "tone.wav"]
    assert rows[0][2] == "a" and rows[0][3] == pytest.approx(0.6)
    assert "not a media file" in rows[1][5]
    text = Path(csv_path).read_text().splitlines()
    assert text[0].split(",") == ch.BATCH_COLUMNS and len(text) == 4
    assert "2 of 3" in status


# --- sessions and models ---------------------------------------------------------------------


def test_sessions_are_independent(fake_services: Services) -> None:
    a = _state_with_clip(fake_services, "a.mp4")
    b = _state_with_clip(fake_services, "silent.mp4")
    assert a.id != b.id and a.clip_path != b.clip_path
    a, _ = rh.click_audio(fake_services, a, 0, 0, 0, 0, "unstructured", 0, 5)
    assert a.hand_a is not None and b.hand_a is None


def test_model_cache_loads_once_and_evicts_lru() -> None:
    loads: list[str] = []

    def loader(spec: ModelSpec, progress):
        loads.append(spec.model)
        if spec.model == "bad":
            raise CheckpointError("bad: not a checkpoint")
        return object()

    cache = ModelCache(loader, capacity=2)
    a = cache.get(ModelSpec("a"))
    assert cache.get(ModelSpec("a")) is a and loads == ["a"]
    cache.get(ModelSpec("b"))
    cache.get(ModelSpec("c"))  # evicts a
    assert cache.peek(ModelSpec("a")) is None and cache.loaded() == [ModelSpec("b"), ModelSpec("c")]
    with pytest.raises(CheckpointError):
        cache.get(ModelSpec("bad"))
    assert ModelSpec("bad") not in cache.loaded()


def test_precision_is_part_of_the_model_spec(fake_services: Services) -> None:
    """The form's precision picks another cached model, except the app's default, which is the
    start model itself (not loaded twice)."""
    from app.handlers import model as mh
    from cavmae.errors import ConfigError

    def spec(precision: str | None) -> ModelSpec:
        return mh.spec_from_form(fake_services, "Bundled demo", precision=precision)

    assert spec(None) == spec("auto") == ModelSpec("demo")  # settings.precision is "auto"
    fast = spec("bfloat16")
    assert fast == ModelSpec("demo", precision="bfloat16") and fast != ModelSpec("demo")
    assert fast.title == "demo (bfloat16)"
    with pytest.raises(ConfigError, match="precision"):
        ModelSpec("demo", precision="fp8")
