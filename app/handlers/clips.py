"""The clip panel: pick a sample, upload a file or record with the webcam; preview and describe it.

Choosing a clip decodes and featurises it once (``Predictor.prepare``), so the other tabs only
run the model. Media are previewed with plain HTML ``<video>``/``<audio>``/``<img>`` tags that
point at Gradio's file route (``gradio_api/file=...``): Gradio's own video output would probe
files with ffprobe, which this environment does not have.
"""

from __future__ import annotations

import html
import logging
from pathlib import Path
from typing import Any
from urllib.parse import quote

from app.handlers.common import SessionState, clip_for, progress_fn, session, user_errors
from app.services import Services
from cavmae.errors import ConfigError, UnreadableMedia

__all__ = [
    "use_sample",
    "use_upload",
    "use_recording",
    "sample_choices",
    "media_html",
    "file_url",
    "describe_clip",
]

logger = logging.getLogger(__name__)

_VIDEO = {".mp4", ".m4v", ".mov", ".webm", ".mkv", ".avi", ".ogv"}
_AUDIO = {".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac", ".oga"}
_IMAGE = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp"}


def file_url(path: str | Path) -> str:
    """Relative URL of a file served by Gradio (works behind a root path too)."""
    return "gradio_api/file=" + quote(str(Path(path).resolve()))


def media_html(path: str | Path | None, height: int = 200, caption: str = "") -> str:
    """An HTML player for a media file (video, audio or image); "" for None."""
    if not path:
        return ""
    p = Path(path)
    url = html.escape(file_url(p), quote=True)
    ext = p.suffix.lower()
    if ext in _AUDIO:
        body = f'<audio controls preload="metadata" src="{url}" style="width:100%"></audio>'
    elif ext in _IMAGE:
        body = f'<img src="{url}" alt="{html.escape(p.name)}" style="max-height:{height}px;max-width:100%">'
    else:
        body = (
            f'<video controls preload="metadata" src="{url}" '
            f'style="max-height:{height}px;max-width:100%;background:#000"></video>'
        )
    cap = f'<div class="cav-caption">{html.escape(caption)}</div>' if caption else ""
    return f'<div class="cav-media">{body}{cap}</div>'


def sample_choices(services: Services) -> list[str]:
    """Names of the bundled sample clips."""
    return [p.name for p in services.samples()]


def describe_clip(services: Services, state: SessionState) -> str:
    """Markdown describing the session's clip and what the model sees of it."""
    from cavmae import media

    if not state.clip_path:
        return ""
    path = Path(state.clip_path)
    try:
        info = media.probe(path)
    except UnreadableMedia as e:
        return f"**{html.escape(path.name)}**: {e}"
    parts = [f"**{html.escape(path.name)}**"]
    if info.duration_s:
        parts.append(f"{info.duration_s:.1f} s")
    if info.is_image:
        parts.append(f"image {info.width}×{info.height}")
    elif info.has_video:
        fps = f" @ {info.fps:.0f} fps" if info.fps else ""
        parts.append(f"video {info.width}×{info.height}{fps}")
    else:
        parts.append("no video")
    parts.append(f"audio {info.sample_rate} Hz" if info.has_audio else "no audio track")
    predictor = services.models.peek(state.model) if state.model is not None else None
    secs = predictor.features.clip_seconds if predictor is not None else 10.0
    seen = ""
    if info.duration_s and info.duration_s > secs + 0.5:
        seen = (
            f" The model sees the first {secs:.0f} s; the timeline (Classify) and the temporal "
            "similarity scan the whole file."
        )
    return " · ".join(parts) + "." + seen


def _use(
    services: Services, state: SessionState | None, path: str | None, progress: Any
) -> tuple[SessionState, str, str]:
    state = session(services, state)
    if not path:
        raise ConfigError("no file was given")
    p = Path(path)
    if not p.is_file():
        raise UnreadableMedia(f"{p.name}: the file does not exist (any more); choose it again")
    state.set_clip(str(p))
    try:
        clip_for(services, state, progress_fn(progress))
    except Exception:
        state.set_clip(None)  # never keep a clip that cannot be prepared
        raise
    return state, media_html(p, caption=p.name), describe_clip(services, state)


@user_errors
def use_sample(
    services: Services, state: SessionState | None, name: str | None, progress: Any = None
) -> tuple[SessionState, str, str]:
    """Use one of the bundled samples (by file name)."""
    if not name:
        raise ConfigError("choose a sample")
    folder = services.settings.samples_dir
    path = (folder / name).resolve()
    if path.parent != folder.resolve():
        raise ConfigError(f"{name!r} is not one of the samples")
    return _use(services, state, str(path), progress)


@user_errors
def use_upload(
    services: Services, state: SessionState | None, path: str | None, progress: Any = None
) -> tuple[SessionState, str, str]:
    """Use an uploaded file (video, audio or image)."""
    return _use(services, state, path, progress)


def normalise_recording(path: Path, folder: Path, timeout_s: float = 120.0) -> Path:
    """A browser recording as a constant-frame-rate H.264/AAC mp4 in ``folder``.

    Browsers record variable-frame-rate WebM without a frame rate in the headers, which the
    official frame selection needs (and some browsers cannot play WebM). The ffmpeg binary of
    ``imageio-ffmpeg`` re-encodes it at 25 fps.

    Raises:
        UnreadableMedia: If ffmpeg cannot read the recording.
    """
    import subprocess

    import imageio_ffmpeg

    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"recording_{path.stem[:40]}.mp4"
    cmd = [
        imageio_ffmpeg.get_ffmpeg_exe(),
        "-hide_banner",
        "-loglevel",
        "error",
        "-nostdin",
        "-y",
        "-i",
        str(path),
        "-r",
        "25",
        "-fps_mode",
        "cfr",
        "-vf",
        "pad=ceil(iw/2)*2:ceil(ih/2)*2",
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-pix_fmt",
        "yuv420p",
        "-c:a",
        "aac",
        "-movflags",
        "+faststart",
        str(out),
    ]
    try:
        res = subprocess.run(cmd, capture_output=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as e:
        raise UnreadableMedia(
            f"{path.name}: converting the recording took more than {timeout_s:.0f} s"
        ) from e
    if res.returncode != 0 or not out.is_file():
        tail = res.stderr.decode(errors="replace").strip()[-300:]
        raise UnreadableMedia(
            f"{path.name}: the recording could not be read ({tail or 'ffmpeg failed'})"
        )
    return out


@user_errors
def use_recording(
    services: Services, state: SessionState | None, path: str | None, progress: Any = None
) -> tuple[SessionState, str, str]:
    """Use a webcam recording (with the microphone's audio), converted to a constant frame rate."""
    if not path:
        raise ConfigError("the recording is empty; record a clip first")
    state = session(services, state)
    if progress is not None:
        progress(0.1, desc="converting the recording")
    mp4 = normalise_recording(Path(path), state.folder(services) / "recordings")
    return _use(services, state, str(mp4), progress)
