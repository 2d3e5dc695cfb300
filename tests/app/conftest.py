"""Fixtures of the app tests: tiny random-weight models, generated clips, services.

The models are ``cavmae_tiny``-sized (milliseconds per call) and saved with
``cavmae.checkpoint.save_model``, so the app loads them exactly as it loads real checkpoints:
features travel in the checkpoint metadata (32 mel bins x 64 frames, 32 x 32 frames).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cavmae.checkpoint import save_model
from cavmae.config import cavmae_tiny
from cavmae.labels import LabelSet
from cavmae.models import build_model

NUM_CLASSES = 4
LABELS = ("red circle", "blue square", "yellow triangle", "green star")


def make_tiny_models(folder: Path, seed: int = 0, **overrides: object) -> tuple[Path, Path]:
    """A random tiny pretraining model and classifier (4 classes, softmax) in ``folder``."""
    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    pt = save_model(build_model(cavmae_tiny(**overrides)), folder / "pretrain.safetensors")
    labels = LabelSet(LABELS, tuple(f"/t/{i}" for i in range(NUM_CLASSES)))
    ft = save_model(
        build_model(cavmae_tiny(label_dim=NUM_CLASSES, **overrides)), folder / "classifier.safetensors",
        labels=labels, multi_label=False, mode="multimodal",
    )
    return pt, ft


def write_clips(folder: Path, n: int = 3, duration_s: float = 3.0, seed: int = 0, classes: bool = False) -> list[Path]:
    """``n`` small AV-Shapes videos (64 x 64, 10 fps, with audio); class sub-folders if asked."""
    from training.synthetic import AVShapesConfig, render_clip, write_video
    from training.synthetic.classes import CLASSES

    cfg = AVShapesConfig(duration_s=duration_s, size=64, fps=10, num_classes=4)
    out = []
    for i in range(n):
        clip = render_clip(i, seed, cfg)
        sub = folder / CLASSES[clip.labels[0]].name.replace(" ", "_") if classes else folder
        out.append(write_video(clip, sub / f"clip{i}.mp4"))
    return out


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(pretrain, classifier) checkpoint paths of random tiny models."""
    return make_tiny_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Generated media: samples (3 videos), a silent video, an audio file, a corrupt file."""
    from media_factory import tone, write_media, write_wav

    root = tmp_path_factory.mktemp("media")
    samples = write_clips(root / "samples", n=3)
    frames = np.zeros((20, 64, 64, 3), np.uint8)
    frames[:, 16:48, 16:48] = (200, 40, 40)
    silent = write_media(root / "silent.mp4", frames, fps=10.0)
    audio = write_wav(root / "tone.wav", tone([440.0], 16000, 2.0), 16000)
    corrupt = root / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 20_000, dtype=np.uint8).tobytes())
    return {"samples": root / "samples", "clip": samples[0], "clip2": samples[1], "silent": silent,
            "audio": audio, "corrupt": corrupt}


@pytest.fixture()
def settings(tmp_path: Path, tiny_models: tuple[Path, Path], media: dict[str, Path]):  # -> AppSettings
    from app.settings import AppSettings

    pt, ft = tiny_models
    return AppSettings(model=str(ft), pretrain=str(pt), samples_dir=media["samples"],
                       runs_dir=tmp_path / "runs", work_dir=tmp_path / "work", threads=None)


@pytest.fixture()
def services(settings):  # -> Services
    from app.services import Services

    return Services.create(settings)
