"""Typed exceptions of the cavmae library.

Every error the library raises on bad input derives from :class:`CavmaeError`, so that callers
(the CLI, the web app) can show its message to a person instead of a traceback. Messages name
the offending file or value and say what to do about it.
"""

from __future__ import annotations

__all__ = [
    "CavmaeError",
    "MediaError",
    "UnreadableMedia",
    "UnsupportedMedia",
    "NoAudioStream",
    "NoVideoStream",
    "ClipTooShort",
    "MediaTimeout",
    "CheckpointError",
    "ConfigError",
    "DownloadError",
]


class CavmaeError(Exception):
    """Base class of every error raised deliberately by cavmae."""


class MediaError(CavmaeError):
    """A media file cannot be turned into model inputs."""


class UnreadableMedia(MediaError):
    """The file is missing, empty, truncated, corrupt or not a media file at all."""


class UnsupportedMedia(MediaError):
    """The file is a media file, but of a kind (codec, extension) we cannot decode."""


class NoAudioStream(MediaError):
    """Audio was required but the file has no audio stream."""


class NoVideoStream(MediaError):
    """Video frames were required but the file has neither a video stream nor an image."""


class ClipTooShort(MediaError):
    """The clip is too short to give even one analysis frame."""


class MediaTimeout(MediaError):
    """Decoding took longer than the configured limit and was stopped."""


class CheckpointError(CavmaeError):
    """A checkpoint cannot be loaded: wrong file, wrong keys, wrong shapes or wrong kind."""


class ConfigError(CavmaeError, ValueError):
    """An argument or configuration value is invalid."""


class DownloadError(CavmaeError):
    """A file could not be downloaded (offline, HTTP error, checksum mismatch)."""
