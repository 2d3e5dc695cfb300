"""Predictor on tiny random-weight models and generated media: numbers, fallbacks, shapes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from tests_support import TINY_STD

from cavmae.checkpoint import save_model
from cavmae.config import FeatureConfig
from cavmae.errors import CavmaeError, ConfigError, NoAudioStream
from cavmae.inference import MaskSpec, Predictor
from cavmae.models import CAVMAE, CAVMAEFT


def _ffmpeg(*args: str) -> None:
    import imageio_ffmpeg

    subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", *args],
        check=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from training.synthetic import AVShapesConfig, render_clip, write_video

    d = tmp_path_factory.mktemp("inference")
    torch.manual_seed(0)
    feats = FeatureConfig.for_model(TINY_STD)
    save_model(CAVMAE.from_config(TINY_STD), d / "pt.safetensors", features=feats)
    ft_cfg = TINY_STD.replace(label_dim=4, tr_pos=True)
    save_model(CAVMAEFT.from_config(ft_cfg), d / "ft.safetensors", features=feats, multi_label=False)
    cfg = AVShapesConfig(duration_s=4.0, fps=5)
    for i in range(3):
        write_video(render_clip(i, 0, cfg), d / f"clip{i}.mp4")
    _ffmpeg("-i", str(d / "clip0.mp4"), "-an", "-c", "copy", str(d / "silent.mp4"))
    _ffmpeg("-i", str(d / "clip0.mp4"), "-vn", "-c:a", "copy", str(d / "audio.m4a"))
    return {
        "dir": d,
        "pt": d / "pt.safetensors",
        "ft": d / "ft.safetensors",
        "clip": d / "clip0.mp4",
        "silent": d / "silent.mp4",
        "audio": d / "audio.m4a",
    }


@pytest.fixture(scope="module")
def predictor(assets: dict[str, Path]) -> Predictor:
    return Predictor.from_checkpoint(assets["ft"], pretrain=assets["pt"], device="cpu")


def test_describe_and_labels(predictor: Predictor) -> None:
    d = predictor.describe()
    assert d["pretrain"]["config"]["embed_dim"] == 32
    assert d["classifier"]["num_labels"] == 4
    assert predictor.labels == ["class 0", "class 1", "class 2", "class 3"]
    assert predictor.multi_label is False


def test_prepare_shapes(predictor: Predictor, assets: dict[str, Path]) -> None:
    clip = predictor.prepare(assets["clip"])
    assert clip.fbank is not None and tuple(clip.fbank.shape) == (1024, 128)
    assert clip.frames is not None and tuple(clip.frames.shape) == (10, 3, 224, 224)
    assert clip.frames_uint8 is not None and clip.frames_uint8.dtype == np.uint8
    assert abs(clip.duration_s - 4.0) < 0.2


def test_reconstruct_counts_and_composite(predictor: Predictor, assets: dict[str, Path]) -> None:
    clip = predictor.prepare(assets["clip"])
    rec = predictor.reconstruct(clip, MaskSpec(ratio_a=0.75, ratio_v=0.75, seed=3))
    assert rec.mask_a.sum() == 512 - int(512 * 0.25)
    assert rec.mask_v.sum() == 196 - int(196 * 0.25)
    # Visible patches of the composite are the input, masked ones the reconstruction.
    vis = rec.pixel_mask_a.T < 0.5  # (T, F)
    np.testing.assert_array_equal(rec.spec_composite[vis], rec.spec_original[vis])
    np.testing.assert_array_equal(rec.spec_composite[~vis], rec.spec_reconstruction[~vis])
    assert np.isfinite(rec.loss_a) and np.isfinite(rec.loss_v)
    # Same seed -> same masks; different seed -> different masks.
    again = predictor.reconstruct(clip, MaskSpec(ratio_a=0.75, ratio_v=0.75, seed=3))
    np.testing.assert_array_equal(again.mask_a, rec.mask_a)
    other = predictor.reconstruct(clip, MaskSpec(ratio_a=0.75, ratio_v=0.75, seed=4))
    assert not np.array_equal(other.mask_a, rec.mask_a)


def test_fully_visible_composite_equals_input(predictor: Predictor, assets: dict[str, Path]) -> None:
    clip = predictor.prepare(assets["clip"])
    rec = predictor.reconstruct(clip, MaskSpec(ratio_a=0.0, ratio_v=0.0))
    assert rec.mask_a.sum() == 0 and rec.mask_v.sum() == 0
    np.testing.assert_array_equal(rec.spec_composite, rec.spec_original)
    np.testing.assert_array_equal(rec.frame_composite, rec.frame_original)
    assert np.isnan(rec.loss_a) and np.isnan(rec.loss_v)


def test_explicit_patches_and_whole_modality(predictor: Predictor, assets: dict[str, Path]) -> None:
    clip = predictor.prepare(assets["clip"])
    chosen = np.zeros(512, bool)
    chosen[[0, 5, 197, 511]] = True
    rec = predictor.reconstruct(clip, MaskSpec(ratio_v=1.0, patches_a=chosen))
    np.testing.assert_array_equal(rec.mask_a.astype(bool), chosen)
    assert rec.mask_v.sum() == 196  # whole frame reconstructed from audio alone
    assert np.isfinite(rec.frame_reconstruction).all()
    with pytest.raises(ConfigError):
        predictor.reconstruct(clip, MaskSpec(ratio_a=1.0, ratio_v=1.0))


def test_classify_multimodal_ensemble(predictor: Predictor, assets: dict[str, Path]) -> None:
    clip = predictor.prepare(assets["clip"])
    c = predictor.classify(clip, top_k=3)
    assert c.mode == "multimodal" and c.frames_used == 10 and len(c.predictions) == 3
    assert abs(c.probabilities.sum() - 1.0) < 1e-5  # softmax head
    scores = [p.score for p in c.predictions]
    assert scores == sorted(scores, reverse=True)
    # The cached-audio ensemble equals averaging full forward passes frame by frame.
    m = predictor.classifier.model
    with torch.inference_mode():
        ref = torch.stack(
            [torch.softmax(m(clip.fbank[None], clip.frames[k : k + 1], "multimodal"), -1)[0] for k in range(10)]
        ).mean(0)
    np.testing.assert_allclose(c.probabilities, ref.numpy(), atol=1e-5)
    single = predictor.classify(clip, ensemble=False)
    assert single.frames_used == 1


def test_missing_audio_fallback(predictor: Predictor, assets: dict[str, Path]) -> None:
    clip = predictor.prepare(assets["silent"])
    assert not clip.has_audio and clip.has_video
    c = predictor.classify(clip)
    assert c.mode == "missingvideoonly" and "no audio" in c.note
    with pytest.raises(NoAudioStream):
        predictor.classify(clip, mode="audioonly")
    rec = predictor.reconstruct(clip)  # audio reconstructed from the frame alone
    assert rec.mask_a.sum() == 512 and not rec.has_audio


def test_audio_only_file(predictor: Predictor, assets: dict[str, Path]) -> None:
    clip = predictor.prepare(assets["audio"])
    assert clip.has_audio and not clip.has_video
    c = predictor.classify(clip)
    assert c.mode == "missingaudioonly" and c.frames_used == 1
    e = predictor.embed(clip)
    assert e.visual is None and e.audio is not None
    assert abs(float(np.linalg.norm(e.audio)) - 1.0) < 1e-5


def test_timeline_one_row_per_window(predictor: Predictor, assets: dict[str, Path]) -> None:
    tl = predictor.classify_timeline(assets["clip"], window_s=1.0, hop_s=1.0)
    assert tl.probabilities.shape == (len(tl.starts), 4)
    assert len(tl.starts) == 4
    np.testing.assert_allclose(tl.clip.probabilities, tl.probabilities.mean(0), atol=1e-6)


def test_similarity_maps(predictor: Predictor, assets: dict[str, Path]) -> None:
    clip = predictor.prepare(assets["clip"])
    sm = predictor.patch_similarity(clip)
    assert sm.grid.shape == (14, 14) and np.all(np.abs(sm.grid) <= 1.0 + 1e-5)
    assert sm.overlay.shape == (224, 224, 3)
    ts = predictor.temporal_similarity(assets["clip"], window_s=2.0, hop_s=1.0)
    w = len(ts["starts"])
    assert ts["matrix"].shape == (w, w) and w == 3


def test_occlusion_map_equals_masked_encoder(predictor: Predictor, assets: dict[str, Path]) -> None:
    """Each value is the drop of the contrastive cosine when the encoder does not see that patch,
    checked against the masked forward_encoder (the official masking path) for a few patches."""
    import torch.nn.functional as F

    clip = predictor.prepare(assets["clip"])
    k = clip.middle_index
    sm = predictor.patch_similarity(clip, k, method="occlusion")
    assert sm.extra["method"] == "occlusion" and sm.grid.shape == (14, 14)
    m = predictor.pretrain.model
    a, v = clip.fbank[None], clip.frames[k : k + 1]  # (1, T, F), (1, 3, S, S)
    L = sm.grid.size
    with torch.no_grad():
        full = m.forward_encoder(a, v, 0.0, 0.0)
        ca = F.normalize(full.ca.mean(1), dim=-1)  # (1, D)
        base = float(ca @ F.normalize(full.cv.mean(1), dim=-1).T)
        for j in (0, 77, L - 1):
            noise = torch.zeros(1, L)
            noise[0, j] = 1.0  # sorted last: the one patch masked at ratio 0.5 / L
            out = m.forward_encoder(a, v, 0.0, 0.5 / L, noise_v=noise)
            assert int(out.mask_v.sum()) == 1 and out.mask_v[0, j] == 1
            cos_j = float(ca @ F.normalize(out.cv.mean(1), dim=-1).T)
            assert sm.grid.flat[j] == pytest.approx(base - cos_j, abs=1e-5)
    cosine = predictor.patch_similarity(clip, k)
    assert cosine.extra["method"] == "cosine"
    with pytest.raises(ConfigError, match="sound-map method"):
        predictor.patch_similarity(clip, k, method="gradcam")  # type: ignore[arg-type]


def test_pretrain_only_predictor_cannot_classify(assets: dict[str, Path]) -> None:
    p = Predictor.from_checkpoint(assets["pt"], device="cpu")
    assert p.can_reconstruct and not p.can_classify
    with pytest.raises(ConfigError, match="fine-tuned"):
        p.classify(p.prepare(assets["clip"]))


def test_attention_maps(predictor: Predictor, assets: dict[str, Path]) -> None:
    clip = predictor.prepare(assets["clip"])
    att = predictor.attention(clip, stream="joint")
    assert att.shape == (2, 512 + 196, 512 + 196)  # 2 heads in the tiny model
    np.testing.assert_allclose(att.sum(-1), 1.0, atol=1e-4)
    silent = predictor.prepare(assets["silent"])
    with pytest.raises(NoAudioStream):
        predictor.attention(silent, stream="audio")
    assert predictor.attention(silent, stream="visual").shape == (2, 196, 196)


def test_hand_mask_overrides_structured_mode(predictor: Predictor, assets: dict[str, Path]) -> None:
    clip = predictor.prepare(assets["clip"])
    chosen = np.zeros(512, bool)
    chosen[:64] = True  # the lowest frequency band
    rec = predictor.reconstruct(clip, MaskSpec(mode_a="time", patches_a=chosen))
    np.testing.assert_array_equal(rec.mask_a.astype(bool), chosen)


def test_bfloat16_precision_on_cpu(predictor: Predictor, assets: dict[str, Path]) -> None:
    """precision="bfloat16" on CPU: bf16 weights under bf16 autocast, every result float32 and
    close to the float32 predictor's (the opt-in fast path on CPUs with AMX/AVX512-BF16)."""
    fast = Predictor.from_checkpoint(
        assets["ft"], pretrain=assets["pt"], device="cpu", precision="bfloat16"
    )
    assert fast.dtype == torch.bfloat16 and fast.describe()["precision"] == "bfloat16"
    assert predictor.describe()["precision"] == "float32"  # "auto" is exact float32 on CPU
    assert {p.dtype for p in fast.classifier.model.parameters()} == {torch.bfloat16}
    clip = fast.prepare(assets["clip"])
    c, ref = fast.classify(clip), predictor.classify(clip)
    assert c.probabilities.dtype == np.float32
    np.testing.assert_allclose(c.probabilities, ref.probabilities, atol=0.03)
    rec = fast.reconstruct(clip, MaskSpec(ratio_a=0.75, ratio_v=0.75, seed=3))
    rec_ref = predictor.reconstruct(clip, MaskSpec(ratio_a=0.75, ratio_v=0.75, seed=3))
    np.testing.assert_array_equal(rec.mask_a, rec_ref.mask_a)  # same masks (seeded on CPU)
    assert rec.loss_a == pytest.approx(rec_ref.loss_a, rel=0.05)
    assert rec.spec_reconstruction.dtype == np.float32
    emb, emb_ref = fast.embed(clip), predictor.embed(clip)
    assert float(np.dot(emb.audio, emb_ref.audio)) > 0.99
    for method in ("cosine", "occlusion"):
        sm = fast.patch_similarity(clip, method=method)
        assert sm.grid.dtype == np.float32 and np.isfinite(sm.grid).all()
    att = fast.attention(clip, stream="joint")
    np.testing.assert_allclose(att.sum(-1), 1.0, atol=2e-2)
    ts = fast.temporal_similarity(assets["clip"], window_s=2.0, hop_s=1.0)
    assert ts["matrix"].dtype == np.float32


