"""The app's tabs, one module each, built inside ``app.ui.build_demo``.

Every ``build(ctx)`` function lays out its components and wires their events to the handlers
in :mod:`app.handlers`. :class:`Context` carries what tabs share: the services, the settings,
the session ``gr.State`` and the status line at the top of the page.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from app.services import Services
from app.settings import AppSettings

__all__ = ["Context", "Chain"]


@dataclass(frozen=True)
class Chain:
    """An event step another part of the UI can run after its own event (``.then``/``.success``)."""

    fn: Callable[..., Any]
    inputs: Sequence[Any]
    outputs: Sequence[Any]
    kwargs: dict[str, Any] = field(default_factory=dict)

    def after(self, dep: Any, api_name: str, always: bool = False) -> Any:
        """Run this step after ``dep`` (only when it succeeded, unless ``always``).

        Chained steps are internal (``api_visibility="private"``): API users call the
        endpoint they need directly.
        """
        attach = dep.then if always else dep.success
        return attach(
            self.fn, list(self.inputs), list(self.outputs), api_name=api_name,
            api_visibility="private", **self.kwargs,
        )  # fmt: skip


@dataclass
class Context:
    """What every tab builder receives.

    Attributes:
        services: Shared models, indexes and jobs.
        settings: App settings.
        state: The session's ``gr.State`` (a :class:`~app.handlers.common.SessionState`).
        status: The Markdown status line at the top (which model is in use).
        chains: Steps tabs publish for others (e.g. "reconstruct" after a clip is chosen).
    """

    services: Services
    settings: AppSettings
    state: gr.State
    status: gr.Markdown
    chains: dict[str, Chain] = field(default_factory=dict)

    @property
    def model_kwargs(self) -> dict[str, Any]:
        """Event options of every model call: one shared queue slot, limited concurrency."""
        return {"concurrency_id": "model", "concurrency_limit": self.settings.concurrency_limit}
