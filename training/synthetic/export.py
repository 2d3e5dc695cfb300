"""Writing AV-Shapes clips as browser-playable mp4 files and whole dataset folders.

Videos are encoded by the ffmpeg binary of ``imageio-ffmpeg`` (H.264 yuv420p + AAC), fed raw
RGB frames on stdin and the audio as a temporary 16-bit wav. A folder holds the mp4 files,
``labels.csv`` in the official ``index,mid,display_name`` format and ``metadata.jsonl`` with
the ground truth of each clip.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Literal

import numpy as np

from cavmae import wav as cavmae_wav
from cavmae.errors import ConfigError, MediaError, MediaTimeout
from training.synthetic.classes import CLASSES, class_mid, write_label_csv
from training.synthetic.clip import SyntheticClip, render_clip
from training.synthetic.config import AVShapesConfig

__all__ = ["write_video", "write_wav", "generate_folder"]

log = logging.getLogger(__name__)


def write_wav(waveform: np.ndarray, sample_rate: int, path: str | Path) -> Path:
    """Writes a mono float waveform (N,) in [-1, 1] as a 16-bit PCM wav file (no rescaling)."""
    return cavmae_wav.write_wav(path, waveform, sample_rate, peak=None)


def write_video(clip: SyntheticClip, path: str | Path, timeout_s: float = 120.0,
                crf: int = 20) -> Path:
    """Writes a clip as an mp4 that browsers play: H.264 (yuv420p) video and AAC audio.

    The file is written under a temporary name and renamed when complete.

    Args:
        clip: the clip, rendered on the default frame grid (k / fps).
        path: output ``.mp4`` path; parent folders are created.
        timeout_s: the encoder is stopped after this many seconds.
        crf: H.264 quality (lower is better and larger).

    Returns:
        The path written.

    Raises:
        ConfigError: if the clip's frames are not on the default frame grid.
        MediaTimeout: if the encoder runs longer than ``timeout_s``.
        MediaError: if the encoder fails.
    """
    import imageio_ffmpeg  # imported here: only needed when videos are written

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    k, h, w, _ = clip.frames.shape  # (K, H, W, 3)
    if not np.allclose(clip.frame_times, np.arange(k) / clip.fps):
        raise ConfigError(f"write_video needs frames at k / fps (render_clip without "
                          f"frame_times); {path} would play at the wrong speed")
    partial = path.with_name(path.stem + ".partial" + path.suffix)
    with tempfile.TemporaryDirectory(prefix="avshapes_") as tmp:
        wav = write_wav(clip.waveform, clip.sample_rate, Path(tmp) / "audio.wav")
        cmd = [
            imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin",
            "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", f"{clip.fps:g}",
            "-i", "pipe:0", "-i", str(wav), "-map", "0:v:0", "-map", "1:a:0",
            # yuv420p needs even sizes: pad odd ones by one pixel.
            "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2", "-c:v", "libx264", "-preset", "veryfast",
            "-crf", str(crf), "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "96k",
            "-movflags", "+faststart", str(partial),
        ]
        try:
            proc = subprocess.run(cmd, input=np.ascontiguousarray(clip.frames).tobytes(),
                                  capture_output=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired as e:
            partial.unlink(missing_ok=True)
            raise MediaTimeout(
                f"encoding {path} took more than {timeout_s} s; raise timeout_s or use "
                f"smaller frames ({k} frames of {w}x{h})"
            ) from e
    if proc.returncode != 0:
        partial.unlink(missing_ok=True)
        tail = proc.stderr.decode(errors="replace").strip()[-800:]
        raise MediaError(f"ffmpeg could not write {path} (exit code {proc.returncode}): {tail}")
    os.replace(partial, path)
    return path


def _clip_record(clip: SyntheticClip, rel: str) -> dict:
    """The metadata.jsonl entry of one clip."""
    return {
        "file": rel,
        "index": clip.index,
        "labels": clip.labels,
        "mids": [class_mid(c) for c in clip.labels],
        "label_names": clip.label_names,
        "audio_labels": clip.audio_labels,
        "mismatched": clip.mismatched,
        "audio_source_index": clip.audio_source_index,
        "object_classes": clip.object_classes,
        "num_sources": clip.num_sources,
        "frame_times": np.round(clip.frame_times, 4).tolist(),
        "active": clip.active.astype(int).tolist(),
        "glowing": clip.glowing.astype(int).tolist(),
        "object_sizes": [round(v, 4) for v in clip.object_sizes],
        "object_shades": [round(v, 4) for v in clip.object_shades],
        "events": [[list(e) for e in src] for src in clip.events],
        "boxes": np.round(clip.boxes.astype(np.float64), 1).tolist(),
    }


def _write_one(job: tuple[int, int, AVShapesConfig, str, str]) -> dict:
    index, seed, cfg, out_dir, layout = job
    clip = render_clip(index, seed, cfg)
    name = f"avs_{index:06d}.mp4"
    rel = f"{CLASSES[clip.labels[0]].name}/{name}" if layout == "class_folders" else name
    write_video(clip, Path(out_dir) / rel)
    return _clip_record(clip, rel)


def generate_folder(
    out_dir: str | Path,
    num_per_class: int,
    seed: int = 0,
    cfg: AVShapesConfig | None = None,
    layout: Literal["class_folders", "flat"] = "class_folders",
    workers: int = 1,
    start_index: int = 0,
) -> Path:
    """Writes a folder of AV-Shapes videos with labels and ground truth.

    Clips ``start_index .. start_index + num_classes * num_per_class - 1`` are written, which
    gives exactly ``num_per_class`` clips of each first class. Use disjoint index ranges (or
    seeds) for training and held-out splits.

    Args:
        out_dir: output folder (created).
        num_per_class: clips per class.
        seed: dataset seed.
        cfg: dataset configuration (defaults when None).
        layout: ``"class_folders"`` puts each mp4 in a folder named by its first class's
            display name; ``"flat"`` puts all of them in ``out_dir``.
        workers: number of processes rendering and encoding in parallel.
        start_index: index of the first clip.

    Returns:
        ``out_dir``, holding the videos, ``labels.csv`` and ``metadata.jsonl`` (one JSON
        object per clip, in index order, with relative ``file``, ``labels``, ``mids``,
        ``mismatched``, ``frame_times``, ``active``, ``events`` and ``boxes`` per frame time).

    Raises:
        ConfigError: on a bad layout, count or worker number.
    """
    cfg = cfg or AVShapesConfig()
    if layout not in ("class_folders", "flat"):
        raise ConfigError(f"layout must be 'class_folders' or 'flat', not {layout!r}")
    if num_per_class < 1 or workers < 1 or start_index < 0:
        raise ConfigError(f"need num_per_class >= 1, workers >= 1, start_index >= 0; got "
                          f"{num_per_class}, {workers}, {start_index}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    count = cfg.num_classes * num_per_class
    jobs = [(start_index + i, seed, cfg, str(out), layout) for i in range(count)]
    log.info("writing %d AV-Shapes clips to %s with %d worker(s)", count, out, workers)
    if workers == 1:
        records = [_write_one(job) for job in jobs]
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            records = list(pool.map(_write_one, jobs, chunksize=4))
    write_label_csv(out / "labels.csv", cfg.num_classes)
    with (out / "metadata.jsonl").open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    return out