def test_unknown_precision_is_a_config_error(assets: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match="precision"):
        Predictor.from_checkpoint(assets["ft"], device="cpu", precision="fp8")


def test_embed_files_decodes_ahead_and_equals_embed_file(
    predictor: Predictor, assets: dict[str, Path]
) -> None:
    """embed_files gives, in order, what embed_file gives for each file (the middle-frame-only
    decoding has the pixels of the official frame 5), and returns a bad file's error in place."""
    bad = assets["dir"] / "bad.mp4"
    bad.write_bytes(b"\x00not a video" * 50)
    files = [assets["clip"], bad, assets["audio"], assets["dir"] / "clip1.mp4", assets["silent"]]
    full = predictor.prepare(assets["clip"])
    middle = predictor.prepare(assets["clip"], frames="middle")
    assert middle.frames is not None and middle.frames.shape[0] == 1
    assert torch.equal(middle.frames[0], full.frames[full.middle_index])
    ref = predictor.embed(full)
    for workers in (1, 3):
        out = list(predictor.embed_files(files, workers=workers))
        assert [p for p, _ in out] == files
        assert isinstance(out[1][1], CavmaeError) and "bad.mp4" in str(out[1][1])
        np.testing.assert_array_equal(out[0][1].audio, ref.audio)
        np.testing.assert_array_equal(out[0][1].visual, ref.visual)
        assert out[2][1].visual is None and out[4][1].audio is None  # audio-only, silent video
        one = predictor.embed_file(files[3])
        np.testing.assert_array_equal(out[3][1].audio, one.audio)
        np.testing.assert_array_equal(out[3][1].visual, one.visual)
