"""Tests of cavmae.retrieval: index search, persistence, folder indexing, metrics."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from cavmae.errors import ConfigError, NoAudioStream
from cavmae.retrieval import (
    AnnConfig,
    ClipEmbedding,
    EmbeddingIndex,
    FolderIndexer,
    evaluate_labelled,
    evaluate_pairs,
    label_precision_at_k,
    pair_ranks,
    retrieval_metrics,
)

D = 32


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _pairs(n: int, noise: float = 0.1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Paired synthetic clips: visual = audio + small noise, both L2-normalised, (n, D)."""
    rng = np.random.default_rng(seed)
    audio = _unit(rng.standard_normal((n, D)))
    visual = _unit(audio + noise * rng.standard_normal((n, D)))
    return audio, visual


def _clustered(n: int, clusters: int, seed: int = 0, spread: float = 0.5) -> np.ndarray:
    """Gaussian-mixture unit vectors around fixed centres (the same for every ``seed``)."""
    centres = _unit(np.random.default_rng(1234).standard_normal((clusters, D)))
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((n, D)) * (spread / np.sqrt(D))  # norm ~spread around a unit centre
    return _unit(centres[rng.integers(0, clusters, n)] + noise)


def _official_ranks(query: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """Independent re-statement of the official compute_metrics ranking (sort, find diagonal)."""
    sims = _unit(query.astype(np.float64)) @ _unit(gallery.astype(np.float64)).T
    sorted_rows = np.sort(-sims, axis=1)
    diff = sorted_rows - np.diag(-sims)[:, None]
    return np.nonzero(diff == 0)[1]


def _index(n: int = 100, **ann) -> tuple[EmbeddingIndex, np.ndarray, np.ndarray, list[str]]:
    audio, visual = _pairs(n)
    keys = [f"clip{i:04d}" for i in range(n)]
    index = EmbeddingIndex(D, "tiny@abc", ann=AnnConfig(**ann) if ann else None)
    index.add_arrays(keys, audio, visual, [{"i": i} for i in range(n)])
    return index, audio, visual, keys


# ---------------------------------------------------------------------- embeddings


def test_clip_embedding_validates_and_normalises() -> None:
    raw = np.arange(1, D + 1, dtype=np.float32)
    with pytest.raises(ConfigError, match="norm"):
        ClipEmbedding(audio=raw)
    emb = ClipEmbedding.normalized(audio=raw, duration=3.5)
    assert emb.visual is None and emb.dim == D and emb.duration == 3.5
    np.testing.assert_allclose(np.linalg.norm(emb.audio), 1.0, rtol=1e-6)
    assert not emb.audio.flags.writeable
    with pytest.raises(ConfigError, match="both are None"):
        ClipEmbedding()
    with pytest.raises(ConfigError, match="dimension"):
        ClipEmbedding.normalized(audio=raw, visual=raw[:-1])
    with pytest.raises(ConfigError):
        ClipEmbedding.normalized(audio=np.zeros(D))


# ---------------------------------------------------------------------- search


def test_index_returns_own_pair_first_both_directions() -> None:
    index, audio, visual, keys = _index(200)
    for query, target in ((audio, "visual"), (visual, "audio")):
        results = index.search(query, target, k=5)
        assert [hits[0].key for hits in results] == keys
        assert all(h.rank == r + 1 for hits in results for r, h in enumerate(hits))
        scores = np.array([[h.score for h in hits] for hits in results])
        assert (np.diff(scores, axis=1) <= 1e-6).all()  # descending
    hit = index.search(audio[7], "visual", k=1)[0][0]
    assert hit.meta == {"i": 7}
    np.testing.assert_allclose(hit.score, float(audio[7] @ visual[7]), rtol=1e-5)


def test_small_and_large_query_batches_agree() -> None:
    index, audio, _, _ = _index(150)
    few = index.search(audio[:3], "visual", k=10)  # numpy matrix-vector path
    many = index.search(audio[:12], "visual", k=10)  # faiss IndexFlatIP path
    for a, b in zip(few, many[:3], strict=True):
        assert [h.key for h in a] == [h.key for h in b]


def test_items_lacking_target_modality_are_not_returned() -> None:
    index, audio, _, _ = _index(50)
    query = _unit(np.random.default_rng(5).standard_normal(D))
    index.add("audio_only.wav", ClipEmbedding(audio=query))
    index.add("image.jpg", ClipEmbedding(visual=query))
    assert index.count("audio") == 51 and index.count("visual") == 51 and len(index) == 52
    vis_keys = [h.key for h in index.search(query, "visual", k=52)[0]]
    aud_keys = [h.key for h in index.search(query, "audio", k=52)[0]]
    assert "audio_only.wav" not in vis_keys and vis_keys[0] == "image.jpg" and len(vis_keys) == 51
    assert "image.jpg" not in aud_keys and aud_keys[0] == "audio_only.wav" and len(aud_keys) == 51
    # Replacing an item with one lacking a modality drops that modality's vector.
    index.add("clip0000", ClipEmbedding(audio=audio[0]))
    assert index.count("visual") == 50
    assert "clip0000" not in [h.key for h in index.search(audio[0], "visual", k=60)[0]]


def test_exclude_search_key_and_similarity_matrix() -> None:
    index, audio, visual, keys = _index(40)
    hits = index.search_key("clip0003", "audio", "audio", k=3)
    assert "clip0003" not in [h.key for h in hits] and len(hits) == 3
    assert index.search_key("clip0003", "audio", "visual", k=1, exclude_self=False)[0].key == "clip0003"
    hits = index.search(audio[3], "visual", k=2, exclude=["clip0003"])[0]
    assert hits[0].key != "clip0003" and hits[0].rank == 1
    sim = index.similarity_matrix(keys[:5], keys[5:8])
    np.testing.assert_allclose(sim, audio[:5] @ visual[5:8].T, atol=1e-6)
    index.add("silent.mp4", ClipEmbedding(visual=visual[0]))
    with pytest.raises(ConfigError, match="no audio vector"):
        index.similarity_matrix(["silent.mp4"], keys[:2])
    marked = index.similarity_matrix(["silent.mp4", keys[1]], keys[:2], missing="nan")
    assert np.isnan(marked[0]).all() and np.isfinite(marked[1]).all()
    with pytest.raises(ConfigError):
        index.search(np.ones(D + 1), "visual")
    with pytest.raises(ConfigError):
        index.search(audio[0], "video")  # type: ignore[arg-type]


def test_remove_keeps_vectors_consistent() -> None:
    index, audio, visual, keys = _index(60)
    gone = {keys[i] for i in (0, 5, 58, 59, 30)}
    assert index.remove_many(gone) == 5 and not index.remove("nope")
    assert len(index) == 55 and index.count("visual") == 55
    for i, key in enumerate(keys):
        if key in gone:
            assert key not in index
            continue
        got = index.get(key)
        np.testing.assert_array_equal(got.audio, audio[i])
        np.testing.assert_array_equal(got.visual, visual[i])
        assert index.search(audio[i], "visual", k=1)[0][0].key == key


def test_approximate_index_path_recall_and_updates() -> None:
    n = 3000
    data = _clustered(n, clusters=30)
    keys = [f"k{i}" for i in range(n)]
    index = EmbeddingIndex(D, "m", ann=AnnConfig(exact_max_items=500, nprobe=8, train_per_list=20))
    index.add_arrays(keys, audio=data)
    assert index.is_approximate("audio") and not index.is_approximate("visual")
    queries = _clustered(100, clusters=30, seed=1)
    approx = index.search(queries, "audio", k=10)
    exact = index.search(queries, "audio", k=10, exact=True)
    recall = np.mean([len({h.key for h in a} & {h.key for h in e}) / 10 for a, e in zip(approx, exact, strict=True)])
    assert recall >= 0.9
    for a, e in zip(approx, exact, strict=True):  # scores of the approximate path are exact cosines
        common = {h.key: h.score for h in e}
        for h in a:
            if h.key in common:
                assert h.score == pytest.approx(common[h.key], abs=1e-5)
    assert [h[0].key for h in index.search(data[:50], "audio", k=1)] == keys[:50]
    # Incremental updates while the IVF index is live: removed keys vanish, moved rows stay right.
    store = index._stores["audio"]
    index.remove_many(keys[:100])
    index.add_arrays(["new"], audio=data[:1])
    assert store._ivf is not None and store._ivf.ntotal == len(store) == n - 99
    assert index.search(data[0], "audio", k=1)[0][0].key == "new"
    hits = index.search(data[100:200], "audio", k=1, nprobe=64)
    assert [h[0].key for h in hits] == keys[100:200]
    assert not {h.key for hs in index.search(data[:100], "audio", k=5) for h in hs} & set(keys[1:100])


# ---------------------------------------------------------------------- persistence


def test_save_load_round_trip(tmp_path: Path) -> None:
    index, audio, visual, keys = _index(80)
    index.add("only_audio.wav", ClipEmbedding(audio=audio[1]), {"path": "only_audio.wav", "labels": ["x"]})
    out = index.save(tmp_path / "idx")
    index.save(out)  # a second save replaces the first one
    assert len(list(out.glob("data-*"))) == 1
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["model_id"], manifest["dim"], manifest["count"]) == ("tiny@abc", D, 81)
    assert manifest["count_audio"] == 81 and manifest["count_visual"] == 80
    loaded = EmbeddingIndex.load(out, expected_model_id="tiny@abc")
    assert loaded.keys() == index.keys() and loaded.model_id == "tiny@abc"
    assert loaded.meta("only_audio.wav") == {"path": "only_audio.wav", "labels": ["x"]}
    for key in keys[::7]:
        np.testing.assert_array_equal(loaded.get(key).visual, index.get(key).visual)
    a = [h.key for h in index.search(audio[:4], "visual", k=5)[0]]
    b = [h.key for h in loaded.search(audio[:4], "visual", k=5)[0]]
    assert a == b


