"""Per-session state and the plumbing every handler shares.

- :class:`SessionState`: what one browser session holds (its model choice, its prepared clip,
  its hand-drawn masks, its files). Stored in a ``gr.State`` with a time to live; the
  ``delete_callback`` (:func:`drop_session`) removes its files.
- :func:`user_errors`: turns library errors (:class:`~cavmae.errors.CavmaeError`) into
  ``gr.Error`` messages and unexpected exceptions into a short message plus a server log
  entry, so a visitor never sees a traceback.
- :func:`predictor_for` and :func:`clip_for`: the session's predictor and prepared clip. A clip
  remembers which model prepared it; after a model switch it is prepared again (feature
  settings differ between models), and hand-drawn masks are dropped (grids differ).
"""

from __future__ import annotations

import functools
import logging
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import gradio as gr
import numpy as np

from app.services import ModelSpec, ProgressFn, Services
from cavmae.errors import CavmaeError

__all__ = [
    "SessionState",
    "user_errors",
    "progress_fn",
    "session",
    "predictor_for",
    "clip_for",
    "drop_session",
    "NO_CLIP",
]

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

NO_CLIP = "Choose a sample, upload a file or record a clip first (the Clip panel at the top)."


@dataclass
class SessionState:
    """Everything one browser session owns.

    Attributes:
        id: Random session id (names the session's file folder).
        files_dir: Folder for the session's rendered audio, CSVs and copies of media.
        model: The session's model (None: the app's start model).
        clip_path: The media file the session works on.
        clip: The prepared clip (CPU tensors), or None until needed.
        clip_model: The model whose features ``clip`` holds.
        hand_a / hand_v: Hand-drawn masks (bool per token, True = masked) or None when the
            sliders decide.
        last_mask_a / last_mask_v: Masks of the last reconstruction (start of a hand edit).
        last_rec: The last reconstruction (for the audio player).
        index_folder: Folder of the retrieval index the session uses.
        hits: Files of the last retrieval results, in rank order.
    """

    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    files_dir: Path | None = None
    model: ModelSpec | None = None
    clip_path: str | None = None
    clip: Any = None
    clip_model: ModelSpec | None = None
    hand_a: np.ndarray | None = None
    hand_v: np.ndarray | None = None
    last_mask_a: np.ndarray | None = None
    last_mask_v: np.ndarray | None = None
    last_rec: Any = None
    index_folder: str | None = None
    hits: list[str] = field(default_factory=list)

    def folder(self, services: Services) -> Path:
        """The session's file folder (created on first use, under the app's work dir)."""
        if self.files_dir is None:
            self.files_dir = services.settings.work_dir / "sessions" / self.id
        self.files_dir.mkdir(parents=True, exist_ok=True)
        return self.files_dir

    def set_clip(self, path: str | None) -> None:
        """Switch to another media file: forget everything derived from the old one."""
        self.clip_path = path
        self.clip = None
        self.clip_model = None
        self.clear_masks()

    def clear_masks(self) -> None:
        """Forget hand-drawn masks and the last reconstruction."""
        self.hand_a = self.hand_v = None
        self.last_mask_a = self.last_mask_v = None
        self.last_rec = None


def session(services: Services, state: SessionState | None) -> SessionState:
    """The session's state, created on its first event."""
    if state is None:
        state = SessionState()
    if state.model is None:
        state.model = services.default_spec
    return state


def drop_session(state: SessionState | None) -> None:
    """``gr.State`` delete callback: remove the session's files and tensors."""
    if state is None:
        return
    if state.files_dir is not None:
        shutil.rmtree(state.files_dir, ignore_errors=True)
    state.clip = None
    state.last_rec = None


def progress_fn(progress: Any) -> ProgressFn | None:
    """Bridge a ``gr.Progress`` (or None) to the library's ``progress(fraction, message)``."""
    if progress is None:
        return None

    def report(fraction: float, message: str) -> None:
        try:
            progress(float(fraction), desc=message)
        except (TypeError, AttributeError):  # a plain callable without ``desc``
            progress(float(fraction), message)

    return report


def user_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Show library errors as readable messages; log anything unexpected with its traceback."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except CavmaeError as e:
            raise gr.Error(str(e), print_exception=False) from e
        except MemoryError as e:
            raise gr.Error("out of memory: try a smaller model or a shorter clip") from e
        except Exception as e:
            logger.exception("unexpected error in %s", fn.__name__)
            raise gr.Error(
                f"Something went wrong ({type(e).__name__}: {e}). The details are in the "
                "server log.",
                print_exception=False,
            ) from e

    return wrapper


def predictor_for(
    services: Services, state: SessionState, progress: ProgressFn | None = None
) -> Any:
    """The session's predictor (loaded on first use).

    Raises:
        CavmaeError: If the model cannot be loaded (the message says why).
    """
    assert state.model is not None
    return services.models.get(state.model, progress)


def clip_for(
    services: Services, state: SessionState, progress: ProgressFn | None = None
) -> tuple[Any, Any]:
    """``(predictor, prepared clip)`` of the session, preparing the clip when needed.

    Raises:
        gr.Error: If the session has no clip yet.
        CavmaeError: If the model cannot be loaded or the media cannot be decoded.
    """
    if not state.clip_path:
        raise gr.Error(NO_CLIP, print_exception=False)
    predictor = predictor_for(services, state, progress)
    if state.clip is None or state.clip_model != state.model:
        if state.clip is not None:
            state.clear_masks()  # another model: other grids, other features
        state.clip = predictor.prepare(state.clip_path, progress)
        state.clip_model = state.model
    return predictor, state.clip
