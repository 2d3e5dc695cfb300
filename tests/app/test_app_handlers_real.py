"""Handlers on tiny random-weight models saved with save_model, and real generated media."""

from __future__ import annotations

import wave
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from app_testkit import make_tiny_models

from app.handlers import classify as ch
from app.handlers import clips
from app.handlers import model as mh
from app.handlers import reconstruct as rh
from app.handlers import retrieve as ret
from app.handlers import similarity as sh
from app.services import Services
from cavmae import zoo


def _with_clip(services: Services, media: dict[str, Path], key: str = "clip"):
    state, html, info = clips.use_upload(services, None, str(media[key]))
    return state, html, info


def test_clip_panel_prepares_once_and_describes(services: Services, media: dict[str, Path]) -> None:
    state, html, info = _with_clip(services, media)
    assert "<video" in html and "gradio_api/file=" in html
    assert "3.0 s" in info and "audio 16000 Hz" in info
    assert state.clip is not None and tuple(state.clip.fbank.shape) == (64, 32)
    assert state.clip_model == services.default_spec
    names = clips.sample_choices(services)
    assert names == ["clip0.mp4", "clip1.mp4", "clip2.mp4"]


def test_hand_mask_is_exactly_what_the_model_masks(
    services: Services, media: dict[str, Path]
) -> None:
    state, _, _ = _with_clip(services, media)
    state, view = rh.reconstruct(services, state, 75, 50, "unstructured", 3, 5)
    assert (
        int(state.last_mask_a.sum()) == 6 and int(state.last_mask_v.sum()) == 2
    )  # int(L*(1-r)) kept
    before = state.last_mask_a.copy()
    # Tiny geometry: 2 x 4 audio tokens shown at 16 px/frame, 8 px/bin -> patches 256 x 128 px.
    state, view = rh.click_audio(services, state, 600, 200, 75, 50, "unstructured", 3, 5)
    token = 0 * 4 + 600 // 256  # bottom display row = lowest band f = 0
    expected = before.copy()
    expected[token] = ~expected[token]
    assert state.last_mask_a.tolist() == expected.tolist()
    painted = (view.spec_masked[200, 600] == (48, 48, 56)).all()
    assert painted == bool(expected[token])
    state, view = rh.mask_action(services, state, "clear", "audio", 75, 50, "unstructured", 3, 5)
    assert not state.last_mask_a.any() and "0/8 patches masked" in view.summary
    assert "MSE **n/a**" in view.summary  # nothing masked: no audio loss


def test_reconstruction_is_deterministic_per_seed(
    services: Services, media: dict[str, Path]
) -> None:
    state, _, _ = _with_clip(services, media)
    _, v1 = rh.reconstruct(services, state, 50, 50, "unstructured", 11, 5)
    _, v2 = rh.reconstruct(services, state, 50, 50, "unstructured", 11, 5)
    _, v3 = rh.reconstruct(services, state, 50, 50, "unstructured", 12, 5)
    assert np.array_equal(v1.spec_masked, v2.spec_masked)
    assert not np.array_equal(v1.spec_masked, v3.spec_masked)


def test_missing_modalities_are_reconstructed_from_the_other(
    services: Services, media: dict[str, Path]
) -> None:
    state, _, info = _with_clip(services, media, "silent")
    assert "no audio track" in info
    state, view = rh.reconstruct(services, state, 50, 50, "unstructured", 0, 5)
    assert "no audio track" in view.summary and "8/8 patches masked" in view.summary
    original, rec, status = rh.render_audio(services, state)
    assert original is None and rec is None and "no audio" in status
    state, _, _ = _with_clip(services, media, "audio")
    state, view = rh.reconstruct(services, state, 50, 50, "unstructured", 0, 5)
    assert "4/4 patches masked" in view.summary  # the frame is imagined from the sound


