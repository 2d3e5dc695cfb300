"""Shared pytest fixtures: paths to fixtures and to the optional ../shared reference folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
SHARED = ROOT.parent / "shared"


# Tiny models are faster on one thread, and subprocess tests (2-process DDP) then do not
# oversubscribe the two cores of the CI machine.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def shared_media() -> Path:
    """../shared/media, or skip the test when it is absent."""
    p = SHARED / "media"
    if not p.is_dir():
        pytest.skip("../shared/media is absent")
    return p


@pytest.fixture(scope="session")
def shared_labels() -> Path:
    """../shared/reference/labels, or skip the test when it is absent."""
    p = SHARED / "reference" / "labels"
    if not p.is_dir():
        pytest.skip("../shared/reference/labels is absent")
    return p
