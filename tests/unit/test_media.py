"""cavmae.media: decoding, frame selection, windows and bad input, checked by numbers.

Test media are generated once per session (tests/media_factory.py) with known content:
numbered frames (a barcode of the frame index), sine tones, solid colours.
"""

from __future__ import annotations

import itertools
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from media_factory import (
    FFMPEG,
    make_long_wav,
    make_test_media,
    numbered_frames,
    read_frame_number,
    write_media,
)
from PIL import Image

from cavmae import features
from cavmae.config import FeatureConfig
from cavmae.errors import (
    ClipTooShort,
    ConfigError,
    MediaError,
    MediaTimeout,
    NoAudioStream,
    NoVideoStream,
    UnreadableMedia,
    UnsupportedMedia,
)
from cavmae.media import (
    count_windows,
    decode_audio,
    decode_frames,
    iter_windows,
    load_clip,
    official_frame_indices,
    official_frame_times,
    probe,
)

CFG = FeatureConfig()
PAD = (0.0 - CFG.fbank_mean) / CFG.fbank_std  # a padded fbank row after normalisation: +1.133
OFFICIAL_100 = [0, 9, 19, 29, 39, 49, 59, 69, 79, 89]  # 100 frames, off by one


@pytest.fixture(scope="session")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_test_media(tmp_path_factory.mktemp("media"))


def numbers(frames: np.ndarray) -> list[int]:
    return [read_frame_number(f) for f in frames]


def peak_hz(x: np.ndarray, sr: int = 16000) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spec) * sr / len(x))


def amplitude_at(x: np.ndarray, hz: float, sr: int = 16000) -> float:
    """Amplitude of a sinusoid at ``hz`` (least squares on sin/cos)."""
    t = np.arange(len(x)) / sr
    basis = np.stack([np.sin(2 * np.pi * hz * t), np.cos(2 * np.pi * hz * t)], axis=1)
    coef, *_ = np.linalg.lstsq(basis, x.astype(np.float64), rcond=None)
    return float(np.hypot(*coef))


# --- containers, codecs, sample rates -----------------------------------------------------


@pytest.mark.parametrize("ext", [".mp4", ".mov", ".mkv", ".webm", ".avi"])
def test_video_containers_decode_exactly(media: dict[str, Path], ext: str) -> None:
    info = probe(media[f"video{ext}"])
    assert info.has_audio and info.has_video and not info.is_image
    assert info.fps == pytest.approx(10.0) and info.num_frames == 100
    assert (info.width, info.height, info.channels) == (128, 128, 2)
    assert official_frame_indices(info).tolist() == OFFICIAL_100

    clip = load_clip(media[f"video{ext}"])
    assert clip.fbank is not None and clip.frames is not None and clip.waveform is not None
    assert clip.fbank.shape == (1024, 128) and clip.frames.shape == (10, 3, 224, 224)
    assert numbers(clip.frames_uint8) == OFFICIAL_100
    np.testing.assert_allclose(clip.frame_times, np.array(OFFICIAL_100) / 10.0, atol=1e-3)
    # 10 s of audio (Opus/Vorbis may add a few ms), first channel = the 1 kHz tone.
    assert abs(len(clip.waveform) - 160000) <= 0.05 * 16000
    mid = clip.waveform[16000:144000]
    assert peak_hz(mid) == pytest.approx(1000.0, abs=2.0)
    assert amplitude_at(mid, 1000.0) == pytest.approx(0.5, abs=0.03)
    assert amplitude_at(mid, 440.0) < 0.01  # the right channel (440 Hz) is not mixed in


