"""Sharded datasets: writing, resume, streaming split, exact resume, bad shards, converters."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from cavmae.config import FeatureConfig
from cavmae.errors import ConfigError
from training.augment import AugmentConfig
from training.data import PreparedDataset, build_dataset, prepare_synthetic
from training.data.convert import mmap_to_shards, official_to_shards
from training.data.shards import decode_fbank, encode_fbank, read_shard_manifest, sample_fbank
from training.data.streaming import ShardedDataset, ShardMapDataset

FEAT = FeatureConfig(num_mel_bins=32, target_length=64, img_size=32)
N = 24


def _syn():
    from training.synthetic import AVShapesConfig

    return AVShapesConfig(num_classes=3, duration_s=0.7, fps=15, size=32, mix_prob=0.3)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """mm/ (memory-mapped) and sh/ (shards of ~4 clips) of the same 24 AV-Shapes clips."""
    root = tmp_path_factory.mktemp("shards")
    prepare_synthetic(root / "mm", N, seed=0, cfg=_syn(), workers=0, feature_config=FEAT)
    prepare_synthetic(
        root / "sh", N, seed=0, cfg=_syn(), workers=0, feature_config=FEAT,
        output="shards", shard_bytes=20_000,
    )
    return root


def _official_layout(root: Path) -> Path:
    """Two official entries: 16-kHz wavs and frame_0..9/<id>.jpg at 32 x 32."""
    import json
    import wave

    from PIL import Image

    root.mkdir()
    entries = []
    for n, (vid, labels) in enumerate([("v0", "/m/a,/m/c"), ("v1", "/m/b")]):
        t = np.arange(16000 * (1 + n)) / 16000
        pcm = np.round(0.3 * np.sin(2 * np.pi * 300 * (n + 1) * t) * 32767).astype("<i2")
        with wave.open(str(root / f"{vid}.wav"), "wb") as f:
            f.setnchannels(1)
            f.setsampwidth(2)
            f.setframerate(16000)
            f.writeframes(pcm.tobytes())
        for k in range(10):
            d = root / "frames" / f"frame_{k}"
            d.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (32, 32), (20 * k, 100 + 10 * n, 200 - 15 * k)).save(d / f"{vid}.jpg")
        entries.append({"wav": str(root / f"{vid}.wav"), "labels": labels, "video_id": vid,
                        "video_path": str(root / "frames")})
    (root / "data.json").write_text(json.dumps({"data": entries}))
    (root / "class_labels_indices.csv").write_text(
        "index,mid,display_name\n0,/m/a,alpha\n1,/m/b,beta\n2,/m/c,gamma\n"
    )
    return root


def _digests(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("shard-*"))
    }


def test_round_trip_fbank_exact_frames_close(data: Path) -> None:
    m = read_shard_manifest(data / "sh")
    assert m["count"] == N and len(m["shards"]) > 3 and m["num_classes"] == 3
    assert sum(s["count"] for s in m["shards"]) == N and m["jpeg_quality"] == 90
    mm, sh = PreparedDataset(data / "mm"), ShardMapDataset(data / "sh")
    assert sh.label_names == mm.label_names
    np.testing.assert_array_equal(sh.labels_matrix, mm.labels_matrix)
    for i in range(N):
        (a, na), (b, nb) = mm._raw_fbank(i), sh._raw_fbank(i)
        assert torch.equal(a, b) and na == nb  # float16 stored alike: bit-exact
        for k in (0, 9):
            diff = np.abs(mm._frame(i, k).astype(int) - sh._frame(i, k).astype(int))
            assert diff.mean() < 8  # JPEG q90 of 32-pixel synthetic frames
        assert sh._frame_time(i, 3) == pytest.approx(mm._frame_time(i, 3))
    assert torch.equal(sh[5]["fbank"], mm[5]["fbank"])
    assert sh.items[3]["synthetic"] == mm.items[3]["synthetic"]


def test_fbank_codec_is_lossless_and_reads_version_1() -> None:
    import io
    import zlib

    # every float16 bit pattern (NaNs, infinities, subnormals, -0) survives bit for bit
    every = np.arange(2**16, dtype=np.uint16).view(np.float16).reshape(-1, 128)  # (512, 128)
    rng = np.random.default_rng(0)  # log-mel-like: negative, a few units of range, noisy
    smooth = (-6 + np.sin(np.arange(998) / 30)[:, None] + rng.normal(0, 0.5, (998, 128))).astype(np.float16)
    for fb in (every, smooth, every[:0]):
        blob = encode_fbank(fb)
        back = decode_fbank(blob)
        assert back.dtype == np.float16 and back.shape == fb.shape
        np.testing.assert_array_equal(back.view(np.uint16), fb.view(np.uint16))
    assert len(encode_fbank(smooth)) < 0.8 * smooth.nbytes  # the high-byte plane compresses
    buf = io.BytesIO()
    np.save(buf, smooth)  # a version-1 shard's member
    np.testing.assert_array_equal(sample_fbank({"fbank.npy": buf.getvalue()}), smooth)
    np.testing.assert_array_equal(sample_fbank({"fbank.f16z": encode_fbank(smooth)}), smooth)
    damaged = encode_fbank(smooth)[:-100]
    with pytest.raises(ValueError, match="damaged"):
        decode_fbank(damaged)
    wrong = encode_fbank(smooth)[:12] + zlib.compress(b"x" * 10)
    with pytest.raises(ValueError, match="expected"):
        decode_fbank(wrong)


def test_resume_after_kill_keeps_finished_shards(data: Path, tmp_path: Path) -> None:
    calls = {"n": 0}

    def killer(frac: float, msg: str) -> None:
        calls["n"] += 1
        if calls["n"] == 15:
            raise KeyboardInterrupt  # a kill in the middle of a shard

    kw = dict(seed=0, cfg=_syn(), workers=0, feature_config=FEAT, output="shards",
              shard_bytes=20_000)
    with pytest.raises(KeyboardInterrupt):
        prepare_synthetic(tmp_path / "o", N, progress=killer, **kw)
    kept = _digests(tmp_path / "o")
    assert kept and not any(n.endswith(".tmp") for n in kept)
    report = prepare_synthetic(tmp_path / "o", N, **kw)
    assert 0 < report.resumed < 15 and report.processed == N - report.resumed
    final = _digests(tmp_path / "o")
    assert all(final[n] == d for n, d in kept.items())  # finished shards were not rewritten
    assert final == _digests(data / "sh")  # and the result equals an uninterrupted run
    assert prepare_synthetic(tmp_path / "o", N, **kw).processed == 0


@pytest.mark.parametrize("workers", [0, 2])
def test_ranks_and_workers_read_every_sample_once(data: Path, workers: int) -> None:
    seen: list[int] = []
    for rank in range(2):
        ds = ShardedDataset(data / "sh", train=True, num_replicas=2, rank=rank, batch_size=3)
        ds.set_epoch(1)
        assert len(ds) == N // 2
        dl = DataLoader(ds, batch_size=3, num_workers=workers)
        seen += [int(i) for b in dl for i in b["index"]]
        assert ds.epoch_report()["bad_shards"] == 0
    assert sorted(seen) == list(range(N))


def _batches(ds: ShardedDataset, workers: int) -> list[dict]:
    return list(DataLoader(ds, batch_size=3, num_workers=workers))


@pytest.mark.parametrize("workers", [0, 2])
def test_exact_mid_epoch_resume(data: Path, workers: int) -> None:
    aug = AugmentConfig.finetune(timem=16, freqm=8)
    mk = lambda: ShardedDataset(  # noqa: E731
        data / "sh", train=True, augment=aug, batch_size=3, shuffle_buffer=6, seed=3
    )
    ds = mk()
    ds.set_epoch(2)
    full = _batches(ds, workers)
    assert len(full) == N // 3
    other = mk()
    other.set_epoch(2)
    other.load_state_dict(ds.state_dict(consumed=3 * 3))  # killed after 3 batches
    rest = _batches(other, workers)
    assert len(rest) == len(full) - 3
    for a, b in zip(full[3:], rest, strict=True):
        assert torch.equal(a["index"], b["index"])
        assert torch.equal(a["fbank"], b["fbank"]) and torch.equal(a["image"], b["image"])
        assert torch.equal(a["label"], b["label"])
    ds.set_epoch(3)
    assert [b["index"].tolist() for b in _batches(ds, workers)] != [
        b["index"].tolist() for b in full
    ]  # another epoch, another order


def test_balanced_weights_resample(data: Path) -> None:
    ds = ShardedDataset(data / "sh", train=True)
    w = np.zeros(N)
    w[:4] = 1.0
    ds.set_sample_weights(w)
    idx = [int(s["index"]) for s in ds]
    assert len(idx) == N and set(idx) <= {0, 1, 2, 3} and len(set(idx)) == 4


def test_corrupt_shard_is_skipped_and_counted(data: Path, tmp_path: Path) -> None:
    root = tmp_path / "sh"
    shutil.copytree(data / "sh", root)
    victim = root / "shard-000001.tar"
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 3])  # truncated
    ds = ShardedDataset(root, train=True)
    ds.set_epoch(0)
    got = [int(s["index"]) for s in ds]
    report = ds.epoch_report()
    assert len(got) == N  # the step count holds
    assert report["bad_shards"] == 1 and 0 < report["replaced_samples"] < N


def test_foreign_feature_config_refused(data: Path, tmp_path: Path) -> None:
    other = FeatureConfig(num_mel_bins=32, target_length=64, img_size=48)
    with pytest.raises(ConfigError, match="img_size"):
        ShardedDataset(data / "sh", feature_config=other)
    prepare_synthetic(
        tmp_path / "x", 4, seed=1, cfg=_syn(), workers=0, output="shards",
        feature_config=FeatureConfig(num_mel_bins=16, target_length=64, img_size=32),
    )
    root = tmp_path / "sh"
    shutil.copytree(data / "sh", root)
    shutil.copy(tmp_path / "x" / "shard-000000.tar", root / "shard-000000.tar")
    with pytest.raises(ConfigError, match="another feature configuration"):
        list(ShardedDataset(root, train=True))


def test_url_patterns_and_build_dataset(data: Path) -> None:
    names = read_shard_manifest(data / "sh")["shards"]
    last = len(names) - 1
    pattern = f"{data / 'sh'}/shard-{{000000..{last:06d}}}.tar"
    for spec in (pattern, f"file://{pattern}", f"pipe:cat {pattern}"):
        assert sorted(int(s["index"]) for s in ShardedDataset(spec)) == list(range(N))
    with pytest.raises(ConfigError, match="not listed"):
        ShardedDataset(f"{data / 'sh'}/shard-{{000000..{last + 1:06d}}}.tar")
    tr = build_dataset(data / "sh", True, split="train", val_fraction=0.25)
    va = build_dataset(data / "sh", False, split="val", val_fraction=0.25)
    assert isinstance(tr, ShardedDataset) and isinstance(va, ShardMapDataset)
    assert len(tr) + len(va) == N
    assert set(int(s["index"]) for s in tr).isdisjoint(set(va.uids.tolist()))


def test_convert_mmap_and_official(data: Path, tmp_path: Path) -> None:
    rep = mmap_to_shards(data / "mm", tmp_path / "c", workers=0, shard_bytes=20_000)
    assert rep.count == N
    a, b = ShardMapDataset(tmp_path / "c"), PreparedDataset(data / "mm")
    assert all(torch.equal(a._raw_fbank(i)[0], b._raw_fbank(i)[0]) for i in range(N))
    layout = _official_layout(tmp_path / "off")
    feat = FeatureConfig(img_size=32, num_mel_bins=32, target_length=128)
    rep = official_to_shards(
        layout / "data.json", tmp_path / "o", layout / "class_labels_indices.csv",
        feature_config=feat, workers=0,
    )
    assert rep.count == 2
    from training.data.official import OfficialJsonDataset

    off = OfficialJsonDataset(layout / "data.json", layout / "class_labels_indices.csv",
                              feature_config=feat)
    sh = ShardMapDataset(tmp_path / "o")
    np.testing.assert_array_equal(sh.labels_matrix, off.labels_matrix)
    for i in range(2):
        fa, fb = off._raw_fbank(i)[0], sh._raw_fbank(i)[0]
        assert torch.allclose(fa, fb, atol=0.02)  # float16 storage
        assert np.abs(off._frame(i, 5).astype(int) - sh._frame(i, 5).astype(int)).max() <= 6
