"""Test media generated on the fly with the imageio-ffmpeg binary (no files in the repository).

Known content makes decoding checkable by numbers:

- :func:`numbered_frames`: square frames whose top half is a solid colour and whose bottom half
  is an 8-bit barcode of the frame number (white bar = 1), readable after lossy coding and
  after resizing with :func:`read_frame_number`.
- :func:`tone`: sine tones per channel (e.g. 440 Hz left, 1000 Hz right).
- :func:`write_media`: mux frames and/or audio into any container/codec by extension.
- :func:`make_test_media`: the whole test set (containers, audio formats, images, malformed
  files), generated once per test session under a temporary folder.
"""

from __future__ import annotations

import subprocess
import wave
from pathlib import Path

import imageio_ffmpeg
import numpy as np
from PIL import Image

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()

FRAME_SIDE = 128
BITS = 8  # frame numbers 0..255

#: (video codec args, audio codec args) per container extension.
CODECS: dict[str, tuple[list[str], list[str]]] = {
    ".mp4": (["-c:v", "libx264", "-preset", "veryfast", "-crf", "18"], ["-c:a", "aac"]),
    ".mov": (["-c:v", "libx264", "-preset", "veryfast", "-crf", "18"], ["-c:a", "aac"]),
    ".mkv": (["-c:v", "libx264", "-preset", "veryfast", "-crf", "18"], ["-c:a", "libvorbis"]),
    ".webm": (["-c:v", "libvpx", "-b:v", "1M", "-crf", "10"], ["-c:a", "libopus"]),
    ".avi": (["-c:v", "mpeg4", "-q:v", "2"], ["-c:a", "pcm_s16le"]),  # mp3 in avi shifts frames
    ".wav": ([], ["-c:a", "pcm_s16le"]),
    ".flac": ([], ["-c:a", "flac"]),
    ".mp3": ([], ["-c:a", "libmp3lame", "-q:a", "2"]),
    ".ogg": ([], ["-c:a", "libvorbis"]),
    ".opus": ([], ["-c:a", "libopus"]),
    ".m4a": ([], ["-c:a", "aac"]),
}


def run_ffmpeg(args: list[str], stdin: bytes | None = None, timeout: float = 120.0) -> None:
    """Run the ffmpeg binary; raise with its message on failure."""
    cmd = [FFMPEG, "-hide_banner", "-loglevel", "error", "-y"] + (
        ["-nostdin"] if stdin is None else []
    )
    res = subprocess.run(cmd + args, input=stdin, capture_output=True, timeout=timeout)
    if res.returncode:
        raise RuntimeError(f"ffmpeg {' '.join(args)} failed: {res.stderr.decode()[-800:]}")


# --- content ------------------------------------------------------------------------------


def frame_colour(n: int) -> tuple[int, int, int]:
    """The solid colour of frame ``n`` (distinct for neighbouring frames)."""
    return (40 + (n * 37) % 180, 40 + (n * 71) % 180, 40 + (n * 113) % 180)