@pytest.mark.parametrize(
    "name, sr, channels",
    [
        ("tone_8k.wav", 8000, 1),
        ("tone_22k.mp3", 22050, 2),
        ("tone_44k.flac", 44100, 1),
        ("tone_48k.ogg", 48000, 2),
        ("tone_48k.opus", 48000, 1),
        ("tone_44k.m4a", 44100, 2),
    ],
)
def test_audio_formats_decode_to_16k(
    media: dict[str, Path], name: str, sr: int, channels: int
) -> None:
    info = probe(media[name])
    assert info.has_audio and not info.has_video
    assert (info.sample_rate, info.channels) == (sr, channels)
    w = decode_audio(media[name], info=info)
    assert w.dtype == np.float32 and w.ndim == 1
    assert abs(len(w) - 48000) <= 0.06 * 16000  # 3 s, up to codec priming
    mid = w[8000:40000]
    assert peak_hz(mid) == pytest.approx(1000.0, abs=1.0)
    assert amplitude_at(mid, 1000.0) == pytest.approx(0.5, abs=0.03)
    clip = load_clip(media[name])
    assert clip.frames is None and clip.frames_uint8 is None and clip.frame_times.shape == (0,)
    assert clip.has_audio and not clip.has_video and clip.fbank.shape == (1024, 128)


def test_tone_44k_resampled_to_16k(media: dict[str, Path]) -> None:
    w = decode_audio(media["tone_44k.flac"])
    assert len(w) == 48000  # 3 s exactly
    spec = np.abs(np.fft.rfft(w[4000:44000])) ** 2  # 40000 samples: 0.4 Hz bins
    hz = np.fft.rfftfreq(40000, 1 / 16000)
    assert hz[np.argmax(spec)] == pytest.approx(1000.0, abs=0.5)
    assert spec[np.abs(hz - 1000) < 20].sum() / spec.sum() > 0.99
    # 16-bit quantisation as the official wav files: integer multiples of 1/32768.
    np.testing.assert_array_equal(w * 32768, np.round(w * 32768))
    w32 = decode_audio(media["tone_44k.flac"], pcm16=False)
    assert 0 < np.abs(w32 - w).max() <= 1 / 32768


def test_fbank_of_tone_peaks_in_1khz_bin(media: dict[str, Path]) -> None:
    clip = load_clip(media["tone_44k.flac"])
    real = clip.fbank[:298]  # 3 s -> 1 + (48000 - 400) // 160 = 298 frames
    centres = features.mel_center_frequencies(128, 16000)
    assert int(real.mean(0).argmax()) == int(np.argmin(np.abs(centres - 1000.0)))
    torch.testing.assert_close(clip.fbank[298:], torch.full((1024 - 298, 128), PAD))
    assert not torch.isclose(real, torch.tensor(PAD)).all(dim=1).any()


def test_stereo_first_channel_and_mix(media: dict[str, Path]) -> None:
    first = decode_audio(media["stereo_lr"])  # left 440 Hz, right 1000 Hz
    mix = decode_audio(media["stereo_lr"], channel="mix")
    assert amplitude_at(first, 440.0) == pytest.approx(0.5, abs=0.01)
    assert amplitude_at(first, 1000.0) < 0.002
    assert amplitude_at(mix, 440.0) == pytest.approx(0.25, abs=0.01)
    assert amplitude_at(mix, 1000.0) == pytest.approx(0.25, abs=0.01)
    right = 2 * mix - first
    assert amplitude_at(right, 1000.0) == pytest.approx(0.5, abs=0.01)
    assert amplitude_at(right, 440.0) < 0.002


# --- frame selection ----------------------------------------------------------------------


def test_official_frames_off_by_one(media: dict[str, Path]) -> None:
    info = probe(media["noaudio"])  # 25 fps, 100 frames: total = min(100, 250) = 100
    assert official_frame_indices(info).tolist() == OFFICIAL_100
    plain = official_frame_indices(info, off_by_one=False).tolist()
    assert plain == list(range(0, 100, 10))
    np.testing.assert_allclose(official_frame_times(info), np.array(OFFICIAL_100) / 25.0)
    assert numbers(decode_frames(media["noaudio"], info=info)) == OFFICIAL_100
    assert numbers(decode_frames(media["noaudio"], indices=plain)) == plain
    clip = load_clip(media["noaudio"], off_by_one=False)
    assert numbers(clip.frames_uint8) == plain