def test_load_refuses_other_model_and_damage(tmp_path: Path) -> None:
    index, *_ = _index(10)
    out = index.save(tmp_path / "idx")
    with pytest.raises(ConfigError, match="other@1|tiny@abc"):
        EmbeddingIndex.load(out, expected_model_id="other@1")
    with pytest.raises(ConfigError, match="not an embedding index"):
        EmbeddingIndex.load(tmp_path)
    next(out.glob("data-*/visual.npy")).unlink()
    with pytest.raises(ConfigError, match="damaged"):
        EmbeddingIndex.load(out)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError):
        index.save(tmp_path / "file")


def test_save_load_with_approximate_index(tmp_path: Path) -> None:
    data = _clustered(1200, clusters=12)
    keys = [f"k{i}" for i in range(1200)]
    index = EmbeddingIndex(D, "m", ann=AnnConfig(exact_max_items=300, train_per_list=20))
    index.add_arrays(keys, audio=data, visual=data)
    out = index.save(tmp_path / "idx")
    assert len(list(out.glob("data-*/*.ivf"))) == 2
    loaded = EmbeddingIndex.load(out, "m")
    assert loaded._stores["visual"]._ivf is not None  # reused, not retrained
    assert [h[0].key for h in loaded.search(data[:20], "visual", k=1)] == keys[:20]


