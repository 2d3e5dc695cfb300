"""The demo recipe end to end in its seconds-long ``quick`` form: data, training, metrics, export.

The full recipe (under an hour on a 2-core CPU) is what produced ``assets/models``; this test
checks that the same code path runs, measures every metric the card promises and writes an
``assets`` folder that the library loads, without touching the repository's own assets.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from cavmae.checkpoint import load_checkpoint
from cavmae.media import probe


@pytest.mark.slow
def test_quick_demo_recipe_exports_a_loadable_model(tmp_path: Path) -> None:
    from training.recipes import demo

    assets = tmp_path / "assets"
    card = demo.run(tmp_path / "work", assets, quick=True, workers=1)

    m = card["held_out_metrics"]
    assert m["clips"] == 10  # one held-out mp4 per class, read back through the Predictor
    assert 0.0 <= m["classification"]["top1_accuracy"] <= 1.0
    assert 0.0 <= m["classification"]["top1_accuracy_middle_frame"] <= 1.0
    for direction in ("audio->visual", "visual->audio"):
        assert {"R@1", "R@5", "R@10", "MR", "P@1"} <= set(m["retrieval"][direction])
    rec = m["reconstruction_mse"]
    assert {"0.25", "0.50", "0.75", "0.90", "0.50_time", "0.50_freq", "0.50_tf"} <= set(rec)
    for entry in rec.values():
        assert entry["audio"] > 0 and entry["audio_fill"] > 0
    assert rec["0.75"]["visual"] > 0 and rec["0.75"]["visual_fill"] > 0
    loc = m["sound_map"]
    for key in ("iou_top_k", "iou_top_k_other_class_audio", "iou_random_baseline"):
        assert 0.0 <= loc[key] <= 1.0 and not math.isnan(loc[key]), key
    assert loc["clips"] >= 1
    assert not math.isnan(m["temporal"]["diagonal_minus_off_diagonal"])

    models = assets / "models"
    assert json.loads((models / "demo_card.json").read_text())["held_out_metrics"] == m
    # Two pretraining stages: the second starts from the first one's model at a lower LR.
    stage1, stage2 = card["pretrain_config"], card["pretrain_stage2_config"]
    assert stage2["init"] == str(tmp_path / "work" / "pretrain" / "model.safetensors")
    assert stage2["lr"] < stage1["lr"] and stage2["seed"] != stage1["seed"]
    assert stage1["mask_ratio_a_step"] == stage2["mask_ratio_a_step"] == 0.05
    for kind in ("pretrain", "pretrain2", "finetune"):
        assert (models / f"demo_{kind}_metrics.jsonl").is_file()
    classifier = load_checkpoint(models / "cavmae-demo.safetensors")
    pretrain = load_checkpoint(models / "cavmae-demo-pretrain.safetensors")
    assert len(classifier.labels) == 10 and pretrain.kind == "pretrain"
    assert next(classifier.model.parameters()).dtype.is_floating_point
    samples = sorted((assets / "samples").glob("*.mp4"))
    assert len(samples) == 5
    info = probe(samples[0])
    assert info.has_audio and info.has_video