def test_middle_and_times_modes(media: dict[str, Path]) -> None:
    p = media["noaudio"]
    middle = load_clip(p, frame_mode="middle")
    assert middle.frames.shape == (1, 3, 224, 224) and numbers(middle.frames_uint8) == [49]
    times = [0.0, 0.039, 0.04, 1.0, 2.5, 3.99]  # 25 fps: the last frame shown at or before t
    clip = load_clip(p, frame_mode="times", times_s=times)
    assert numbers(clip.frames_uint8) == [0, 0, 1, 25, 62, 99]
    np.testing.assert_allclose(clip.frame_times, [0.0, 0.0, 0.04, 1.0, 2.48, 3.96], atol=1e-6)
    with pytest.raises(ConfigError):
        load_clip(p, frame_mode="times", times_s=[5.0])  # beyond the 4 s video
    with pytest.raises(ConfigError):
        load_clip(p, frame_mode="times")


def test_random_access_any_order(media: dict[str, Path]) -> None:
    """Out-of-order, repeated and far requests (seeks, B-frames skipped) are exact."""
    idx = [99, 0, 50, 50, 13, 87, 1, 98, 36]
    for ext in (".mp4", ".mkv", ".webm"):
        assert numbers(decode_frames(media[f"video{ext}"], indices=idx)) == idx
    native = decode_frames(media["video.mp4"], indices=[7])
    assert native.shape == (1, 128, 128, 3) and native.dtype == np.uint8
    small = decode_frames(media["video.mp4"], indices=[7], size=64)
    assert small.shape == (1, 64, 64, 3) and numbers(small) == [7]


def test_reader_matches_full_decode(media: dict[str, Path]) -> None:
    """Skipping non-reference frames must not change any pixel of the selected frames."""
    import av

    with av.open(str(media["video.mp4"])) as c:
        ref = [f.to_ndarray(format="rgb24", src_colorspace="ITU601") for f in c.decode(video=0)]
    idx = [3, 17, 18, 45, 46, 71, 99]
    got = decode_frames(media["video.mp4"], indices=idx)
    np.testing.assert_array_equal(got, np.stack([ref[i] for i in idx]))


def test_portrait_centre_crop(media: dict[str, Path]) -> None:
    clip = load_clip(media["portrait"], frame_mode="middle")  # green square between red, blue
    f = clip.frames_uint8[0].astype(int)
    for row in (3, 112, 220):
        r, g, b = f[row].mean(0)
        assert g > 170 and r < 60 and b < 60, (row, r, g, b)


def test_rotation_metadata_applied(media: dict[str, Path]) -> None:
    info = probe(media["rotated"])  # landscape pixels, displayed rotated by 90 degrees
    assert (info.width, info.height, info.rotation) == (96, 160, 90)
    f = decode_frames(media["rotated"], indices=[0])[0].astype(int)
    assert f.shape == (160, 96, 3)
    assert f[:24].mean((0, 1)).argmax() == 0  # red on top, as displayed
    assert f[-24:].mean((0, 1)).argmax() == 2  # blue at the bottom
    assert f[60:100].mean((0, 1)).argmax() == 1


def test_colour_matrix_official_vs_tagged(media: dict[str, Path]) -> None:
    official = decode_frames(media["bt709"], indices=[1])[0, 16:48, 16:48].mean((0, 1))
    tagged = decode_frames(media["bt709"], indices=[1], color="tagged")[0, 16:48, 16:48].mean(
        (0, 1)
    )
    # The encoder converted RGB (200, 100, 50) with BT.709; the tags say so.
    np.testing.assert_allclose(tagged, [200, 100, 50], atol=3)
    # OpenCV 4.6.0.66 ignores the tags and reads this file as (190, 91, 52): BT.601.
    np.testing.assert_allclose(official, [190, 91, 52], atol=2)