def test_render_audio_writes_playable_wavs(services: Services, media: dict[str, Path]) -> None:
    state, _, _ = _with_clip(services, media)
    assert rh.render_audio(services, state)[0] is None  # nothing reconstructed yet
    state, _ = rh.reconstruct(services, state, 50, 50, "unstructured", 0, 5)
    original, rec, status = rh.render_audio(services, state, iterations=4)
    with wave.open(rec) as w:
        assert w.getframerate() == 16000
        # 64 fbank frames (all valid for a 3 s clip): 400 + 63 * 160 samples.
        assert w.getnframes() == 400 + 63 * 160
    with wave.open(original) as w:
        assert w.getnframes() == 400 + 63 * 160  # the samples the model sees
    assert Path(rec).is_relative_to(services.settings.work_dir)


def test_similarity_views(services: Services, media: dict[str, Path]) -> None:
    state, _, _ = _with_clip(services, media)
    state, img, text = sh.where_sound(services, state, 2)
    assert img.shape == (224, 224, 3) and "Frame 3/10" in text
    state, fig, text = sh.temporal(services, state, 2, 1)
    z = np.asarray(fig.data[0].z)
    assert z.shape == (2, 2) and np.all(np.abs(z) <= 1.0 + 1e-5)
    state, fig, text = sh.contrastive(services, state)
    names = list(fig.data[0].x)
    assert names == ["clip1.mp4", "clip2.mp4"]  # the other samples; the clip itself excluded
    assert "ranks" in text
    maps = sh.attention_maps(services.models.get(state.model), state.clip, 5)
    assert maps["audio_to_visual"].shape == (2, 2) and maps["visual_to_audio"].shape == (2, 4)
    assert np.all((maps["cross_share"] > 0) & (maps["cross_share"] < 1))
    # Attention rows sum to 1 over all 12 tokens, so the mean cross-modal mass equals the map sum.
    assert maps["audio_to_visual"].sum() == pytest.approx(maps["cross_share"][0], rel=1e-4)
    state, on_frame, on_spec, text = sh.attention(services, state, 5)
    assert on_frame.shape == (224, 224, 3) and on_spec.shape == (256, 1024, 3)


def test_classify_real_tiny_model(services: Services, media: dict[str, Path]) -> None:
    state, _, _ = _with_clip(services, media)
    state, fig, text = ch.classify(services, state, 4, "auto", True)
    probs = list(fig.data[0].x)
    assert len(probs) == 4 and sum(probs) == pytest.approx(1.0, abs=1e-5)  # softmax over 4 classes
    assert probs == sorted(probs)  # best at the top of the horizontal bars
    assert "multimodal" in text and "softmax" in text
    state, fig, text = ch.timeline(services, state, 1.0, 1.0, "auto", 3)
    assert np.asarray(fig.data[0].z).shape == (3, 3)  # 3 classes x 3 one-second windows
    state, _, _ = _with_clip(services, media, "audio")
    state, fig, text = ch.classify(services, state, 2, "auto", True)
    assert "missingaudioonly" in text and "Fallback" in text


def test_webcam_recordings_are_converted_to_constant_frame_rate(
    services: Services, media: dict[str, Path]
) -> None:
    state, html, info = clips.use_recording(services, None, str(media["webm"]))
    assert state.clip_path.endswith(".mp4") and "25 fps" in info and "audio" in info
    assert Path(state.clip_path).is_relative_to(services.settings.work_dir)
    with pytest.raises(gr.Error, match="could not be read"):
        clips.use_recording(services, state, str(media["corrupt"]))


def test_corrupt_upload_is_refused_cleanly(services: Services, media: dict[str, Path]) -> None:
    state, _, _ = _with_clip(services, media)
    with pytest.raises(gr.Error) as err:
        clips.use_upload(services, state, str(media["corrupt"]))
    assert "corrupt.mp4" in str(err.value.message)
    assert state.clip_path is None and state.clip is None