def numbered_frames(n: int, side: int = FRAME_SIDE, start: int = 0) -> np.ndarray:
    """Frames (n, side, side, 3) uint8: top half solid colour, bottom half a barcode of the index."""
    frames = np.zeros((n, side, side, 3), dtype=np.uint8)
    bar = side // BITS
    for i in range(n):
        k = start + i
        frames[i, : side // 2] = frame_colour(k)
        for b in range(BITS):
            if (k >> b) & 1:
                frames[i, side // 2 :, b * bar : (b + 1) * bar] = 255
    return frames


def read_frame_number(frame: np.ndarray) -> int:
    """Inverse of :func:`numbered_frames` for a decoded (possibly resized) square frame."""
    h, w = frame.shape[:2]
    bar = w / BITS
    rows = frame[int(h * 0.6) : int(h * 0.9)].mean(axis=(0, 2))  # (W,)
    bits = [rows[int((b + 0.3) * bar) : int((b + 0.7) * bar)].mean() > 128 for b in range(BITS)]
    return sum(1 << b for b, on in enumerate(bits) if on)


def tone(
    freqs: list[float] | float, sample_rate: int, duration_s: float, amp: float = 0.5
) -> np.ndarray:
    """Sine tones, one frequency per channel (0 Hz = silence): float32 (N, C)."""
    freqs = [freqs] if isinstance(freqs, (int, float)) else freqs
    t = np.arange(int(round(duration_s * sample_rate))) / sample_rate
    return np.stack([amp * np.sin(2 * np.pi * f * t) for f in freqs], axis=1).astype(np.float32)


# --- writers ------------------------------------------------------------------------------


def write_wav(path: Path, audio: np.ndarray, sample_rate: int, sampwidth: int = 2) -> Path:
    """Write PCM wav with the standard library (no ffmpeg), 8- or 16-bit."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(audio.shape[1])
        w.setsampwidth(sampwidth)
        w.setframerate(sample_rate)
        if sampwidth == 1:
            w.writeframes((np.clip(audio, -1, 1) * 127 + 128).astype(np.uint8).tobytes())
        else:
            w.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
    return path


def write_media(
    path: Path,
    frames: np.ndarray | None = None,
    fps: float = 25.0,
    audio: np.ndarray | None = None,
    sample_rate: int = 44100,
    video_args: list[str] | None = None,
    audio_args: list[str] | None = None,
    extra: list[str] | None = None,
) -> Path:
    """Encode frames (N, H, W, 3) uint8 and/or audio (N, C) float32 into ``path``.

    The codecs come from :data:`CODECS` by extension unless given. Frames go through stdin,
    audio through a temporary raw file next to ``path`` (removed afterwards).
    """
    vdef, adef = CODECS.get(path.suffix.lower(), ([], []))
    args: list[str] = []
    raw = path.with_suffix(path.suffix + ".f32")
    if frames is not None:
        n, h, w, _ = frames.shape
        args += [
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
            "-s",
            f"{w}x{h}",
            "-r",
            str(fps),
            "-i",
            "pipe:0",
        ]
    if audio is not None:
        raw.write_bytes(np.ascontiguousarray(audio, dtype="<f4").tobytes())
        args += ["-f", "f32le", "-ar", str(sample_rate), "-ac", str(audio.shape[1]), "-i", str(raw)]
    if frames is not None:
        args += (video_args if video_args is not None else vdef) + ["-pix_fmt", "yuv420p"]
    if audio is not None:
        args += audio_args if audio_args is not None else adef
    args += (extra or []) + [str(path)]
    try:
        run_ffmpeg(args, stdin=None if frames is None else frames.tobytes())
    finally:
        raw.unlink(missing_ok=True)
    return path


# --- the test set -------------------------------------------------------------------------


def make_test_media(root: Path) -> dict[str, Path]:
    """Generate every test file under ``root``; returns name -> path."""
    root.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    frames100 = numbered_frames(100)
    gop = ["-g", "12", "-bf", "3"]  # several GOPs and B-frames: exercises seeking and skipping

    # Containers with numbered frames (10 fps, 10 s) and a 1 kHz tone (stereo 1k / 440 Hz).
    av_audio = tone([1000.0, 440.0], 48000, 10.0)
    for ext in (".mp4", ".mov", ".mkv", ".webm", ".avi"):
        vargs = CODECS[ext][0] + (gop if ext in (".mp4", ".mov", ".mkv") else ["-g", "12"])
        out[f"video{ext}"] = write_media(
            root / f"video{ext}", frames100, 10.0, av_audio, 48000, video_args=vargs
        )
    # 25 fps, 4 s, no audio: official total = min(100, 250) = 100.
    out["noaudio"] = write_media(
        root / "noaudio.mp4", frames100, 25.0, video_args=CODECS[".mp4"][0] + gop
    )
    # Audio formats and sample rates.
    for name, sr, freqs in (
        ("tone_8k.wav", 8000, [1000.0]),
        ("tone_22k.mp3", 22050, [1000.0, 1000.0]),
        ("tone_44k.flac", 44100, [1000.0]),
        ("tone_48k.ogg", 48000, [1000.0, 1000.0]),
        ("tone_48k.opus", 48000, [1000.0]),
        ("tone_44k.m4a", 44100, [1000.0, 1000.0]),
    ):
        out[name] = write_media(root / name, audio=tone(freqs, sr, 3.0), sample_rate=sr)
    # Stereo with different channels: left 440 Hz, right 1000 Hz (wav: exact samples).
    out["stereo_lr"] = write_wav(root / "stereo_lr.wav", tone([440.0, 1000.0], 44100, 3.0), 44100)
    out["short_0.1s"] = write_wav(root / "short.wav", tone([1000.0], 16000, 0.1), 16000)
    out["tiny_10ms"] = write_wav(root / "tiny.wav", tone([1000.0], 16000, 0.010), 16000)

    # Portrait: a 96x160 frame whose central 96x96 square is green, red above, blue below.
    portrait = np.zeros((4, 160, 96, 3), dtype=np.uint8)
    portrait[:, :32] = (220, 30, 30)
    portrait[:, 32:128] = (30, 200, 30)
    portrait[:, 128:] = (30, 30, 220)
    out["portrait"] = write_media(root / "portrait.mp4", portrait, 4.0)
    # Landscape content with 90-degree display rotation metadata (as phones record).
    land = np.ascontiguousarray(np.rot90(portrait, -1, axes=(1, 2)))  # (4, 96, 160, 3)
    tmp = write_media(root / "land_tmp.mp4", land, 4.0)
    run_ffmpeg(["-display_rotation", "90", "-i", str(tmp), "-c", "copy", str(root / "rotated.mp4")])
    tmp.unlink()
    out["rotated"] = root / "rotated.mp4"

    # BT.709 colour tags on BT.601-converted pixels (what OpenCV 4.6 decodes as BT.601).
    solid_v = np.zeros((4, 64, 64, 3), dtype=np.uint8)
    solid_v[:] = (200, 100, 50)
    out["bt709"] = write_media(
        root / "bt709.mp4", solid_v, 4.0,
        extra=["-colorspace", "bt709", "-color_primaries", "bt709", "-color_trc", "bt709"],
    )  # fmt: skip

    # Images.
    solid = np.zeros((120, 200, 3), dtype=np.uint8)
    solid[:] = (200, 100, 50)
    for ext in (".png", ".jpg", ".webp"):
        Image.fromarray(solid).save(
            root / f"solid{ext}", **({"lossless": True} if ext == ".webp" else {})
        )
        out[f"image{ext}"] = root / f"solid{ext}"

    # Malformed inputs.
    good = out["video.mp4"].read_bytes()
    (root / "empty.mp4").write_bytes(b"")
    out["empty"] = root / "empty.mp4"
    out["truncated"] = root / "truncated.mp4"  # moov at the end is cut off
    out["truncated"].write_bytes(good[: len(good) // 2])
    fast = write_media(
        root / "faststart.mp4", frames100, 10.0, av_audio, 48000, extra=["-movflags", "+faststart"]
    )
    fb = fast.read_bytes()
    out["truncated_faststart"] = root / "truncated_faststart.mp4"  # headers intact, data cut
    out["truncated_faststart"].write_bytes(fb[: int(len(fb) * 0.4)])
    fast.unlink()
    rng = np.random.default_rng(0)
    out["random"] = root / "random.mp4"
    out["random"].write_bytes(rng.integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    out["random_jpg"] = root / "random.jpg"
    out["random_jpg"].write_bytes(rng.integers(0, 256, 5_000, dtype=np.uint8).tobytes())
    corrupt = bytearray(good)
    mid = len(corrupt) // 2
    corrupt[mid : mid + 4000] = rng.integers(0, 256, 4000, dtype=np.uint8).tobytes()
    out["corrupt_middle"] = root / "corrupt_middle.mp4"
    out["corrupt_middle"].write_bytes(bytes(corrupt))
    (root / "notes.txt").write_text("not media\n")
    out["txt"] = root / "notes.txt"
    (root / "doc.pdf").write_bytes(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\n%%EOF\n")
    out["pdf"] = root / "doc.pdf"
    (root / "subs.srt").write_text("1\n00:00:00,000 --> 00:00:01,000\nhello\n")
    run_ffmpeg(["-i", str(root / "subs.srt"), str(root / "subs_only.mkv")])
    out["no_streams"] = root / "subs_only.mkv"
    wav = bytearray(out["short_0.1s"].read_bytes())
    fmt = wav.find(b"fmt ")
    wav[fmt + 8 : fmt + 10] = (0x7777).to_bytes(2, "little")  # an audio codec id nobody decodes
    out["bad_codec"] = root / "bad_codec.wav"
    out["bad_codec"].write_bytes(bytes(wav))
    return out


def make_long_wav(path: Path, hours: float = 2.0, sample_rate: int = 8000) -> Path:
    """A long 8-bit mono wav (a 1 kHz tone), written in blocks: 2 h is 58 MB in < 1 s."""
    block = tone([1000.0], sample_rate, 60.0)  # one minute, phase-continuous (integer periods)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(1)
        w.setframerate(sample_rate)
        data = (np.clip(block, -1, 1) * 127 + 128).astype(np.uint8).tobytes()
        for _ in range(int(round(hours * 60))):
            w.writeframes(data)
    return path


def make_long_video(path: Path, seconds: float, side: int = 64, fps: float = 10.0) -> Path:
    """A long, small H.264 video with AAC audio, made by looping a 10-s clip (stream copy)."""
    part = path.with_name(path.stem + "_part.mkv")
    write_media(
        part,
        numbered_frames(int(10 * fps), side),
        fps,
        tone([1000.0], 16000, 10.0),
        16000,
        video_args=["-c:v", "libx264", "-preset", "veryfast", "-g", str(int(5 * fps))],
        audio_args=["-c:a", "aac"],
    )
    loops = int(np.ceil(seconds / 10.0)) - 1
    run_ffmpeg(
        ["-stream_loop", str(loops), "-i", str(part), "-c", "copy", "-t", str(seconds), str(path)]
    )
    part.unlink()
    return path
