"""Fixtures of the app tests: tiny random-weight models, generated clips, services."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from app_testkit import make_tiny_models, write_clips


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(pretrain, classifier) checkpoint paths of random tiny models."""
    return make_tiny_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Generated media: samples (3 videos), a silent video, an audio file, a WebM recording, an
    image and a corrupt file."""
    from media_factory import tone, write_media, write_wav

    root = tmp_path_factory.mktemp("media")
    samples = write_clips(root / "samples", n=3)
    frames = np.zeros((20, 64, 64, 3), np.uint8)
    frames[:, 16:48, 16:48] = (200, 40, 40)
    silent = write_media(root / "silent.mp4", frames, fps=10.0)
    audio = write_wav(root / "tone.wav", tone([440.0], 16000, 2.0), 16000)
    webm = write_media(
        root / "recording.webm",
        frames,
        fps=10.0,
        audio=tone([660.0], 48000, 2.0),
        sample_rate=48000,
    )
    from PIL import Image

    image = root / "still.png"
    Image.fromarray(frames[0]).save(image)
    corrupt = root / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 20_000, dtype=np.uint8).tobytes())
    return {
        "samples": root / "samples",
        "clip": samples[0],
        "clip2": samples[1],
        "silent": silent,
        "audio": audio,
        "corrupt": corrupt,
        "webm": webm,
        "image": image,
    }


@pytest.fixture()
def settings(
    tmp_path: Path, tiny_models: tuple[Path, Path], media: dict[str, Path]
):  # -> AppSettings
    from app.settings import AppSettings

    pt, ft = tiny_models
    return AppSettings(
        model=str(ft),
        pretrain=str(pt),
        samples_dir=media["samples"],
        runs_dir=tmp_path / "runs",
        work_dir=tmp_path / "work",
        threads=None,
    )


@pytest.fixture()
def services(settings):  # -> Services
    from app.services import Services

    return Services.create(settings)
