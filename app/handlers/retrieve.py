"""Retrieve: index a folder (or the samples), query it with a clip, an audio file or an image.

Indexes are shared between sessions (:class:`~app.services.IndexRegistry`, one per model and
folder) and updated incrementally: indexing a folder again only embeds new or changed files.
Queries search the audio or visual vectors of the index in either direction. Results show as a
gallery (a frame, or the spectrogram of audio-only files) with their cosine scores; selecting
one plays it. R@K and precision@K use the files' parent folder names as labels.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from app.handlers.clips import media_html
from app.handlers.common import SessionState, predictor_for, progress_fn, session, user_errors
from app.services import Services
from cavmae import viz
from cavmae.errors import CavmaeError, ConfigError

__all__ = [
    "DIRECTIONS",
    "build_index",
    "query",
    "play_hit",
    "recall",
    "thumbnail",
    "HIT_COLUMNS",
]

logger = logging.getLogger(__name__)

DIRECTIONS = ("auto", "audio → visual", "visual → audio", "audio → audio", "visual → visual")
HIT_COLUMNS = ["rank", "score", "file", "labels"]
_THUMB = 192
_MAX_COPY_BYTES = 512 * 1024 * 1024


def _folder(services: Services, source: str, folder: str | None) -> Path:
    if source == "Samples":
        path = services.settings.samples_dir
        if not path.is_dir():
            raise ConfigError(
                f"there are no bundled samples ({path} is missing); index a folder instead"
            )
        return path
    if not folder or not str(folder).strip():
        raise ConfigError("type the path of a folder on this machine (it is searched recursively)")
    path = Path(str(folder).strip()).expanduser()
    if not path.is_dir():
        raise ConfigError(f"{path} is not a folder on this machine")
    return path.resolve()


@user_errors
def build_index(
    services: Services,
    state: SessionState | None,
    source: str,
    folder: str | None,
    progress: Any = None,
) -> tuple[SessionState, str]:
    """Index a folder (recursively) or the samples with the session's model."""
    state = session(services, state)
    path = _folder(services, source, folder)
    predictor = predictor_for(services, state, progress_fn(progress))
    assert state.model is not None
    index, report = services.indexes.update(state.model, path, predictor, progress_fn(progress))
    state.index_folder = str(path)
    skipped = ""
    if report.skipped:
        first = list(report.skipped.items())[:3]
        skipped = "\n\nSkipped: " + "; ".join(f"{Path(k).name}: {v}" for k, v in first)
        if len(report.skipped) > 3:
            skipped += f" (and {len(report.skipped) - 3} more)"
    status = (
        f"Index of **{path}**: {len(index)} items ({index.count('audio')} with audio, "
        f"{index.count('visual')} with frames) · this update: {report.summary()}.{skipped}"
    )
    return state, status


def _index(services: Services, state: SessionState) -> Any:
    assert state.model is not None
    if not state.index_folder:
        raise ConfigError("build an index first (index the samples or a folder)")
    index = services.indexes.get(state.model, state.index_folder)
    if index is None:
        raise ConfigError("the index was built with another model; build it again for this model")
    return index


@functools.lru_cache(maxsize=512)
def _thumb_cached(path: str, mtime_ns: int) -> np.ndarray:
    """Preview of a file version (``mtime_ns`` is part of the cache key)."""
    del mtime_ns
    from cavmae import media
    from cavmae.errors import NoVideoStream

    p = Path(path)
    info = media.probe(p)
    if info.has_video:
        t = 0.0 if info.is_image else min((info.duration_s or 0.0) / 2.0, 5.0)
        return media.decode_frames(p, times_s=[t], size=_THUMB, info=info)[0]
    if not info.has_audio:
        raise NoVideoStream(f"{p.name} has neither audio nor video")
    from cavmae.config import FeatureConfig
    from cavmae.features import fbank_features

    cfg = FeatureConfig()
    wav = media.decode_audio(p, sample_rate=cfg.sample_rate, duration_s=cfg.clip_seconds, info=info)
    fb = fbank_features(wav, cfg.sample_rate, cfg)  # (T, F)
    img = viz.spectrogram_image(np.asarray(fb))  # (F, T, 3)
    import cv2

    return cv2.resize(img, (_THUMB, _THUMB), interpolation=cv2.INTER_AREA)


def thumbnail(path: str) -> np.ndarray:
    """A square preview (frame, or spectrogram for audio files) of a media file; grey if unreadable."""
    try:
        st = os.stat(path)
        return _thumb_cached(path, st.st_mtime_ns)
    except (CavmaeError, OSError) as e:
        logger.warning("no thumbnail for %s: %s", path, e)
        return np.full((_THUMB, _THUMB, 3), 90, np.uint8)