@pytest.mark.parametrize("ext", [".png", ".webp", ".jpg"])
def test_images(media: dict[str, Path], ext: str) -> None:
    info = probe(media[f"image{ext}"])
    assert info.is_image and info.has_video and not info.has_audio
    assert (info.width, info.height, info.num_frames) == (200, 120, 1)
    clip = load_clip(media[f"image{ext}"])
    assert clip.fbank is None and clip.waveform is None
    assert clip.frames.shape == (1, 3, 224, 224)
    expect = (np.array([200, 100, 50]) / 255 - np.array(CFG.image_mean)) / np.array(CFG.image_std)
    tol = 1e-5 if ext != ".jpg" else 0.05
    got = clip.frames[0, :, 100:120, 100:120].mean((1, 2)).numpy()
    np.testing.assert_allclose(got, expect, atol=tol)
    frames = decode_frames(media[f"image{ext}"])
    assert frames.shape == (1, 120, 200, 3)


def test_jpeg_roundtrip_option(media: dict[str, Path]) -> None:
    plain = load_clip(media["video.mp4"], frame_mode="middle")
    jpeg = load_clip(media["video.mp4"], frame_mode="middle", jpeg_roundtrip=True)
    diff = np.abs(plain.frames_uint8.astype(int) - jpeg.frames_uint8.astype(int))
    assert 0 < diff.mean() < 3
    assert numbers(jpeg.frames_uint8) == [49]


def test_8k_image(tmp_path: Path) -> None:
    img = np.zeros((4320, 7680, 3), dtype=np.uint8)
    img[:, :3840] = (230, 20, 20)
    img[:, 3840:] = (20, 20, 230)
    p = tmp_path / "8k.jpg"
    Image.fromarray(img).save(p, quality=90)
    clip = load_clip(p)
    f = clip.frames_uint8[0].astype(int)  # shorter side 4320 -> 224, centre 224 of 398 columns
    assert f.shape == (224, 224, 3)
    assert f[112, 20].argmax() == 0 and f[112, 200].argmax() == 2


@pytest.mark.slow
def test_8k_video_frame(tmp_path: Path) -> None:
    frame = np.zeros((1, 4320, 7680, 3), dtype=np.uint8)
    frame[:, :, :3840] = (230, 20, 20)
    frame[:, :, 3840:] = (20, 20, 230)
    p = write_media(
        tmp_path / "8k.mp4", frame, 1.0, video_args=["-c:v", "libx264", "-preset", "ultrafast"]
    )
    info = probe(p)
    assert (info.width, info.height) == (7680, 4320)
    f = decode_frames(p, indices=[0], size=224, info=info)[0].astype(int)  # resized at once
    assert f.shape == (224, 224, 3)
    assert f[112, 20].argmax() == 0 and f[112, 200].argmax() == 2


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_is_refused_not_waited_on(tmp_path: Path) -> None:
    fifo = tmp_path / "stream.mp4"
    os.mkfifo(fifo)  # opening it for reading would block until a writer appears
    with pytest.raises(UnreadableMedia, match="not a regular file"):
        load_clip(fifo)


# --- missing modalities, short clips ------------------------------------------------------


def test_video_without_audio(media: dict[str, Path]) -> None:
    clip = load_clip(media["noaudio"])
    assert not clip.has_audio and clip.has_video
    assert clip.fbank is None and clip.waveform is None and clip.frames.shape == (10, 3, 224, 224)
    with pytest.raises(NoAudioStream, match="noaudio.mp4"):
        decode_audio(media["noaudio"])


def test_audio_file_has_no_frames(media: dict[str, Path]) -> None:
    with pytest.raises(NoVideoStream, match="tone_8k.wav"):
        decode_frames(media["tone_8k.wav"])


def test_short_clip_is_padded(media: dict[str, Path]) -> None:
    clip = load_clip(media["short_0.1s"])  # 1600 samples -> 1 + (1600 - 400) // 160 = 8 frames
    assert len(clip.waveform) == 1600
    torch.testing.assert_close(clip.fbank[8:], torch.full((1016, 128), PAD))
    assert (clip.fbank[:8] != PAD).any(dim=1).all()


def test_clip_shorter_than_one_window(media: dict[str, Path]) -> None:
    with pytest.raises(ClipTooShort, match="400"):
        load_clip(media["tiny_10ms"])


