"""Data preparation and datasets: prepared format, resume, official JSON lists, splits."""

from __future__ import annotations

import json
import math
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

from cavmae import media
from cavmae.config import FeatureConfig
from cavmae.errors import ConfigError, UnreadableMedia
from cavmae.features import fbank_features, frames_to_tensor, normalize_fbank, num_fbank_frames
from training.augment import AugmentConfig
from training.data import (
    OfficialJsonDataset,
    PreparedDataset,
    build_dataset,
    official_frame_times,
    prepare_folder,
    prepare_synthetic,
    read_label_mapping_csv,
    read_manifest,
    split_dataset,
)
from training.data.formats import PROGRESS_FILE

FEAT = FeatureConfig(img_size=32, num_mel_bins=32, target_length=128)
NORM_ZERO = 5.081 / 4.4849  # a raw 0 after normalisation


# --- fixtures: a tiny folder of videos -----------------------------------------------------------


def _ffmpeg(*args: str) -> None:
    import imageio_ffmpeg

    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", *args], check=True)


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory) -> Path:
    """a/x.mp4 (1 s, padded fbank), a/y.mp4 (2 s, stereo 44.1 kHz), b/z.mp4, b/corrupt.mp4."""
    root = tmp_path_factory.mktemp("videos")
    (root / "a").mkdir()
    (root / "b").mkdir()
    enc = ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest"]
    _ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=64x48:rate=10:duration=1.0",
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:duration=1.0:sample_rate=16000",
        *enc,
        str(root / "a" / "x.mp4"),
    )
    _ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=48x64:rate=12:duration=2.0",
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=1000:duration=2.0:sample_rate=44100",
        "-ac",
        "2",
        *enc,
        str(root / "a" / "y.mp4"),
    )
    _ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=40x40:rate=8:duration=1.5",
        "-f",
        "lavfi",
        "-i",
        "anoisesrc=duration=1.5:sample_rate=16000:amplitude=0.3",
        *enc,
        str(root / "b" / "z.mp4"),
    )
    (root / "b" / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(3000))
    return root