def test_retrieval_index_query_play_and_recall(services: Services, media: dict[str, Path]) -> None:
    state, status = ret.build_index(services, None, "Samples", None)
    assert "3 items" in status and "3 added" in status
    state, status = ret.build_index(services, state, "Samples", None)
    assert "3 unchanged" in status  # incremental
    state, gallery, rows, status = ret.query(services, state, str(media["clip"]), False, "auto", 5)
    assert "audio → visual" in status
    assert [r[2] for r in rows] == sorted(
        [r[2] for r in rows], key=lambda n: -dict((x[2], x[1]) for x in rows)[n]
    )
    assert "clip0.mp4" not in [r[2] for r in rows] and len(rows) == 2  # the query itself excluded
    assert gallery[0][0].shape == (192, 192, 3)
    state, html = ret.play_hit(services, state, 0)
    assert rows[0][2] in html and "<video" in html
    state, gallery, rows, status = ret.query(
        services, state, str(media["audio"]), False, "audio → audio", 3
    )
    assert len(rows) == 3
    with pytest.raises(gr.Error, match="no visual"):
        ret.query(services, state, str(media["audio"]), False, "visual → audio", 3)
    state, gallery, rows, status = ret.query(services, state, str(media["image"]), False, "auto", 3)
    assert "visual → audio" in status and len(rows) == 3  # an image queries the sounds
    state, table, text = ret.recall(services, state)
    assert [r[0] for r in table] == [
        "audio->visual",
        "visual->audio",
        "audio->audio",
        "visual->visual",
    ]
    assert 0.0 <= table[0][1] <= 1.0 and table[0][3] == 1.0  # R@10 of 3 clips is 1


def test_missing_demo_shows_a_message_and_another_model_loads(
    tmp_path: Path,
    settings,
    media: dict[str, Path],
    tiny_models: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(zoo.BUNDLED, "demo", tmp_path / "absent" / "cavmae-demo.safetensors")
    monkeypatch.setitem(
        zoo.BUNDLED, "demo-pretrain", tmp_path / "absent" / "cavmae-demo-pretrain.safetensors"
    )
    services = Services.create(settings.replace(model="demo", pretrain=None))
    services.preload()
    assert "bundled model 'demo' is missing" in services.startup_error
    state, status, overview, labels = mh.model_status(services, None)
    assert (
        "could not be loaded" in status
        and "Load another one in the **Model** tab" in status
        and overview == ""
    )
    with pytest.raises(gr.Error, match="Choose a sample"):
        rh.reconstruct(services, state, 50, 50, "unstructured", 0, 5)
    pt, ft = tiny_models
    state, status, overview, labels = mh.load_model(
        services, state, "Local file", None, str(ft), None, str(pt), None, None, None
    )
    assert "Using" in status and "Parameters" in overview and "Classifier" in overview
    assert labels[0] == [0, "red circle"] and len(labels) == 4
    state, _, _ = clips.use_upload(services, state, str(media["clip"]))
    state, view = rh.reconstruct(services, state, 50, 50, "unstructured", 0, 5)
    assert view.spec_masked.shape == (256, 1024, 3)


def test_switching_models_re_prepares_the_clip(
    services: Services, media: dict[str, Path], tmp_path: Path
) -> None:
    state, _, _ = _with_clip(services, media)
    state, _ = rh.reconstruct(services, state, 50, 50, "unstructured", 0, 5)
    state, _ = rh.click_audio(services, state, 10, 10, 50, 50, "unstructured", 0, 5)
    other_pt, _ = make_tiny_models(tmp_path / "wide", seed=1, img_size=48, audio_length=96)
    state, status, overview, _ = mh.load_model(
        services, state, "Local file", None, str(other_pt), None, None, None, None, None
    )
    assert state.hand_a is None and state.clip is None  # nothing of the old model survives
    state, view = rh.reconstruct(services, state, 50, 50, "unstructured", 0, 5)
    assert tuple(state.clip.fbank.shape) == (96, 32) and tuple(state.clip.frames.shape[-2:]) == (
        48,
        48,
    )
    assert (
        "6/12 patches masked" in view.summary and "5/9 patches masked" in view.summary
    )  # keep int(9 * 0.5)
    with pytest.raises(gr.Error, match="classification needs a fine-tuned"):
        ch.classify(services, state, 3, "auto", True)


def test_model_form_errors(services: Services) -> None:
    with pytest.raises(gr.Error, match="choose a model from the zoo"):
        mh.load_model(services, None, "Model zoo", None, None, None, None, None, None, None)
    with pytest.raises(gr.Error, match="neither an existing file"):
        mh.load_model(
            services, None, "Local file", None, "/nonexistent/x.pth", None, None, None, None, None
        )
    assert any(name == "cav-mae-scale++" for _, name in mh.zoo_choices())