def _direction(direction: str, emb: Any) -> tuple[str, str]:
    if direction not in DIRECTIONS:
        raise ConfigError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if direction == "auto":
        return ("audio", "visual") if emb.audio is not None else ("visual", "audio")
    src, dst = (s.strip() for s in direction.split("→"))
    if emb.get(src) is None:
        raise ConfigError(
            f"the query has no {src} ({'no audio track' if src == 'audio' else 'no image or video'}), so {direction} is impossible"
        )
    return src, dst


@user_errors
def query(
    services: Services,
    state: SessionState | None,
    query_file: str | None,
    use_clip: bool,
    direction: str,
    k: float,
    progress: Any = None,
) -> tuple[SessionState, list[tuple[np.ndarray, str]], list[list[Any]], str]:
    """Search the index with a file (video, audio or image) or the session's clip.

    Returns:
        ``(state, gallery items (image, caption), table rows, status)``; the hits are remembered
        in the session for :func:`play_hit`.
    """
    state = session(services, state)
    index = _index(services, state)
    predictor = predictor_for(services, state)
    path = state.clip_path if use_clip else query_file
    if not path:
        raise ConfigError(
            "upload a query file, or tick 'query with the current clip' after choosing a clip"
        )
    emb = predictor.embed(predictor.prepare(path, progress_fn(progress), frames="middle"))
    src, dst = _direction(direction, emb)
    if index.count(dst) == 0:
        raise ConfigError(f"the index has no {dst} vectors to search")
    me = str(Path(path).resolve())
    hits = index.search(emb.get(src), target=dst, k=int(k or 8), exclude=[me])[0]
    state.hits = [h.key for h in hits]
    gallery = [(thumbnail(h.key), f"{h.rank}. {h.score:.3f} · {Path(h.key).name}") for h in hits]
    rows = [
        [h.rank, round(h.score, 4), Path(h.key).name, ", ".join(h.meta.get("labels", []))]
        for h in hits
    ]
    status = f"{src} → {dst}: {len(hits)} results from {index.count(dst)} items (cosine similarity). Select a result to play it."
    return state, gallery, rows, status


def _servable(services: Services, state: SessionState, path: Path) -> Path:
    """``path`` itself if Gradio may serve it, else a copy in the session folder."""
    roots = [Path(p).resolve() for p in services.settings.serve_paths()]
    roots += [Path(tempfile.gettempdir()).resolve(), Path.cwd().resolve()]
    rp = path.resolve()
    if any(rp.is_relative_to(r) for r in roots):
        return rp
    if rp.stat().st_size > _MAX_COPY_BYTES:
        raise ConfigError(f"{path.name} is too large to play here; open it on the machine itself")
    dest = state.folder(services) / "play" / path.name
    dest.parent.mkdir(parents=True, exist_ok=True)
    for old in dest.parent.iterdir():
        if old != dest:
            old.unlink(missing_ok=True)
    if not dest.exists():
        shutil.copyfile(rp, dest)
    return dest


@user_errors
def play_hit(
    services: Services, state: SessionState | None, hit_index: int | None
) -> tuple[SessionState, str]:
    """An HTML player for result ``hit_index`` of the last query."""
    state = session(services, state)
    hits = state.hits
    if hit_index is None or not 0 <= int(hit_index) < len(hits):
        return state, ""
    path = Path(hits[int(hit_index)])
    if not path.is_file():
        raise ConfigError(f"{path} no longer exists")
    return state, media_html(_servable(services, state, path), height=260, caption=path.name)


@user_errors
def recall(
    services: Services, state: SessionState | None
) -> tuple[SessionState, list[list[Any]], str]:
    """R@1/5/10, median rank and label precision of the indexed folder, in all directions.

    Labels are the parent folder names; clips need both audio and video.
    """
    from cavmae.retrieval import evaluate_labelled

    state = session(services, state)
    index = _index(services, state)
    keys, audio, visual, labels = [], [], [], []
    for key in index.keys():
        e = index.get(key)
        if e.audio is None or e.visual is None:
            continue
        keys.append(key)
        audio.append(e.audio)
        visual.append(e.visual)
        labels.append(list(index.meta(key).get("labels") or [Path(key).parent.name]))
    if len(keys) < 2:
        raise ConfigError(f"need at least 2 indexed clips with audio and video, found {len(keys)}")
    metrics = evaluate_labelled(np.stack(audio), np.stack(visual), labels)
    cols = ["R@1", "R@5", "R@10", "MR", "P@1", "P@5", "P@10"]
    rows = []
    for direction, m in metrics.items():
        rows.append([direction] + [round(m[c], 3) if c in m else None for c in cols])
    n_labels = len({lab for labs in labels for lab in labs})
    text = (
        f"{len(keys)} clips with audio and video, {n_labels} labels (parent folder names). "
        "R@K: the clip's own pair is among the top K (chance: K/N); MR: median rank; "
        "P@K: share of the top K sharing a label."
    )
    return state, rows, text