@pytest.fixture(scope="module")
def prepared(video_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prepared") / "ds"
    report = prepare_folder(video_dir, out, feature_config=FEAT, workers=0)
    assert report.count == 3
    return out


# --- prepare_folder ------------------------------------------------------------------------------


def test_prepare_folder_counts_labels_and_skipped(video_dir, prepared) -> None:
    m = read_manifest(prepared)
    assert (m["count"], m["num_rows"], m["num_classes"], m["label_from"]) == (3, 4, 2, "folders")
    assert [s["key"] for s in m["skipped"]] == ["b/corrupt.mp4"]
    assert "UnreadableMedia" in m["skipped"][0]["reason"]
    assert (prepared / "labels.csv").read_text().splitlines() == [
        "index,mid,display_name",
        "0,a,a",
        "1,b,b",
    ]
    ds = PreparedDataset(prepared)
    assert [it["key"] for it in ds.items] == ["a/x.mp4", "a/y.mp4", "b/z.mp4"]
    assert ds.label_names == ["a", "b"] and ds.num_classes == 2
    np.testing.assert_array_equal(ds.labels_matrix, [[1, 0], [1, 0], [0, 1]])
    assert not ds.multi_label
    assert not (prepared / PROGRESS_FILE).exists()


def test_prepared_arrays_equal_load_clip(prepared) -> None:
    fb_all = np.load(prepared / "fbank.npy", mmap_mode="r")
    fr_all = np.load(prepared / "frames.npy", mmap_mode="r")
    assert fb_all.dtype == np.float16 and fb_all.shape == (4, 128, 32)
    assert fr_all.dtype == np.uint8 and fr_all.shape == (4, 10, 32, 32, 3)
    ds = PreparedDataset(prepared, frame="middle")
    for i, item in enumerate(ds.items):
        clip = media.load_clip(item["path"], FEAT)
        raw = torch.from_numpy(fb_all[item["row"]].astype(np.float32))
        assert torch.allclose(normalize_fbank(raw, FEAT), clip.fbank, atol=3e-3)
        np.testing.assert_array_equal(fr_all[item["row"]], clip.frames_uint8)
        n_real = min(num_fbank_frames(len(clip.waveform), 16000, FEAT), 128)
        assert item["fbank_frames"] == n_real
        assert bool((raw[n_real:] == 0).all())  # raw storage: padding exactly 0
        sample = ds[i]
        assert torch.allclose(sample["fbank"], clip.fbank, atol=3e-3)
        assert torch.allclose(sample["image"], clip.frames[5], atol=1e-6)
        assert sample["index"] == i
    assert ds.items[0]["fbank_frames"] == 98  # 1.0 s -> 98 frames, 30 padded rows
    assert bool((fb_all[2] == 0).all())  # the corrupt file's row stays empty


def test_prepare_resumes_after_interruption(video_dir, prepared, tmp_path) -> None:
    out = tmp_path / "ds"
    calls: list[str] = []

    def stop_after_two(fraction: float, message: str) -> None:
        calls.append(message)
        if len(calls) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        prepare_folder(video_dir, out, feature_config=FEAT, workers=0, progress=stop_after_two)
    with pytest.raises(ConfigError, match="not finished"):
        read_manifest(out)
    lines = (out / PROGRESS_FILE).read_text().splitlines()
    assert len(lines) == 2
    # A hard kill can leave a torn last line; it is ignored and that row is redone.
    (out / PROGRESS_FILE).write_text(lines[0] + "\n" + lines[1][:10])
    seen: list[str] = []
    report = prepare_folder(
        video_dir, out, feature_config=FEAT, workers=0, progress=lambda f, m: seen.append(m)
    )
    assert (report.resumed, report.processed, report.count) == (1, 3, 3)
    assert seen == ["a/y.mp4", "b/corrupt.mp4", "b/z.mp4"]
    for name in ("fbank.npy", "frames.npy"):
        np.testing.assert_array_equal(np.load(out / name), np.load(prepared / name))
    assert (out / "items.jsonl").read_text() == (prepared / "items.jsonl").read_text()
    again = prepare_folder(video_dir, out, feature_config=FEAT, workers=0)
    assert (again.processed, again.count, again.skipped[0][0]) == (0, 3, "b/corrupt.mp4")
    other = FeatureConfig(img_size=16, num_mel_bins=32, target_length=128)
    with pytest.raises(ConfigError, match="other sources or settings"):
        prepare_folder(video_dir, out, feature_config=other, workers=0)


def test_prepare_with_label_csv_class_index_and_one_frame(video_dir, tmp_path) -> None:
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text('file,labels\na/x.mp4,dog;cat\nb/z.mp4,"/m/cat"\nmissing.mp4,dog\n')
    assert read_label_mapping_csv(csv_path)[0] == ("a/x.mp4", ["dog", "cat"])
    index = tmp_path / "classes.csv"
    index.write_text("index,mid,display_name\n0,/m/dog,dog\n1,/m/bird,bird\n2,/m/cat,cat\n")
    report = prepare_folder(
        video_dir,
        tmp_path / "out",
        labels_csv=csv_path,
        class_index_csv=index,
        feature_config=FEAT,
        frames_per_clip=1,
        workers=0,
    )
    assert report.count == 2 and report.skipped[0][0] == "missing.mp4"
    ds = PreparedDataset(tmp_path / "out", frame=0, return_all_frames=True)
    assert ds.label_names == ["dog", "bird", "cat"]
    np.testing.assert_array_equal(ds.labels_matrix, [[1, 0, 1], [0, 0, 1]])
    assert ds.multi_label
    clip = media.load_clip(video_dir / "a" / "x.mp4", FEAT, frame_mode="middle")
    sample = ds[0]
    assert sample["frames_all"].shape == (1, 3, 32, 32)
    assert torch.allclose(sample["image"], clip.frames[0], atol=1e-6)
    with pytest.raises(ConfigError, match="frame must be"):
        PreparedDataset(tmp_path / "out", frame=5)
    bad = tmp_path / "bad.csv"
    bad.write_text("file,labels\na/x.mp4,parrot\n")
    with pytest.raises(ConfigError, match="parrot"):
        prepare_folder(
            video_dir,
            tmp_path / "out2",
            labels_csv=bad,
            class_index_csv=index,
            feature_config=FEAT,
            workers=0,
        )


def test_prepare_cli_rejects_non_prepared_and_runs(video_dir, tmp_path) -> None:
    from training.prepare import main

    assert (
        main(
            [
                str(video_dir),
                str(tmp_path / "o"),
                "--workers",
                "0",
                "--img-size",
                "32",
                "--num-mel-bins",
                "32",
                "--target-length",
                "128",
                "--label-from",
                "none",
                "--format",
                "mmap",
                "-q",
            ]
        )
        == 0
    )
    assert read_manifest(tmp_path / "o")["num_classes"] == 0
    ds = PreparedDataset(tmp_path / "o")
    assert ds.num_classes == 0 and ds[0]["label"].shape == (0,)
    assert main([str(tmp_path / "nothing"), str(tmp_path / "o2"), "-q"]) == 2
    with pytest.raises(ConfigError, match="prepare it first"):
        build_dataset(video_dir, train=False)


@pytest.mark.slow
def test_prepare_in_worker_processes_matches_in_process(video_dir, prepared, tmp_path) -> None:
    report = prepare_folder(video_dir, tmp_path / "mp", feature_config=FEAT, workers=2)
    assert report.count == 3
    for name in ("fbank.npy", "frames.npy"):
        np.testing.assert_array_equal(np.load(tmp_path / "mp" / name), np.load(prepared / name))


# --- datasets: augmentation, epochs, workers ----------------------------------------------------


def test_prepared_dataset_specaugment_fill_and_determinism(prepared) -> None:
    aug = AugmentConfig(freqm=8, timem=24)
    ds = PreparedDataset(prepared, train=True, augment=aug, seed=3)
    base = PreparedDataset(prepared, frame="middle")
    s = ds[1]
    changed = ~torch.isclose(s["fbank"], base[1]["fbank"])
    assert changed.any()
    assert torch.allclose(s["fbank"][changed], torch.full_like(s["fbank"][changed], NORM_ZERO))
    assert torch.equal(ds[1]["fbank"], s["fbank"])  # same (seed, epoch, index)
    ds.set_epoch(1)
    assert not torch.equal(ds[1]["fbank"], s["fbank"])
    with pytest.raises(ConfigError, match="training datasets only"):
        PreparedDataset(prepared, train=False, augment=aug)


def test_prepared_dataset_mixup_and_smoothing(prepared) -> None:
    aug = AugmentConfig(mixup=1.0, label_smooth=0.1)
    ds = PreparedDataset(prepared, train=True, augment=aug)
    sums = [float(ds[i]["label"].sum()) for i in range(3)]
    np.testing.assert_allclose(sums, [0.1 + 0.9] * 3, rtol=1e-6)  # s + lam(1-s) + (1-lam)(1-s)
    labels = torch.stack([ds[i]["label"] for i in range(3)])
    assert float(labels.min()) >= 0.05 - 1e-6  # every class keeps s / C = 0.05
    # Audio: the raw fbanks mixed in the mel-power domain with the drawn partner and lambda.
    from training.augment import draw_mixup, mix_fbank, sample_generator

    j, lam = draw_mixup(1.0, 3, sample_generator(0, 0, 2), 10.0)
    raw = torch.from_numpy(np.load(prepared / "fbank.npy").astype(np.float32))
    rows = [it["row"] for it in ds.items]
    n = [it["fbank_frames"] for it in ds.items]
    ref = mix_fbank(raw[rows[2]], raw[rows[j]], lam, len1=n[2], len2=n[j])
    assert torch.allclose(ds[2]["fbank"], normalize_fbank(ref, FEAT), atol=1e-5)
    base = PreparedDataset(prepared, frame="middle")
    if j != 2:
        assert not torch.allclose(ds[2]["fbank"], base[2]["fbank"], atol=1e-2)


def test_set_epoch_reaches_persistent_workers(prepared) -> None:
    ds = PreparedDataset(prepared, train=True, augment=AugmentConfig.pretrain(), seed=1)
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=1, persistent_workers=True)
    for epoch in (0, 2):
        ds.set_epoch(epoch)
        batch = next(iter(loader))
        direct = torch.stack([ds[i]["fbank"] for i in range(3)])
        assert torch.equal(batch["fbank"], direct)
        assert batch["index"].tolist() == [0, 1, 2]


