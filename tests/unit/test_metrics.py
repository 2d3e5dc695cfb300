"""Classification metrics (numpy AP/AUC/d-prime/accuracy) and the JSONL metric log."""

from __future__ import annotations

import json
import math
from statistics import NormalDist

import numpy as np
import pytest

from training.metrics import (
    JsonlWriter,
    SmoothedValue,
    accuracy,
    average_precision,
    classification_stats,
    d_prime,
    mean_average_precision,
    roc_auc,
)
from training.runs import read_metrics


def test_average_precision_hand_examples() -> None:
    # ranks: + (P 1, R .5), -, + (P 2/3, R 1), -  ->  .5 * 1 + .5 * 2/3
    assert average_precision([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1]) == pytest.approx(5 / 6)
    # a tie at 0.5 between a positive and a negative is one threshold: P .5 at R .5
    assert average_precision([1, 0, 1], [0.5, 0.5, 0.2]) == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3)
    assert average_precision([0, 1], [0.9, 0.1]) == pytest.approx(0.5)
    assert math.isnan(average_precision([0, 0], [0.3, 0.2]))


def test_roc_auc_hand_examples() -> None:
    # positive/negative pairs ordered correctly: 3 of 4
    assert roc_auc([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1]) == pytest.approx(0.75)
    assert roc_auc([1, 0], [0.5, 0.5]) == pytest.approx(0.5)  # a tie counts one half
    assert math.isnan(roc_auc([1, 1], [0.1, 0.2]))


def test_against_sklearn_random() -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    y = (rng.random((200, 6)) < 0.3).astype(np.float32)
    s = np.round(rng.normal(size=(200, 6)) + y, 1)  # rounding creates ties
    for k in range(6):
        assert average_precision(y[:, k], s[:, k]) == pytest.approx(
            metrics.average_precision_score(y[:, k], s[:, k]), abs=1e-12
        )
        assert roc_auc(y[:, k], s[:, k]) == pytest.approx(
            metrics.roc_auc_score(y[:, k], s[:, k]), abs=1e-12
        )


def test_map_skips_classes_without_positives_and_stats() -> None:
    target = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0]], dtype=np.float32)
    output = np.array([[0.9, 0.1, 0.0], [0.8, 0.2, 0.0], [0.7, 0.3, 0.0]])
    # class 0: +,-,+ by score -> AP 5/6; class 1: -,+,- -> 1/2; class 2 has no positive
    expected = (5 / 6 + 1 / 2) / 2
    assert mean_average_precision(target, output) == pytest.approx(expected)
    st = classification_stats(target, output)
    assert st.num_classes_scored == 2 and st.num_samples == 3
    assert st.mAP == pytest.approx(expected)
    assert st.acc == pytest.approx(2 / 3)  # argmax is class 0 for every row
    assert accuracy(target, output) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        classification_stats(target, output[:, :2])


def test_d_prime() -> None:
    assert d_prime(0.5) == pytest.approx(0.0)
    assert d_prime(NormalDist().cdf(1.0)) == pytest.approx(math.sqrt(2.0))
    assert math.isnan(d_prime(1.0))


def test_smoothed_value() -> None:
    sv = SmoothedValue(window=2)
    for v in (1.0, 2.0, 3.0):
        sv.update(v)
    assert sv.avg == pytest.approx(2.5) and sv.global_avg == pytest.approx(2.0)


def test_jsonl_writer_and_torn_tail(tmp_path) -> None:
    with JsonlWriter(tmp_path / "metrics.jsonl") as w:
        w.write({"type": "step", "step": 1, "loss": 0.5})
        w.write({"type": "epoch", "epoch": 1, "val": float("nan")})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"type": "step", "st')  # a writer caught mid-line
    recs = read_metrics(tmp_path)
    assert [r["type"] for r in recs] == ["step", "epoch"]
    assert recs[1]["val"] is None  # non-finite floats become null (strict JSON)
    assert read_metrics(tmp_path, type="epoch") == [recs[1]]
    json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[1])
