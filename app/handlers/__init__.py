"""Handlers: plain functions between the UI and :mod:`cavmae` (testable without a browser).

Each tab has a module: :mod:`~app.handlers.clips` (the clip panel), :mod:`~app.handlers.model`,
:mod:`~app.handlers.reconstruct`, :mod:`~app.handlers.similarity`,
:mod:`~app.handlers.classify`, :mod:`~app.handlers.retrieve` and :mod:`~app.handlers.train`.
:mod:`~app.handlers.common` holds the per-session state and the error translation,
:mod:`~app.handlers.display` the display geometry (click to patch mapping).
"""

from app.handlers.common import SessionState, drop_session, session

__all__ = ["SessionState", "drop_session", "session"]
