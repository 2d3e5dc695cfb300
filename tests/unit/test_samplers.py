"""Samplers: official balanced weights, distributed partitioning, deterministic resume."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

from cavmae.errors import ConfigError
from training.samplers import (
    DistributedWeightedSampler,
    ResumableDistributedSampler,
    balanced_weights,
    read_weight_csv,
)


def test_balanced_weights_hand_example() -> None:
    labels = np.array([[1, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], dtype=np.float32)
    w = balanced_weights(labels)
    a, b = 1000 / 3.01, 1000 / 2.01  # class 0 has 3 clips, class 1 has 2, class 2 none
    np.testing.assert_allclose(w, [a, a, a + b, b])
    # Smoothed targets give the same weights (positives are entries > 0.5).
    np.testing.assert_allclose(balanced_weights(labels * 0.9 + 0.1 / 3), w)
    assert balanced_weights(np.zeros((2, 3))).tolist() == [0.0, 0.0]


def test_read_weight_csv(tmp_path) -> None:
    p = tmp_path / "w.csv"
    p.write_text("1.5\n2.0\n0.25\n")
    np.testing.assert_allclose(read_weight_csv(p), [1.5, 2.0, 0.25])
    with pytest.raises(ConfigError):
        read_weight_csv(tmp_path / "missing.csv")


def _ranks(weights, replicas, **kw) -> list[list[int]]:
    out = []
    for r in range(replicas):
        s = DistributedWeightedSampler(weights, num_replicas=replicas, rank=r, **kw)
        out.append(list(s))
    return out


def test_weighted_sampler_partitions_without_overlap() -> None:
    w = np.arange(1, 13, dtype=np.float64)
    parts = _ranks(w, 3, seed=4, replacement=False)
    assert [len(p) for p in parts] == [4, 4, 4]
    flat = [i for p in parts for i in p]
    assert sorted(flat) == list(range(12))  # a permutation: disjoint and complete
    # With replacement the positions still partition one global draw sequence.
    parts = _ranks(w, 3, seed=4, num_samples=10)
    assert [len(p) for p in parts] == [4, 4, 4]  # padded to a multiple of the world size
    single = list(DistributedWeightedSampler(w, num_samples=10, num_replicas=1, rank=0, seed=4))
    interleaved = [parts[i % 3][i // 3] for i in range(12)]
    assert interleaved == single + single[:2]


def test_weighted_sampler_follows_weights_and_is_reproducible_per_epoch() -> None:
    s = DistributedWeightedSampler([1.0, 0.0, 3.0], num_samples=20000, num_replicas=1, rank=0)
    counts = Counter(s)
    assert counts[1] == 0 and abs(counts[2] / 20000 - 0.75) < 0.015
    s.set_epoch(3)
    a = list(s)
    s.set_epoch(4)
    b = list(s)
    s.set_epoch(3)
    assert list(s) == a and a != b
    other = DistributedWeightedSampler([1.0, 0.0, 3.0], num_samples=20000, num_replicas=1, rank=0)
    other.set_epoch(3)
    assert list(other) == a


def test_weighted_sampler_resumes_mid_epoch() -> None:
    w = np.random.default_rng(0).random(50) + 0.1
    s = DistributedWeightedSampler(w, num_replicas=2, rank=1, seed=9)
    s.set_epoch(2)
    full = list(s)
    state = s.state_dict(consumed=7)
    assert state == {"epoch": 2, "seed": 9, "consumed": 7}
    t = DistributedWeightedSampler(w, num_replicas=2, rank=1, seed=9)
    t.load_state_dict(state)
    t.set_epoch(2)  # the training loop may call set_epoch again for the resumed epoch
    assert len(t) == len(full) - 7
    assert list(t) == full[7:]
    assert len(t) == len(full)  # the offset applies once
    t.set_epoch(3)
    s.set_epoch(3)
    assert list(t) == list(s)
    with pytest.raises(ConfigError):
        DistributedWeightedSampler(w, num_replicas=2, rank=1, seed=1).load_state_dict(state)


def test_weighted_sampler_rejects_bad_weights() -> None:
    with pytest.raises(ConfigError):
        DistributedWeightedSampler([0.0, 0.0])
    with pytest.raises(ConfigError):
        DistributedWeightedSampler([1.0, -1.0])
    with pytest.raises(ConfigError):
        DistributedWeightedSampler([1.0, 1.0], num_replicas=2, rank=2)


def test_resumable_distributed_sampler_matches_torch_and_resumes() -> None:
    data = list(range(23))
    for rank in range(3):
        ours = ResumableDistributedSampler(data, num_replicas=3, rank=rank, seed=5)
        ref = DistributedSampler(data, num_replicas=3, rank=rank, seed=5)  # type: ignore[arg-type]
        ours.set_epoch(1)
        ref.set_epoch(1)
        assert list(ours) == list(ref)
    parts = []
    for rank in range(3):
        s = ResumableDistributedSampler(
            data, num_replicas=3, rank=rank, shuffle=True, drop_last=True
        )
        parts += list(s)
    assert len(parts) == len(set(parts)) == 21
    s = ResumableDistributedSampler(data, num_replicas=3, rank=0, seed=5)
    s.set_epoch(1)
    full = list(s)
    r = ResumableDistributedSampler(data, num_replicas=3, rank=0, seed=5)
    r.load_state_dict(s.state_dict(consumed=3))
    assert list(r) == full[3:]


def test_sampler_in_a_dataloader() -> None:
    ds = torch.utils.data.TensorDataset(torch.arange(10))
    s = DistributedWeightedSampler(np.ones(10), num_replicas=1, rank=0, seed=1)
    got = torch.cat([b[0] for b in torch.utils.data.DataLoader(ds, batch_size=4, sampler=s)])
    assert got.tolist() == list(s)


def _grouped(n: int = 60, classes: int = 5, group: int = 4, batch: int = 8, **kw):
    from training.samplers import ClassGroupedSampler

    labels = np.arange(n) % classes
    return labels, ClassGroupedSampler(labels, group, batch, **kw)


def test_class_grouped_batches_are_made_of_same_class_groups() -> None:
    labels, s = _grouped()
    order = list(s)
    assert len(order) == len(s) == 56  # 60 clips -> 7 whole batches of 8
    assert len(set(order)) == len(order)  # no clip twice in an epoch
    groups = np.asarray(order).reshape(-1, 4)
    same = [len(set(labels[g].tolist())) == 1 for g in groups]
    assert all(same)  # every class gives 12 clips = 3 whole groups, no mixed leftovers
    assert len(set(labels[order[:8]].tolist())) <= 2  # a batch holds two classes, not five
    s.set_epoch(1)
    assert list(s) != order
    s.set_epoch(0)
    assert list(s) == order  # a function of (seed, epoch)


def test_class_grouped_sampler_splits_batches_over_ranks_and_resumes() -> None:
    labels, r0 = _grouped(n=64, classes=4, num_replicas=2, rank=0, seed=3)
    _, r1 = _grouped(n=64, classes=4, num_replicas=2, rank=1, seed=3)
    a, b = list(r0), list(r1)
    assert len(a) == len(b) == 32 and not set(a) & set(b)
    for part in (a, b):  # each rank's micro-batches keep whole groups of one class
        for g in np.asarray(part).reshape(-1, 4):
            assert len(set(labels[g].tolist())) == 1
    state = r0.state_dict(consumed=16)
    _, again = _grouped(n=64, classes=4, num_replicas=2, rank=0, seed=3)
    again.load_state_dict(state)
    assert len(again) == 16 and list(again) == a[16:]
    assert list(again) == a  # later iterations are whole again


def test_class_grouped_sampler_rejects_groups_that_split_batches() -> None:
    from training.samplers import ClassGroupedSampler

    with pytest.raises(ConfigError, match="group_size"):
        ClassGroupedSampler(np.zeros(32, dtype=int), 3, 8)
    with pytest.raises(ConfigError, match="no batch"):
        ClassGroupedSampler(np.zeros(4, dtype=int), 2, 8)