def test_feature_config_override_and_incompatible(prepared) -> None:
    longer = FeatureConfig(
        img_size=32, num_mel_bins=32, target_length=160, fbank_mean=-4.0, fbank_std=2.0
    )
    ds = PreparedDataset(prepared, feature_config=longer)
    raw = np.load(prepared / "fbank.npy")[0].astype(np.float32)
    fb = ds[0]["fbank"]
    assert fb.shape == (160, 32)
    assert torch.allclose(fb[:128], (torch.from_numpy(raw) + 4.0) / 2.0)
    assert torch.allclose(fb[128:], torch.full((32, 32), 2.0))  # padded with raw zeros
    with pytest.raises(ConfigError, match="img_size"):
        PreparedDataset(prepared, feature_config=FeatureConfig(img_size=64, num_mel_bins=32))


# --- synthetic ---------------------------------------------------------------------------------


def test_prepare_synthetic_round_trip(tmp_path) -> None:
    from training.synthetic import AVShapesConfig, plan_clip, render_arrays

    syn = AVShapesConfig(num_classes=3, duration_s=2.0, size=32, mix_prob=0.5)
    feat = FeatureConfig(img_size=32, num_mel_bins=32, target_length=256)
    report = prepare_synthetic(tmp_path / "syn", 5, seed=4, cfg=syn, workers=0, feature_config=feat)
    assert (report.count, report.processed) == (5, 5)
    ds = PreparedDataset(tmp_path / "syn", frame=3)
    assert ds.num_classes == 3 and ds.label_set.mids == ("/avs/0", "/avs/1", "/avs/2")
    times = official_frame_times(2.0, syn.fps)
    np.testing.assert_allclose(times, [0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.1, 1.3, 1.5, 1.7])
    fr = np.load(tmp_path / "syn" / "frames.npy")
    for i in range(5):
        labels = sorted(set(plan_clip(i, 4, syn).labels))
        assert np.flatnonzero(ds.labels_matrix[i]).tolist() == labels
        wav, frames = render_arrays(i, 4, syn, frame_times=times)
        np.testing.assert_array_equal(fr[i], frames)
        ref = fbank_features(wav, 16000, feat)
        assert torch.allclose(ds[i]["fbank"], ref, atol=3e-3)
        assert torch.allclose(ds[i]["image"], frames_to_tensor(frames[3], feat))
        assert ds.items[i]["synthetic"]["index"] == i
    again = prepare_synthetic(tmp_path / "syn", 5, seed=4, cfg=syn, workers=0, feature_config=feat)
    assert again.processed == 0