# --- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, error",
    [
        ("missing", UnreadableMedia),
        ("directory", UnreadableMedia),
        ("empty", UnreadableMedia),
        ("truncated", UnreadableMedia),
        ("truncated_faststart", UnreadableMedia),
        ("random", UnreadableMedia),
        ("random_jpg", UnreadableMedia),
        ("txt", UnsupportedMedia),
        ("pdf", UnsupportedMedia),
        ("no_streams", UnsupportedMedia),
        ("bad_codec", UnsupportedMedia),
    ],
)
def test_bad_input_raises_specific_error(
    media: dict[str, Path], tmp_path: Path, name: str, error: type[MediaError]
) -> None:
    path = {"missing": tmp_path / "nope.mp4", "directory": tmp_path}.get(name) or media[name]
    with pytest.raises(error) as exc:
        load_clip(path, timeout_s=30)
    assert str(Path(path).name) in str(exc.value)


def test_corrupt_data_gives_frames_or_media_error(media: dict[str, Path]) -> None:
    try:
        clip = load_clip(media["corrupt_middle"])
    except MediaError as e:
        assert "corrupt_middle.mp4" in str(e)
    else:
        assert clip.frames.shape == (10, 3, 224, 224) and torch.isfinite(clip.frames).all()


def test_timeout_raises(media: dict[str, Path]) -> None:
    with pytest.raises(MediaTimeout):
        load_clip(media["video.mp4"], timeout_s=0.0)
    with pytest.raises(MediaTimeout):
        decode_audio(media["video.mp4"], timeout_s=0.0)


def test_invalid_options(media: dict[str, Path]) -> None:
    with pytest.raises(ConfigError):
        decode_audio(media["stereo_lr"], channel="left")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        load_clip(media["video.mp4"], frame_mode="random")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        decode_frames(media["video.mp4"], times_s=[1.0], indices=[1])
    with pytest.raises(ConfigError):
        list(iter_windows(media["video.mp4"], frames_per_window=11))


# --- windows ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "duration, window, hop, n",
    [(65, 10, 10, 7), (60, 10, 10, 6), (60.01, 10, 10, 6), (9, 10, 10, 1), (0.1, 10, 10, 1),
     (25, 10, 5, 4), (10, 4, 3, 3)],
)  # fmt: skip
def test_count_windows(duration: float, window: float, hop: float, n: int) -> None:
    assert count_windows(duration, window, hop) == n


def test_windows_stream_exact_audio_and_frames(media: dict[str, Path]) -> None:
    p = media["video.mp4"]
    full = decode_audio(p)
    wins = list(iter_windows(p, window_s=4.0, hop_s=3.0))
    assert [(w.index, w.start_s, w.end_s) for w in wins] == [(0, 0, 4), (1, 3, 7), (2, 6, 10)]
    for w in wins:
        a0 = int(w.start_s * 16000)
        np.testing.assert_array_equal(w.waveform, full[a0 : a0 + 64000])  # streamed == one-shot
        assert w.fbank.shape == (1024, 128) and w.frames.shape == (1, 3, 224, 224)
    # 4 s window at 10 fps: total 40, middle frame int(5 * 40 / 10) - 1 = 19 after the start.
    assert [numbers(w.frames_uint8)[0] for w in wins] == [19, 49, 79]


def test_window_of_ten_seconds_equals_load_clip(media: dict[str, Path]) -> None:
    p = media["video.mp4"]
    (w,) = list(iter_windows(p, frames_per_window=10))
    clip = load_clip(p)
    np.testing.assert_array_equal(w.frames_uint8, clip.frames_uint8)
    torch.testing.assert_close(w.fbank, clip.fbank, rtol=0, atol=0)


def test_audio_only_and_image_windows(media: dict[str, Path]) -> None:
    wins = list(iter_windows(media["tone_44k.flac"], window_s=1.0, hop_s=1.0))
    assert len(wins) == 3 and all(w.frames is None and w.fbank is not None for w in wins)
    (img,) = list(iter_windows(media["image.png"], frames_per_window=2))
    assert img.fbank is None and img.frames.shape == (2, 3, 224, 224)