# ---------------------------------------------------------------------- folder indexing


class _CountingEmbedder:
    """Deterministic embeddings from the file bytes; counts calls; fails on chosen names."""

    def __init__(self, failing: set[str] | None = None) -> None:
        self.calls: list[str] = []
        self.failing = failing or set()

    def __call__(self, path: Path) -> ClipEmbedding:
        self.calls.append(path.name)
        if path.name in self.failing:
            raise NoAudioStream(f"{path} has no audio stream")
        seed = int.from_bytes(hashlib.sha256(path.read_bytes()).digest()[:4], "little")
        rng = np.random.default_rng(seed)
        audio = None if path.suffix == ".jpg" else rng.standard_normal(D)
        visual = None if path.suffix.lower() == ".wav" else rng.standard_normal(D)
        return ClipEmbedding.normalized(audio, visual, duration=1.0)


def _media_folder(root: Path) -> Path:
    (root / "dogs").mkdir(parents=True)
    (root / "a.mp4").write_bytes(b"video a")
    (root / "b.WAV").write_bytes(b"audio b")
    (root / "dogs" / "c.jpg").write_bytes(b"image c")
    (root / "notes.txt").write_text("not media")
    (root / ".hidden.mp4").write_bytes(b"hidden")
    return root


def test_folder_update_is_incremental(tmp_path: Path) -> None:
    root = _media_folder(tmp_path / "media")
    index = EmbeddingIndex(D, "m")
    embed = _CountingEmbedder()
    progress: list[float] = []
    indexer = FolderIndexer(index, embed, labels_fn=lambda p: [p.parent.name])
    report = indexer.update(root, progress=lambda f, msg: progress.append(f))
    assert sorted(embed.calls) == ["a.mp4", "b.WAV", "c.jpg"] and len(report.added) == 3
    assert progress[-1] == 1.0 and report.changed
    key_c = str(root / "dogs" / "c.jpg")
    meta = index.meta(key_c)
    assert meta["labels"] == ["dogs"] and meta["size"] == 7 and meta["duration"] == 1.0
    assert index.count("audio") == 2 and index.count("visual") == 2

    report = indexer.update(root)
    assert len(embed.calls) == 3 and len(report.unchanged) == 3 and not report.changed

    st = (root / "a.mp4").stat()
    os.utime(root / "a.mp4", ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))  # touch
    (root / "b.WAV").write_bytes(b"audio b, longer now")
    (root / "dogs" / "c.jpg").unlink()
    (root / "dogs" / "d.png").write_bytes(b"image d")
    report = indexer.update(root)
    assert sorted(embed.calls[3:]) == ["a.mp4", "b.WAV", "d.png"]
    assert sorted(Path(k).name for k in report.updated) == ["a.mp4", "b.WAV"]
    assert [Path(k).name for k in report.added] == ["d.png"]
    assert report.removed == (key_c,) and key_c not in index and len(index) == 3


