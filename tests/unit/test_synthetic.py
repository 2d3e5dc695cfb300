"""Tests of the AV-Shapes synthetic dataset (training/synthetic)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from cavmae.errors import ConfigError
from training.synthetic import (
    CLASSES,
    AVShapesConfig,
    generate_folder,
    patch_mask,
    plan_clip,
    render_arrays,
    render_clip,
    write_label_csv,
    write_video,
)
from training.synthetic.audio import class_sound
from training.synthetic.plan import level_of_shade, pitch_of_size

SR = 16000
SMALL = AVShapesConfig(duration_s=2.0, size=64, distractor_prob=0.0)


def _peak_hz(x: np.ndarray, sr: int = SR, n_fft: int | None = None) -> float:
    n = n_fft or len(x)
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x)), n))
    return float(np.fft.rfftfreq(n, 1.0 / sr)[np.argmax(spec)])


def _frame_rms(clip) -> np.ndarray:
    hop = clip.sample_rate // int(clip.fps)
    k = len(clip.frame_times)
    return np.sqrt(np.mean(clip.waveform[: k * hop].reshape(k, hop).astype(np.float64) ** 2, 1))


# --- determinism -------------------------------------------------------------------------------


def test_same_seed_gives_identical_arrays_and_other_seed_differs():
    cfg = AVShapesConfig(duration_s=2.0, size=64, distractor_prob=0.5, mix_prob=0.5)
    w1, f1 = render_arrays(5, 11, cfg)
    w2, f2 = render_arrays(5, 11, cfg)
    np.testing.assert_array_equal(w1, w2)
    np.testing.assert_array_equal(f1, f2)
    w3, f3 = render_arrays(5, 12, cfg)
    assert not np.array_equal(w1, w3)
    assert np.abs(f1.astype(int) - f3.astype(int)).mean() > 5
    assert w1.dtype == np.float32 and w1.shape == (cfg.num_samples,)
    assert f1.dtype == np.uint8 and f1.shape == (cfg.num_frames, 64, 64, 3)


def test_render_arrays_matches_render_clip_at_requested_times():
    clip = render_clip(3, 0, SMALL)
    wave, frames = render_arrays(3, 0, SMALL, frame_times=clip.frame_times[[0, 7, 15]])
    np.testing.assert_array_equal(wave, clip.waveform)
    np.testing.assert_array_equal(frames, clip.frames[[0, 7, 15]])


def test_classes_cycle_with_index():
    cfg = AVShapesConfig(num_classes=4)
    assert [plan_clip(i, 0, cfg).labels[0] for i in range(8)] == [0, 1, 2, 3, 0, 1, 2, 3]


# --- audio signatures --------------------------------------------------------------------------


@pytest.mark.parametrize("class_id", range(len(CLASSES)))
def test_every_class_sound_is_finite_with_unit_rms(class_id):
    for seed in (0, 1, 101):  # 101: a sweep phase lands where a float32 sine is negative
        x = class_sound(class_id, 10 * SR, SR, pitch=1.0, rng=np.random.default_rng(seed))
        assert x.dtype == np.float32 and np.isfinite(x).all()
        assert np.sqrt(np.mean(x.astype(np.float64) ** 2)) == pytest.approx(1.0, rel=1e-4)


@pytest.mark.parametrize("class_id, freq", [(0, 440.0), (3, 220.0), (6, 1000.0)])
def test_tonal_classes_peak_at_their_frequency(class_id, freq):
    x = class_sound(class_id, SR, SR, pitch=1.0, rng=np.random.default_rng(0))
    assert abs(_peak_hz(x) - freq) < 3.0


def test_tone_pitch_follows_the_object_size():
    cfg = AVShapesConfig(duration_s=2.0, size=32, noise_level=0.0, distractor_prob=0.0,
                         mix_prob=0.0)
    sizes, peaks = [], []
    for index in range(0, 120, 10):  # class 0, twelve instances
        clip = render_clip(index, 1, cfg)
        assert clip.labels == [0]
        expected = 440.0 * pitch_of_size(clip.object_sizes[0], cfg)
        peak = _peak_hz(clip.waveform)
        assert abs(peak - expected) <= expected * cfg.pitch_jitter + 2.0
        sizes.append(clip.object_sizes[0])
        peaks.append(peak)
    # larger objects sound lower, over the configured span (one octave by default)
    assert np.corrcoef(sizes, np.log2(peaks))[0, 1] < -0.99
    assert pitch_of_size(0.0, cfg) / pitch_of_size(1.0, cfg) == pytest.approx(2**cfg.pitch_octaves)


def test_loudness_follows_the_object_shade_and_shade_the_colour():
    cfg = AVShapesConfig(duration_s=2.0, size=96, noise_level=0.0, distractor_prob=0.0,
                         mix_prob=0.0, level_jitter_db=0.0)
    shades, levels, brightness = [], [], []
    for index in range(0, 100, 10):
        clip = render_clip(index, 2, cfg)
        k = int(np.argmax(clip.active))
        rms = _frame_rms(clip)[clip.active].mean()
        shades.append(clip.object_shades[0])
        levels.append(20 * np.log10(rms))
        brightness.append(clip.frames[k][clip.masks[k]].astype(np.float64).mean())
        assert level_of_shade(clip.object_shades[0], cfg) <= cfg.source_rms
    assert np.corrcoef(shades, levels)[0, 1] > 0.95  # lighter objects are louder
    assert np.corrcoef(shades, brightness)[0, 1] > 0.9  # and look lighter
    span = 20 * np.log10(level_of_shade(1.0, cfg) / level_of_shade(0.0, cfg))
    assert span == pytest.approx(cfg.loudness_db)


@pytest.mark.parametrize("class_id, band", [(4, (2400.0, 5700.0)), (9, (50.0, 320.0))])
def test_noise_classes_stay_in_their_band(class_id, band):
    x = class_sound(class_id, SR, SR, pitch=1.0, rng=np.random.default_rng(0))
    power = np.abs(np.fft.rfft(x)) ** 2
    f = np.fft.rfftfreq(len(x), 1.0 / SR)
    inside = power[(f >= band[0]) & (f <= band[1])].sum() / power.sum()
    assert inside > 0.95


@pytest.mark.parametrize("class_id, rising", [(1, True), (2, False)])
def test_sweeps_move_in_their_direction(class_id, rising):
    x = class_sound(class_id, SR, SR, pitch=1.0, rng=np.random.default_rng(0))
    frames = x[: SR // 400 * 400].reshape(-1, 400)  # 25 ms frames
    peaks = np.array([_peak_hz(fr, n_fft=8192) for fr in frames])
    steps = np.diff(peaks)
    steps = steps[(np.abs(steps) < 1000) & (steps != 0)]  # drop the jumps between sweeps
    assert np.mean(steps > 0 if rising else steps < 0) > 0.9


def test_click_train_repeats_at_its_rate():
    x = class_sound(5, 4 * SR, SR, pitch=1.0, rng=np.random.default_rng(0))
    envelope = np.abs(x).reshape(-1, 160).mean(1)  # 100 Hz envelope
    rate = _peak_hz(envelope - envelope.mean(), sr=100)
    assert rate == pytest.approx(12.0, abs=0.5)


def test_active_frames_are_louder_than_silent_frames():
    cfg = AVShapesConfig(duration_s=4.0, size=32, distractor_prob=0.0)
    for index in range(6):
        clip = render_clip(index, 3, cfg)
        rms = _frame_rms(clip)
        assert clip.active.any() and (~clip.active).any()
        assert rms[clip.active].min() > 1.15 * rms[~clip.active].max()
    quiet = render_clip(0, 3, AVShapesConfig(duration_s=4.0, size=32, noise_level=0.0))
    assert _frame_rms(quiet)[~quiet.active].max() == 0.0


def test_events_lie_on_the_frame_grid_without_overlap():
    cfg = AVShapesConfig()
    for index in range(20):
        for obj in plan_clip(index, 0, cfg).sources:
            assert 1 <= len(obj.events) <= 4
            ends = [0] + [e for _, e in obj.events]
            for (start, end), prev_end in zip(obj.events, ends[:-1], strict=True):
                assert 0 <= start < end <= cfg.num_frames
                assert start > prev_end or (start == 0 and prev_end == 0)


# --- visual ground truth -----------------------------------------------------------------------


@pytest.mark.parametrize("class_id", range(len(CLASSES)))
def test_object_colour_appears_inside_its_box(class_id):
    cfg = AVShapesConfig(duration_s=1.0, size=96, distractor_prob=0.0, mix_prob=0.0)
    clip = render_clip(class_id, 2, cfg)
    k = int(np.argmax(clip.active))
    assert clip.active[k] and clip.visual_active[k, 0]
    mask = clip.masks[k]
    x0, y0, x1, y1 = clip.boxes[k, 0]
    ys, xs = np.nonzero(mask)
    # The mask is inside the box, and the box is tight around the mask.
    assert xs.min() >= np.floor(x0) - 1 and xs.max() <= np.ceil(x1)
    assert ys.min() >= np.floor(y0) - 1 and ys.max() <= np.ceil(y1)
    assert abs(xs.min() - x0) < 2 and abs(xs.max() + 1 - x1) < 2
    # The mean colour inside the mask points in the class's colour direction (shading aside).
    mean = clip.frames[k][mask].astype(np.float64).mean(0)
    residuals = []
    for spec in CLASSES:
        ref = np.asarray(spec.colour, np.float64)
        a = mean @ ref / (ref @ ref)
        residuals.append(np.linalg.norm(mean - a * ref))
    assert int(np.argmin(residuals)) == class_id
    outside = clip.frames[k][~mask].astype(np.float64)
    assert np.linalg.norm(outside.mean(0) - mean) > 40  # it stands out from the background


def _ring(mask: np.ndarray, width: int = 5) -> np.ndarray:
    """Pixels within ``width`` of a mask, outside it."""
    import cv2

    grown = cv2.dilate(mask.astype(np.uint8), np.ones((2 * width + 1,) * 2, np.uint8)) > 0
    return grown & ~mask


def test_an_active_object_glows_without_changing_its_size_or_colour():
    cfg = AVShapesConfig(duration_s=4.0, size=96, distractor_prob=0.0, mix_prob=0.0)
    clip = render_clip(0, 4, cfg)
    ring = np.array([clip.frames[k][_ring(clip.masks[k])].mean() for k in range(len(clip.active))])
    assert ring[clip.active].min() > ring[~clip.active].max() + 10  # the halo
    inside = np.array([clip.frames[k][clip.masks[k]].mean(0) for k in range(len(clip.active))])
    assert np.abs(inside[clip.active].mean(0) - inside[~clip.active].mean(0)).max() < 6
    area = clip.masks.reshape(len(clip.active), -1).sum(1)
    assert area[clip.active].mean() == pytest.approx(area[~clip.active].mean(), rel=0.05)


def test_distractors_glow_silently_at_times_of_their_own():
    cfg = AVShapesConfig(duration_s=10.0, size=64, distractor_prob=1.0, mix_prob=0.0,
                         noise_level=0.0)
    silent_glows = 0
    for index in range(6):
        clip = render_clip(index, 7, cfg)
        assert clip.num_sources == 1 and len(clip.object_classes) == 2
        distractor_glow = clip.glowing[:, 1]
        assert distractor_glow.any() and (~distractor_glow).any()
        np.testing.assert_array_equal(clip.glowing[:, 0], clip.active)  # the source: its sound
        only = distractor_glow & ~clip.active
        if only.any():
            silent_glows += 1
            assert _frame_rms(clip)[only].max() == 0.0  # glowing, and nothing sounds
    assert silent_glows >= 3
    plain = render_clip(0, 7, AVShapesConfig(duration_s=2.0, size=32, distractor_prob=1.0,
                                             distractor_glow=False))
    assert not plain.glowing[:, 1].any()


def test_patch_mask_sums_to_object_area():
    clip = render_clip(0, 0, AVShapesConfig(duration_s=1.0, distractor_prob=0.0))
    pm = patch_mask(clip, 4)
    assert pm.shape == (14, 14) and pm.min() >= 0 and pm.max() <= 1
    assert pm.sum() * 16 * 16 == pytest.approx(clip.masks[4].sum(), rel=1e-6)
    r, c = np.unravel_index(np.argmax(pm), pm.shape)
    x0, y0, x1, y1 = clip.boxes[4, 0]
    assert x0 - 16 <= (c + 0.5) * 16 <= x1 + 16 and y0 - 16 <= (r + 0.5) * 16 <= y1 + 16
    odd = render_clip(0, 0, AVShapesConfig(duration_s=1.0, size=100, distractor_prob=0.0))
    pm_odd = patch_mask(odd, 4)
    assert pm_odd.sum() * (100 / 14) ** 2 == pytest.approx(odd.masks[4].sum(), rel=0.02)


def test_distractor_is_silent_and_outside_the_mask():
    cfg = AVShapesConfig(duration_s=1.0, size=96, distractor_prob=1.0)
    clip = render_clip(1, 0, cfg)
    assert len(clip.object_classes) == 2 and clip.num_sources == 1
    assert clip.object_classes[1] != clip.labels[0]
    assert clip.boxes.shape == (10, 2, 4)


def test_mixture_has_two_labels_two_objects_and_both_sounds():
    cfg = AVShapesConfig(duration_s=2.0, size=64, mix_prob=1.0, distractor_prob=0.0,
                         noise_level=0.0)
    for index in range(4):
        clip = render_clip(index, 0, cfg)
        assert len(clip.labels) == 2 and len(set(clip.labels)) == 2
        assert clip.object_classes == clip.labels and clip.num_sources == 2
        assert clip.visual_active.shape == (20, 2) and len(clip.events) == 2
        np.testing.assert_array_equal(clip.active, clip.visual_active.any(1))
    clip = render_clip(0, 0, cfg)  # class 0 (a 440 Hz tone at size 0.5) mixed with another
    spec = np.abs(np.fft.rfft(clip.waveform))
    f = np.fft.rfftfreq(len(clip.waveform), 1.0 / SR)
    tone = 440.0 * plan_clip(0, 0, cfg).objects[0].pitch
    near = spec[(f > tone - 20) & (f < tone + 20)].sum()
    assert 0.05 < near / spec.sum() < 0.95  # the tone is there, and so is something else


def test_mismatched_clip_takes_audio_from_another_clip():
    cfg = AVShapesConfig(duration_s=1.0, size=32, mismatch_prob=1.0)
    clip = render_clip(2, 0, cfg)
    assert clip.mismatched and clip.audio_source_index != 2
    assert set(clip.audio_labels).isdisjoint(clip.labels)
    assert not clip.masks.any()
    other = render_clip(clip.audio_source_index, 0, AVShapesConfig(duration_s=1.0, size=32))
    np.testing.assert_array_equal(clip.waveform, other.waveform)
    assert other.labels == clip.audio_labels
    np.testing.assert_array_equal(clip.active, other.active)


def test_bad_settings_raise_config_error():
    with pytest.raises(ConfigError):
        AVShapesConfig(num_classes=0)
    with pytest.raises(ConfigError):
        AVShapesConfig(mix_prob=1.5)
    with pytest.raises(ConfigError):
        render_clip(-1, 0, SMALL)
    with pytest.raises(ConfigError):
        render_arrays(0, 0, SMALL, frame_times=[SMALL.duration_s + 1])


# --- files -------------------------------------------------------------------------------------


def test_write_label_csv_official_format(tmp_path):
    path = write_label_csv(tmp_path / "labels.csv")
    with path.open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["index", "mid", "display_name"]
    assert len(rows) == len(CLASSES)
    assert rows[2] == {"index": "2", "mid": "/avs/2", "display_name": CLASSES[2].name}
    assert len({r["display_name"] for r in rows}) == len(rows)
    assert not any(ch in r["display_name"] for r in rows for ch in '/\\:*?"<>|')


def test_cli_writes_label_csv(tmp_path):
    from training.synthetic.__main__ import main

    main(["--labels-only", str(tmp_path / "l.csv"), "--num-classes", "3"])
    assert (tmp_path / "l.csv").read_text().splitlines()[1:] == [
        f"{i},/avs/{i},{CLASSES[i].name}" for i in range(3)
    ]


def test_write_video_decodes_with_right_duration_and_size(tmp_path):
    av = pytest.importorskip("av")
    cfg = AVShapesConfig(duration_s=1.5, size=64)
    clip = render_clip(0, 0, cfg)
    path = write_video(clip, tmp_path / "clip.mp4")
    with av.open(str(path)) as container:
        audio = container.streams.audio[0]
        video = container.streams.video[0]
        assert video.codec_context.name == "h264" and audio.codec_context.name == "aac"
        assert (video.codec_context.width, video.codec_context.height) == (64, 64)
        samples = sum(fr.samples for fr in container.decode(audio=0))
    assert samples / audio.rate == pytest.approx(1.5, abs=0.1)
    with av.open(str(path)) as container:
        decoded = [fr.to_ndarray(format="rgb24") for fr in container.decode(video=0)]
    assert len(decoded) == cfg.num_frames
    assert np.abs(decoded[3].astype(int) - clip.frames[3].astype(int)).mean() < 8
    with pytest.raises(ConfigError):  # frames off the k / fps grid would play at a wrong speed
        write_video(render_clip(0, 0, cfg, frame_times=[0.5]), tmp_path / "bad.mp4")


def test_generate_folder_writes_videos_labels_and_metadata(tmp_path):
    cfg = AVShapesConfig(num_classes=2, duration_s=1.0, size=32)
    out = generate_folder(tmp_path / "avs", num_per_class=1, seed=0, cfg=cfg)
    records = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert len(records) == 2 and [r["labels"] for r in records] == [[0], [1]]
    for r in records:
        assert (out / r["file"]).is_file()
        assert r["file"].split("/")[0] == CLASSES[r["labels"][0]].name
        assert len(r["boxes"]) == len(r["frame_times"]) == len(r["active"]) == 10
        assert r["mismatched"] is False and r["mids"] == [f"/avs/{r['labels'][0]}"]
    with (out / "labels.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 2


def test_generate_folder_flat_with_workers(tmp_path):
    cfg = AVShapesConfig(num_classes=2, duration_s=1.0, size=32)
    out = generate_folder(tmp_path / "flat", 1, seed=1, cfg=cfg, layout="flat", workers=2)
    assert sorted(p.name for p in out.glob("*.mp4")) == ["avs_000000.mp4", "avs_000001.mp4"]
    with pytest.raises(ConfigError):
        generate_folder(tmp_path / "bad", 1, cfg=cfg, layout="tree")