# --- official JSON data lists ---------------------------------------------------------------------


def _write_wav(path: Path, seconds: float, freq: float, sr: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    x = (0.3 * np.sin(2 * math.pi * freq * t) + 0.05).astype(np.float32)  # with a DC offset
    pcm = np.round(x * 32767).astype("<i2")
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(sr)
        f.writeframes(pcm.tobytes())
    return pcm.astype(np.float32) / 32768.0


@pytest.fixture
def official_layout(tmp_path) -> Path:
    from PIL import Image

    frames_root = tmp_path / "frames"
    entries = []
    for n, (vid, labels) in enumerate([("v0", "/m/a,/m/c"), ("v1", "/m/b")]):
        _write_wav(tmp_path / f"{vid}.wav", 1.0 + n, 300.0 * (n + 1))
        for k in range(10):
            if vid == "v1" and k == 9:
                continue  # missing frame: the official loader falls back to frame_8
            d = frames_root / f"frame_{k}"
            d.mkdir(parents=True, exist_ok=True)
            colour = (20 * k, 100 + 10 * n, 200 - 15 * k)
            Image.new("RGB", (32, 32), colour).save(d / f"{vid}.jpg", quality=95)
        entries.append(
            {
                "wav": str(tmp_path / f"{vid}.wav"),
                "labels": labels,
                "video_id": vid,
                "video_path": str(frames_root),
            }
        )
    (tmp_path / "data.json").write_text(json.dumps({"data": entries}))
    (tmp_path / "class_labels_indices.csv").write_text(
        'index,mid,display_name\n0,/m/a,alpha\n1,/m/b,beta\n2,/m/c,"gamma, delta"\n'
    )
    return tmp_path


def test_official_json_dataset(official_layout) -> None:
    root = official_layout
    ds = build_dataset(root / "data.json", train=False, feature_config=FEAT, return_all_frames=True)
    assert isinstance(ds, OfficialJsonDataset)
    assert ds.label_names == ["alpha", "beta", "gamma, delta"]
    np.testing.assert_array_equal(ds.labels_matrix, [[1, 0, 1], [0, 1, 0]])
    s = ds[0]
    wav = media.decode_audio(root / "v0.wav", sample_rate=16000)
    assert torch.allclose(s["fbank"], fbank_features(wav, 16000, FEAT), atol=1e-3)
    assert s["fbank"].shape == (128, 32)
    expected5 = frames_to_tensor(np.full((32, 32, 3), (100, 100, 125), np.uint8), FEAT)
    assert torch.allclose(s["image"], expected5, atol=0.05)  # frame 5, JPEG-rounded
    fallback = OfficialJsonDataset(
        root / "data.json", root / "class_labels_indices.csv", frame=9, feature_config=FEAT
    )
    expected8 = frames_to_tensor(np.full((32, 32, 3), (160, 110, 80), np.uint8), FEAT)
    assert torch.allclose(fallback[1]["image"], expected8, atol=0.05)
    assert torch.allclose(ds[1]["frames_all"][9], ds[1]["frames_all"][8])
    mixed = OfficialJsonDataset(
        root / "data.json",
        root / "class_labels_indices.csv",
        train=True,
        augment=AugmentConfig(mixup=1.0, label_smooth=0.1),
        feature_config=FEAT,
    )
    # The audio is the official waveform mix, with the draws of the sample's own generator.
    from training.augment import draw_mixup, sample_generator

    j, lam = draw_mixup(1.0, 2, sample_generator(0, 0, 1), 10.0)
    w1 = media.decode_audio(root / "v1.wav", sample_rate=16000)
    w2 = media.decode_audio(root / f"v{j}.wav", sample_rate=16000)
    w1, w2 = w1 - w1.mean(), w2 - w2.mean()
    w2 = np.pad(w2, (0, max(0, len(w1) - len(w2))))[: len(w1)]
    ref = fbank_features(lam * w1 + (1 - lam) * w2, 16000, FEAT)
    assert torch.allclose(mixed[1]["fbank"], ref, atol=1e-3)
    y = mixed[1]["label"]  # beta, mixed with itself (beta) or with v0 (alpha + gamma)
    assert math.isclose(float(y[0] + y[1]), 2 * 0.1 / 3 + 0.9, rel_tol=1e-6)
    assert math.isclose(float(y[0]), float(y[2]), rel_tol=1e-6)


def test_official_json_errors(official_layout) -> None:
    root = official_layout
    data = json.loads((root / "data.json").read_text())
    data["data"][1]["labels"] = "/m/zzz"
    (root / "bad.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="/m/zzz"):
        OfficialJsonDataset(root / "bad.json", root / "class_labels_indices.csv")
    data = json.loads((root / "data.json").read_text())
    data["data"][0]["video_id"] = "nope"
    (root / "nof.json").write_text(json.dumps(data))
    ds = OfficialJsonDataset(
        root / "nof.json", root / "class_labels_indices.csv", feature_config=FEAT
    )
    with pytest.raises(UnreadableMedia, match="nope"):
        ds[0]
    checked = OfficialJsonDataset(
        root / "nof.json", root / "class_labels_indices.csv", feature_config=FEAT, check_files=True
    )
    assert len(checked) == 1 and checked.skipped[0][0] == "nope"


# --- splits and the factory ----------------------------------------------------------------------


def test_split_dataset_deterministic_partition_and_stratified() -> None:
    tr, va = split_dataset(100, 0.2, seed=1)
    tr2, va2 = split_dataset(100, 0.2, seed=1)
    assert np.array_equal(va, va2) and len(va) == 20
    assert sorted(np.concatenate([tr, va]).tolist()) == list(range(100))
    assert not np.array_equal(va, split_dataset(100, 0.2, seed=2)[1])
    labels = np.zeros((100, 2))
    labels[:80, 0] = 1
    labels[80:, 1] = 1
    _, va = split_dataset(100, 0.25, seed=0, labels=labels)
    assert (va < 80).sum() == 20 and (va >= 80).sum() == 5
    small = np.eye(3)[[0, 1, 2, 0]]
    assert [len(part) for part in split_dataset(4, 0.25, seed=0, labels=small)] == [3, 1]
    assert len(split_dataset(4, 0.1, seed=0)[1]) == 1  # never an empty validation part


def test_build_dataset_splits_prepared(prepared) -> None:
    tr = build_dataset(prepared, train=True, split="train", val_fraction=0.34, split_seed=0)
    va = build_dataset(prepared, train=False, split="val", val_fraction=0.34, split_seed=0)
    keys = [it["key"] for it in tr.items] + [it["key"] for it in va.items]
    assert sorted(keys) == ["a/x.mp4", "a/y.mp4", "b/z.mp4"] and len(va) == 1
    assert build_dataset(prepared, train=False).frame == "middle"
    with pytest.raises(ConfigError, match="neither"):
        build_dataset(prepared / "missing", train=False)