def test_folder_update_with_content_hash_ignores_touch(tmp_path: Path) -> None:
    root = _media_folder(tmp_path / "media")
    index = EmbeddingIndex(D, "m")
    embed = _CountingEmbedder()
    indexer = FolderIndexer(index, embed, hash_contents=True)
    indexer.update(root)
    st = (root / "a.mp4").stat()
    os.utime(root / "a.mp4", ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    report = indexer.update(root)
    assert len(embed.calls) == 3 and len(report.unchanged) == 3
    assert index.meta(str(root / "a.mp4"))["mtime_ns"] == st.st_mtime_ns + 5_000_000_000


def test_folder_update_skips_media_errors_and_propagates_others(tmp_path: Path) -> None:
    root = _media_folder(tmp_path / "media")
    index = EmbeddingIndex(D, "m")
    report = FolderIndexer(index, _CountingEmbedder(failing={"b.WAV"})).update(root)
    key_b = str(root / "b.WAV")
    assert list(report.skipped) == [key_b] and "no audio stream" in report.skipped[key_b]
    assert key_b not in index and len(report.added) == 2
    # A file that was indexed and now fails is dropped, not left with stale vectors.
    (root / "a.mp4").write_bytes(b"video a, re-encoded")
    report = FolderIndexer(index, _CountingEmbedder(failing={"a.mp4", "b.WAV"})).update(root)
    assert str(root / "a.mp4") in report.removed and str(root / "a.mp4") not in index

    def broken(path: Path) -> ClipEmbedding:
        raise RuntimeError("model crashed")

    (root / "new.mp4").write_bytes(b"new")
    with pytest.raises(RuntimeError, match="model crashed"):
        FolderIndexer(index, broken).update(root)
    with pytest.raises(ConfigError, match="not an existing folder"):
        FolderIndexer(index, broken).update(tmp_path / "missing")


def test_folder_update_through_embed_many(tmp_path: Path) -> None:
    """The batch form (Predictor.embed_files) gives the same index as one call per file; its
    MediaError results skip the file, other exceptions and out-of-order answers raise."""
    root = _media_folder(tmp_path / "media")
    one_by_one = EmbeddingIndex(D, "m")
    FolderIndexer(one_by_one, _CountingEmbedder(failing={"b.WAV"})).update(root)
    embed = _CountingEmbedder(failing={"b.WAV"})
    batches: list[list[str]] = []

    def many(paths: Sequence[Path]) -> Iterator[tuple[Path, object]]:
        batches.append([p.name for p in paths])
        for path in paths:
            try:
                yield path, embed(path)
            except NoAudioStream as exc:
                yield path, exc

    index = EmbeddingIndex(D, "m")
    report = FolderIndexer(index, _unused_embed_fn, embed_many=many).update(root)
    assert batches == [["a.mp4", "b.WAV", "c.jpg"]] and list(report.skipped) == [str(root / "b.WAV")]
    assert index.keys() == one_by_one.keys()
    for key in index.keys():
        got, want = index.get(key), one_by_one.get(key)
        for m in ("audio", "visual"):
            a, b = getattr(got, m), getattr(want, m)
            assert (a is None and b is None) or np.array_equal(a, b)

    (root / "new.mp4").write_bytes(b"new")

    def crashing(paths: Sequence[Path]) -> Iterator[tuple[Path, object]]:
        yield paths[0], RuntimeError("model crashed")

    with pytest.raises(RuntimeError, match="model crashed"):
        FolderIndexer(EmbeddingIndex(D, "m"), _unused_embed_fn, embed_many=crashing).update(root)

    def reversed_order(paths: Sequence[Path]) -> Iterator[tuple[Path, object]]:
        for path in reversed(paths):
            yield path, embed(path)

    with pytest.raises(RuntimeError, match="out of order"):
        FolderIndexer(EmbeddingIndex(D, "m"), _unused_embed_fn, embed_many=reversed_order).update(
            root
        )


def _unused_embed_fn(path: Path) -> ClipEmbedding:
    raise AssertionError("embed_many should have been used")


def test_folder_removal_only_touches_that_folder(tmp_path: Path) -> None:
    one = _media_folder(tmp_path / "one")
    two = _media_folder(tmp_path / "two")
    index = EmbeddingIndex(D, "m")
    indexer = FolderIndexer(index, _CountingEmbedder())
    indexer.update(one)
    indexer.update(two)
    assert len(index) == 6
    (two / "a.mp4").unlink()
    report = indexer.update(two)
    assert report.removed == (str(two / "a.mp4"),) and len(index) == 5


# ---------------------------------------------------------------------- metrics

# Queries are rows of Q against the basis vectors: row i's scores are Q[i] up to a positive scale.
_Q = np.array(
    [[0.9, 0.1, 0.3, 0.2],  # diagonal 0.9 is the largest: rank 0
     [0.5, 0.4, 0.6, 0.1],  # 0.5 and 0.6 beat 0.4: rank 2
     [0.2, 0.7, 0.3, 0.1],  # 0.7 beats 0.3: rank 1
     [0.8, 0.6, 0.7, 0.5]],  # all three beat 0.5: rank 3
)


def test_metrics_hand_computed_4x4() -> None:
    gallery = np.eye(4)
    np.testing.assert_array_equal(pair_ranks(_Q, gallery), [0, 2, 1, 3])
    assert retrieval_metrics(_Q, gallery) == {"R@1": 0.25, "R@5": 1.0, "R@10": 1.0, "MR": 2.5}
    both = evaluate_pairs(_Q, gallery)
    assert both["audio->visual"]["MR"] == 2.5
    # Reverse: query e_i against the normalised rows of Q; column i of Q / |Q_j| by hand:
    # e0: .923 .566 .252 .606 -> 0; e1: .103 .453 .882 .455 -> 2; e2: .308 .679 .378 .531 -> 2;
    # e3: .205 .113 .126 .379 -> 0.  Ranks [0, 2, 2, 0]: R@1 = 0.5, MR = median + 1 = 2.
    np.testing.assert_array_equal(pair_ranks(gallery, _Q), [0, 2, 2, 0])
    assert both["visual->audio"] == {"R@1": 0.5, "R@5": 1.0, "R@10": 1.0, "MR": 2.0}


def test_metrics_match_official_sorting_on_random_data() -> None:
    audio, visual = _pairs(300, noise=1.5, seed=3)
    ours = pair_ranks(audio, visual)
    np.testing.assert_array_equal(ours, _official_ranks(audio, visual))
    assert 0 < (ours > 0).sum() < 300  # the example is neither trivial nor hopeless
    m = retrieval_metrics(audio, visual)
    assert m["R@1"] == np.mean(ours == 0) and m["MR"] == np.median(ours) + 1
    with pytest.raises(ConfigError):
        retrieval_metrics(audio, visual[:-1])
    with pytest.raises(ConfigError):
        retrieval_metrics(np.zeros((3, D)), np.ones((3, D)))


def test_label_precision_and_labelled_evaluation() -> None:
    # 1-D toy: items at angles; labels cat, cat, dog, dog.
    angles = np.array([0.0, 0.1, 1.5, 1.6])
    x = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    labels = ["cat", "cat", "dog", "dog"]
    p = label_precision_at_k(x, x, labels, labels, ks=(1, 2, 3), exclude_diagonal=True)
    assert p == {"P@1": 1.0, "P@2": 0.5, "P@3": pytest.approx(1 / 3)}
    multi = [{"cat", "pet"}, {"pet"}, {"dog"}, {"dog", "pet"}]
    p = label_precision_at_k(x, x, multi, multi, ks=(2,), exclude_diagonal=True)
    # top-2 neighbours: 0->{1,2}: 1 shares 'pet', 2 not; 1->{0,2}: 1; 2->{3,1}: 1; 3->{2,1}: 2.
    assert p == {"P@2": pytest.approx(5 / 8)}
    result = evaluate_labelled(x, x, labels, ks=(1, 5))
    assert result["audio->visual"]["R@1"] == 1.0 and result["audio->visual"]["P@1"] == 1.0
    assert "P@5" not in result["audio->visual"] and result["audio->audio"] == {"P@1": 1.0}
