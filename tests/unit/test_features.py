"""cavmae.features: Kaldi fbank parity with fbank_ref.npz, padding/normalisation, frame transforms."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from cavmae.config import FeatureConfig
from cavmae.errors import ClipTooShort, ConfigError
from cavmae.features import (
    LOG_FLOOR,
    denormalize_fbank,
    fbank_features,
    frames_to_tensor,
    jpeg_roundtrip,
    kaldi_fbank,
    kaldi_mel_matrix,
    kaldi_window_sizes,
    mel_center_frequencies,
    normalize_fbank,
    num_fbank_frames,
    pad_or_crop,
    resize_center_crop,
    tensor_to_frames,
)

FLOOR_16K = -15.942385  # log(float32 eps), PARITY.md
PAD_NORM = 1.13291  # (0 + 5.081) / 4.4849
CFG = FeatureConfig()


@pytest.fixture(scope="module")
def ref(fixtures_dir):
    with np.load(fixtures_dir / "fbank_ref.npz") as d:
        return {k: d[k] for k in d.files}


NAMES = [
    "am_speechlike_3p3s",
    "chirp_44k1_2s",
    "chirp_noise_10s",
    "long_12s",
    "short_0p5s",
    "silence_1s",
    "speech_int16q_float",
    "speech_int16q_int16scale",
    "tone_gap_tone_3s",
]


def _ours(ref: dict, name: str) -> np.ndarray:
    wave = torch.from_numpy(ref[f"wave__{name}"])
    return kaldi_fbank(wave, int(ref[f"sr__{name}"])).numpy()


def test_fixture_lists_every_case(ref):
    assert sorted(k[len("wave__") :] for k in ref if k.startswith("wave__")) == NAMES
    info = json.loads(str(ref["info_json"]))
    assert set(NAMES) <= set(info)


@pytest.mark.parametrize("name", NAMES)
def test_kaldi_fbank_matches_reference(ref, name):
    expected = ref[f"fbank__{name}"]
    sr = int(ref[f"sr__{name}"])
    ours = _ours(ref, name)
    assert ours.dtype == np.float32
    assert ours.shape == expected.shape
    assert ours.shape[0] == num_fbank_frames(ref[f"wave__{name}"].shape[0], sr, CFG)
    diff = np.abs(ours - expected)
    loud = expected > -5.0
    if loud.any():
        assert diff[loud].max() <= 1e-3
    assert diff.max() <= 2e-2
    assert diff.mean() <= 1e-4
    if sr == 16000:  # the empty mel filter #3 (PARITY.md)
        np.testing.assert_array_equal(ours[:, 3], np.float32(FLOOR_16K))
    else:
        assert (ours[:, 3] > FLOOR_16K + 1.0).any()


@pytest.mark.parametrize("name", NAMES)
def test_kaldi_fbank_tight_parity(ref, name):
    """Tighter than PARITY.md: the same float32 operations as torchaudio.

    What remains is float32 rounding that depends on the CPU's kernels: on an AMD EPYC the
    loud-region maximum was below 1e-4, on an Intel Xeon (AMX) it is 3.4e-4 for the wide-band
    chirp + noise case (mean 1.7e-5), with the FFT in float64 too. These bounds hold on both.
    """
    expected = ref[f"fbank__{name}"]
    diff = np.abs(_ours(ref, name) - expected)
    loud = expected > -5.0
    if loud.any():
        assert diff[loud].max() <= 5e-4
    assert diff.mean() <= 3e-5


def test_silence_is_log_floor_everywhere(ref):
    ours = _ours(ref, "silence_1s")
    np.testing.assert_array_equal(ours, np.float32(np.log(np.float32(LOG_FLOOR))))
    assert abs(float(ours[0, 0]) - FLOOR_16K) < 1e-6


def test_int16_scale_offsets_by_log_32768_squared(ref):
    f = _ours(ref, "speech_int16q_float")
    i = _ours(ref, "speech_int16q_int16scale")
    loud = f > -5.0
    offset = i[loud] - f[loud]
    assert abs(offset.mean() - 2 * np.log(32768.0)) < 1e-4
    assert np.abs(offset - 20.7944).max() < 1e-3


def test_tone_gap_has_floor_frames(ref):
    ours = _ours(ref, "tone_gap_tone_3s")
    np.testing.assert_array_equal(ours[100:198], np.float32(FLOOR_16K))
    assert ours[:98].max() > 0.0 and ours[200:].max() > 0.0


@pytest.mark.parametrize("name", ["chirp_noise_10s", "short_0p5s", "long_12s"])
def test_pad_crop_and_normalise_match_reference(ref, name):
    ours = pad_or_crop(torch.from_numpy(_ours(ref, name)), CFG.target_length)
    assert tuple(ours.shape) == (1024, 128)
    np.testing.assert_allclose(ours.numpy(), ref[f"fbank1024__{name}"], atol=2e-2)
    normed = normalize_fbank(ours, CFG).numpy()
    expected = ref[f"fbank1024norm__{name}"]
    diff = np.abs(normed - expected)
    assert diff[expected > 0.0].max() <= 1e-3  # fbank > -5.081
    assert diff.mean() <= 1e-4
    n = ref[f"fbank__{name}"].shape[0]
    if n < 1024:
        np.testing.assert_allclose(normed[n:], PAD_NORM, atol=1e-5)
        np.testing.assert_allclose(expected[n:], PAD_NORM, atol=1e-5)
    else:  # cropping keeps the first 1024 frames
        np.testing.assert_array_equal(ours.numpy(), _ours(ref, name)[:1024])


def test_fbank_features_end_to_end(ref):
    wave = torch.from_numpy(ref["wave__chirp_noise_10s"])
    out = fbank_features(wave, 16000, CFG)
    expected = ref["fbank1024norm__chirp_noise_10s"]
    assert out.dtype == torch.float32 and tuple(out.shape) == expected.shape
    assert np.abs(out.numpy() - expected).mean() <= 1e-4
    np.testing.assert_allclose(out[998:].numpy(), PAD_NORM, atol=1e-5)
    np.testing.assert_allclose(out[:998, 3].numpy(), (FLOOR_16K + 5.081) / 4.4849, atol=1e-5)


def test_batched_equals_per_item(ref):
    names = ["am_speechlike_3p3s", "speech_int16q_float", "speech_int16q_int16scale"]
    batch = torch.stack([torch.from_numpy(ref[f"wave__{n}"]) for n in names])  # (3, N)
    out = kaldi_fbank(batch, 16000)
    assert tuple(out.shape) == (3, 328, 128)
    for i, n in enumerate(names):
        torch.testing.assert_close(out[i], torch.from_numpy(_ours(ref, n)), rtol=5e-5, atol=5e-5)
    feats = fbank_features(batch, 16000, CFG)
    assert tuple(feats.shape) == (3, 1024, 128)
    torch.testing.assert_close(feats[1], fbank_features(batch[1], 16000, CFG), rtol=5e-5, atol=5e-5)


def test_batched_equals_per_item_across_cpu_chunks():
    g = torch.Generator().manual_seed(1)
    batch = torch.randn(15, 52800, generator=g) * 0.1  # 15 x 328 frames: more than one chunk
    out = kaldi_fbank(batch, 16000)
    single = torch.stack([kaldi_fbank(w, 16000) for w in batch])
    # Equal up to float32 reduction order (threaded sums may split differently).
    torch.testing.assert_close(out, single, rtol=5e-5, atol=5e-5)


def test_own_mean_is_removed_per_waveform():
    g = torch.Generator().manual_seed(2)
    w = torch.randn(2, 16000, generator=g) * 0.1
    shifted = w + torch.tensor([[0.3], [-0.2]])
    torch.testing.assert_close(
        kaldi_fbank(shifted, 16000), kaldi_fbank(w, 16000), atol=2e-3, rtol=0
    )


def test_numpy_input_and_window_sizes(ref):
    wave = ref["wave__short_0p5s"]
    np.testing.assert_array_equal(kaldi_fbank(wave, 16000).numpy(), _ours(ref, "short_0p5s"))
    assert kaldi_window_sizes(16000) == (400, 160, 512)
    assert kaldi_window_sizes(44100) == (1102, 441, 2048)
    assert num_fbank_frames(160000, 16000, CFG) == 998
    assert num_fbank_frames(88200, 44100, CFG) == 198
    assert num_fbank_frames(400, 16000, CFG) == 1
    assert num_fbank_frames(399, 16000, CFG) == 0


def test_mel_matrix_structure():
    m16 = kaldi_mel_matrix(128, 512, 16000)
    assert tuple(m16.shape) == (128, 257)
    assert (m16.sum(dim=1) == 0).nonzero().flatten().tolist() == [3]
    assert float(m16[:, -1].abs().sum()) == 0.0  # Nyquist bin
    assert float(m16[:, 0].abs().sum()) == 0.0  # DC is below 20 Hz
    assert float(m16.max()) <= 1.0 and float(m16.min()) >= 0.0
    m44 = kaldi_mel_matrix(128, 2048, 44100)
    assert tuple(m44.shape) == (128, 1025) and bool((m44.sum(dim=1) > 0).all())
    centres = mel_center_frequencies(128, 16000)
    assert 20.0 < centres[0] < centres[-1] < 8000.0
    with pytest.raises(ConfigError):
        kaldi_mel_matrix(3, 512, 16000)


def test_tone_peaks_at_nearest_mel_bin():
    sr = 16000
    t = np.arange(3 * sr) / sr
    wave = torch.from_numpy((0.3 * np.sin(2 * np.pi * 1000.0 * t)).astype(np.float32))
    fb = kaldi_fbank(wave, sr)  # (298, 128)
    expected_bin = int(np.abs(mel_center_frequencies(128, sr) - 1000.0).argmin())
    assert expected_bin == 43
    assert (fb.argmax(dim=1) == expected_bin).all()
    feats = fbank_features(wave, sr, CFG)
    assert tuple(feats.shape) == (1024, 128)
    np.testing.assert_allclose(feats[298:].numpy(), PAD_NORM, atol=1e-5)
    assert float(feats[297].max()) > 1.5  # real frames differ from the padding


def test_normalise_roundtrip():
    x = torch.linspace(-16, 9, 50).reshape(5, 10)
    torch.testing.assert_close(denormalize_fbank(normalize_fbank(x, CFG), CFG), x)
    assert abs(float(normalize_fbank(torch.tensor(0.0), CFG)) - PAD_NORM) < 1e-5
    assert abs(float(normalize_fbank(torch.tensor(-5.081), CFG))) < 1e-6


def test_invalid_inputs():
    with pytest.raises(ClipTooShort):
        kaldi_fbank(torch.zeros(399), 16000)
    with pytest.raises(ConfigError):
        kaldi_fbank(torch.zeros(16000, dtype=torch.int16), 16000)
    with pytest.raises(ConfigError):
        kaldi_fbank(torch.zeros(1, 2, 16000), 16000)
    bad = torch.zeros(16000)
    bad[5] = float("nan")
    with pytest.raises(ConfigError):
        kaldi_fbank(bad, 16000)
    with pytest.raises(ConfigError):
        kaldi_fbank(torch.zeros(16000), 0)
    with pytest.raises(ConfigError):
        pad_or_crop(torch.zeros(10), 1024)


# --- frames -------------------------------------------------------------------------------


def _test_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) % 256], axis=-1)
    noise = rng.integers(-20, 21, size=(h, w, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


@pytest.mark.parametrize(("h", "w"), [(720, 1280), (1280, 720)])
def test_resize_center_crop_matches_torchvision(h, w):
    frame = _test_image(h, w)
    ours = resize_center_crop(frame, 224)
    official = transforms.Compose([transforms.Resize(224), transforms.CenterCrop(224)])
    expected = np.asarray(official(Image.fromarray(frame)))
    assert ours.shape == (224, 224, 3) and ours.dtype == np.uint8
    np.testing.assert_array_equal(ours, expected)
    # Independently: long side int(224 * 1280 / 720) = 398, crop offset round(174 / 2) = 87.
    size = (398, 224) if w > h else (224, 398)
    box = (87, 0, 311, 224) if w > h else (0, 87, 224, 311)
    manual = Image.fromarray(frame).resize(size, Image.BILINEAR).crop(box)
    np.testing.assert_array_equal(ours, np.asarray(manual))


def test_center_crop_drops_the_sides():
    frame = np.full((720, 1280, 3), 128, np.uint8)
    frame[:, :200] = (255, 0, 0)  # 200 px -> 35 px after resize, inside the 87 px cut
    frame[:, -200:] = (0, 0, 255)
    out = resize_center_crop(frame, 224).astype(int)
    assert np.abs(out - 128).max() <= 1


def test_jpeg_roundtrip_is_pil_default_and_close():
    frame = resize_center_crop(_test_image(720, 1280, seed=3), 224)
    out = jpeg_roundtrip(frame)
    assert out.shape == frame.shape and out.dtype == np.uint8
    err = np.abs(out.astype(int) - frame.astype(int))
    assert 0.5 < err.mean() < 8.0
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG")  # what torchvision.utils.save_image does
    np.testing.assert_array_equal(out, np.asarray(Image.open(buf)))
    assert np.abs(jpeg_roundtrip(frame, quality=95).astype(int) - frame).mean() < err.mean()


def test_frames_to_tensor_known_colours():
    frames = np.zeros((2, 224, 224, 3), np.uint8)
    frames[0] = 255
    x = frames_to_tensor(frames, CFG)
    assert tuple(x.shape) == (2, 3, 224, 224) and x.dtype == torch.float32
    white = [(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225]
    black = [-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225]
    np.testing.assert_allclose(x[0, :, 100, 100].numpy(), white, atol=1e-5)
    np.testing.assert_allclose(x[1, :, 0, 0].numpy(), black, atol=1e-5)
    np.testing.assert_allclose(x[0, :, 0, 0].numpy(), [2.2489083, 2.4285715, 2.64], atol=1e-5)
    grey = np.full((224, 224, 3), (124, 116, 104), np.uint8)
    np.testing.assert_allclose(
        frames_to_tensor(grey, CFG)[:, 5, 5].numpy(), [0.0, 0.0, 0.0], atol=0.02
    )


def test_frames_to_tensor_resizes_and_tensor_to_frames_inverts():
    big = _test_image(720, 1280, seed=4)
    x = frames_to_tensor(big, CFG)
    assert tuple(x.shape) == (3, 224, 224)
    expected = resize_center_crop(big, 224)
    np.testing.assert_array_equal(tensor_to_frames(x, CFG), expected)
    stack = np.stack([expected, 255 - expected])
    np.testing.assert_array_equal(tensor_to_frames(frames_to_tensor(stack, CFG), CFG), stack)
    with pytest.raises(ConfigError):
        frames_to_tensor(np.zeros((224, 224, 3), np.float32), CFG)
    with pytest.raises(ConfigError):
        resize_center_crop(np.zeros((10, 10), np.uint8))