def _ffmpeg_children() -> list[int]:
    """PIDs of this process's ffmpeg children (Linux /proc)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[1]) == os.getpid() and "ffmpeg" in stat.split(")")[0]:
                pids.append(int(d.name))
    return pids


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_two_hour_file_reads_only_what_it_needs(tmp_path: Path) -> None:
    p = make_long_wav(tmp_path / "long.wav", hours=2.0)  # 58 MB, 8 kHz
    info = probe(p)
    assert info.duration_s == pytest.approx(7200.0)
    clip = load_clip(p)
    assert len(clip.waveform) == 164080  # (1024 - 1) * 160 + 400 samples, not 2 hours
    assert peak_hz(clip.waveform) == pytest.approx(1000.0, abs=1.0)
    assert count_windows(info.duration_s) == 720
    gen = iter_windows(p)
    first = list(itertools.islice(gen, 3))
    assert [w.start_s for w in first] == [0.0, 10.0, 20.0]
    gen.close()  # stops the decoder: no ffmpeg left running
    assert _ffmpeg_children() == []


# --- real files (../shared/media) ---------------------------------------------------------


def test_shared_multichannel_first_and_mix(shared_media: Path) -> None:
    p = shared_media / "bbb_5s_aac_5.1ch.mp4"
    info = probe(p)
    assert info.channels == 6 and info.sample_rate == 48000
    cmd = [FFMPEG, "-v", "error", "-i", str(p), "-vn", "-ar", "16000", "-f", "s16le", "-"]
    raw = subprocess.run(cmd, capture_output=True, check=True, timeout=60).stdout
    ref = np.frombuffer(raw, dtype="<i2").reshape(-1, 6).astype(np.float32) / 32768
    np.testing.assert_array_equal(decode_audio(p), ref[:, 0])  # ffmpeg -ar 16000 + remix 1
    np.testing.assert_allclose(decode_audio(p, channel="mix"), ref.mean(1), atol=1e-6)


def test_shared_short_webm(shared_media: Path) -> None:
    clip = load_clip(shared_media / "bbb_1s_vp8_vorbis.webm")
    n = len(clip.waveform)
    real = 1 + (n - 400) // 160
    assert 95 <= real <= 101
    torch.testing.assert_close(clip.fbank[real:], torch.full((1024 - real, 128), PAD))
    assert clip.frames.shape == (10, 3, 224, 224)
    assert official_frame_indices(clip.info).tolist() == [0, 1, 3, 6, 8, 11, 13, 15, 18, 20]


def test_shared_visual_and_audio_only(shared_media: Path) -> None:
    bikes = load_clip(shared_media / "bikes_noaudio.mp4")
    assert not bikes.has_audio and bikes.fbank is None and bikes.frames.shape == (10, 3, 224, 224)
    speech = load_clip(shared_media / "speech_jfk.flac")
    assert speech.info.sample_rate == 44100 and speech.info.channels == 2
    assert speech.frames is None and len(speech.waveform) == 164080


def test_shared_long_ogg_windows(shared_media: Path) -> None:
    p = shared_media / "humpback_whale_65s.ogg"
    wins = list(iter_windows(p))
    assert len(wins) == 7 == count_windows(probe(p).duration_s)
    assert [len(w.waveform) for w in wins[:6]] == [160000] * 6
    assert abs(len(wins[-1].waveform) - 4.809 * 16000) < 20
    real = 1 + (len(wins[-1].waveform) - 400) // 160
    torch.testing.assert_close(wins[-1].fbank[real:], torch.full((1024 - real, 128), PAD))


def test_shared_corrupt_h264(shared_media: Path) -> None:
    try:
        clip = load_clip(shared_media / "corrupt_h264_frames.mp4")
    except MediaError as e:
        assert "corrupt_h264_frames.mp4" in str(e)
    else:
        assert clip.frames.shape == (10, 3, 224, 224) and torch.isfinite(clip.frames).all()


def test_numbered_frames_roundtrip() -> None:
    """The barcode reader used above reads what the generator writes."""
    frames = numbered_frames(3, start=200)
    assert numbers(frames) == [200, 201, 202]
