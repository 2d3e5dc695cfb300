"""Model inputs from raw media: Kaldi log-mel filterbanks and ImageNet-normalised frames.

Audio follows the official ``AudiosetDataset._wav2fbank`` (OFFICIAL_CAVMAE.md §4.4 steps 2-4
and 8, pitfall 10): the waveform (float, [-1, 1]) loses its mean, then goes through Kaldi's
``fbank`` with the options the official code passes to ``torchaudio.compliance.kaldi.fbank``.
torchaudio is not a dependency: :func:`kaldi_fbank` is written in plain torch from the Kaldi
definition (``feature-window.cc``, ``mel-computations.cc``), in float32 and in torchaudio's
order of operations. It matches the torchaudio reference outputs in
``tests/fixtures/fbank_ref.npz`` (PARITY.md "fbank_ref.npz") to ~1e-6 at 16 kHz (mean ~4e-8),
to ~2e-4 at 44.1 kHz just above the log floor.
Every step is vectorised: frames via ``unfold``, one ``rfft``, one matmul with a cached mel
matrix, so batches and any device work alike.

Frames follow the official extraction (§4.2, §4.5): PIL bilinear resize of the shorter side,
centre crop, JPEG at quality 75, then ``ToTensor`` and the ImageNet normalisation.

Shapes: ``N`` samples, ``T`` fbank frames, ``F`` mel bins, ``K`` video frames, ``S`` image side.
"""

from __future__ import annotations

import functools
import io
import logging
import math
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as nnf
import torchvision.transforms.functional as tvf
from PIL import Image

from cavmae.config import FeatureConfig
from cavmae.errors import ClipTooShort, ConfigError

__all__ = [
    "KALDI_LOW_FREQ_HZ",
    "KALDI_PREEMPHASIS",
    "LOG_FLOOR",
    "kaldi_window_sizes",
    "kaldi_mel_matrix",
    "mel_center_frequencies",
    "kaldi_fbank",
    "num_fbank_frames",
    "pad_or_crop",
    "normalize_fbank",
    "denormalize_fbank",
    "fbank_features",
    "resize_center_crop",
    "jpeg_roundtrip",
    "frames_to_tensor",
    "tensor_to_frames",
]

logger = logging.getLogger(__name__)

_Array = TypeVar("_Array", torch.Tensor, np.ndarray)
#: Default settings (frozen, so sharing one instance as a default argument is safe).
_DEFAULT_CFG = FeatureConfig()

#: Kaldi defaults that the official call leaves untouched (torchaudio ``fbank`` signature).
KALDI_LOW_FREQ_HZ = 20.0
KALDI_PREEMPHASIS = 0.97
#: ``log(max(energy, eps))`` with float32 eps: silent bins read log(1.1920929e-07) = -15.942385.
LOG_FLOOR = float(torch.finfo(torch.float32).eps)


def _mel(hz: float) -> float:
    """Kaldi/HTK mel scale 1127 ln(1 + f/700)."""
    return 1127.0 * math.log(1.0 + hz / 700.0)


def _mel_tensor(hz: torch.Tensor) -> torch.Tensor:
    """:func:`_mel` elementwise."""
    return 1127.0 * torch.log(1.0 + hz / 700.0)  # Parity: log(1 + x) as Kaldi, not log1p


def kaldi_window_sizes(
    sample_rate: int, frame_length_ms: float = 25.0, frame_shift_ms: float = 10.0
) -> tuple[int, int, int]:
    """Window, shift and FFT size in samples, rounded as Kaldi/torchaudio do.

    Args:
        sample_rate: Sampling rate in Hz.
        frame_length_ms: Analysis window in milliseconds.
        frame_shift_ms: Hop in milliseconds.

    Returns:
        ``(win, shift, n_fft)``, e.g. ``(400, 160, 512)`` at 16 kHz and ``(1102, 441, 2048)``
        at 44.1 kHz; ``n_fft`` is the next power of two (``round_to_power_of_two``).

    Raises:
        ConfigError: If a value is not positive or the window is shorter than 2 samples.
    """
    if sample_rate <= 0 or frame_length_ms <= 0 or frame_shift_ms <= 0:
        raise ConfigError(
            f"sample_rate ({sample_rate}), frame_length_ms ({frame_length_ms}) and "
            f"frame_shift_ms ({frame_shift_ms}) must be positive"
        )
    # Parity: torchaudio computes int(sr * ms * 0.001); at 44.1 kHz 1102.5 -> 1102.
    win = int(sample_rate * frame_length_ms * 0.001)
    shift = int(sample_rate * frame_shift_ms * 0.001)
    if win < 2 or shift < 1:
        raise ConfigError(
            f"a {frame_length_ms} ms window with a {frame_shift_ms} ms shift at {sample_rate} Hz "
            f"gives {win} / {shift} samples; need a window of at least 2 samples"
        )
    n_fft = 1 << (win - 1).bit_length()
    return win, shift, n_fft


def kaldi_mel_matrix(
    num_mel_bins: int,
    n_fft: int,
    sample_rate: int,
    low_freq: float = KALDI_LOW_FREQ_HZ,
    high_freq: float = 0.0,
) -> torch.Tensor:
    """Kaldi triangular mel filterbank over the rFFT bins.

    Filters are triangles in the mel domain between equally spaced mel points from
    ``low_freq`` to ``high_freq`` (``<= 0`` means Nyquist plus that offset, as in Kaldi). They are
    evaluated at FFT bins ``0 .. n_fft/2 - 1``; the Nyquist bin gets weight zero. Filters that
    contain no FFT bin stay all-zero (filter 3 at 16 kHz / 512 points / 128 bins).

    Args:
        num_mel_bins: Number of filters ``F`` (Kaldi requires more than 3).
        n_fft: FFT size (even).
        sample_rate: Sampling rate in Hz.
        low_freq: Lower edge in Hz.
        high_freq: Upper edge in Hz; ``<= 0`` is relative to Nyquist.

    Returns:
        float32 tensor of shape (F, n_fft // 2 + 1) on the CPU (a fresh copy).

    Raises:
        ConfigError: If the bin count or the frequency range is invalid.
    """
    return _mel_matrix_cached(num_mel_bins, n_fft, sample_rate, low_freq, high_freq).clone()


@functools.lru_cache(maxsize=16)
def _mel_matrix_cached(
    num_mel_bins: int, n_fft: int, sample_rate: int, low_freq: float, high_freq: float
) -> torch.Tensor:
    """(F, n_fft//2 + 1) float32 filterbank; see :func:`kaldi_mel_matrix`."""
    nyquist = 0.5 * sample_rate
    high = high_freq + nyquist if high_freq <= 0.0 else high_freq
    if num_mel_bins <= 3 or n_fft % 2 or not 0.0 <= low_freq < high <= nyquist:
        raise ConfigError(
            f"invalid mel filterbank: num_mel_bins={num_mel_bins} (need > 3), n_fft={n_fft} "
            f"(need even), range {low_freq}..{high} Hz (need 0 <= low < high <= {nyquist})"
        )
    mel_low, mel_high = _mel(low_freq), _mel(high)
    delta = (mel_high - mel_low) / (num_mel_bins + 1)
    # Parity: float32 arithmetic in torchaudio's order, so that edge bins fall the same way.
    b = torch.arange(num_mel_bins, dtype=torch.float32).unsqueeze(1)  # (F, 1)
    left = mel_low + b * delta
    center = mel_low + (b + 1.0) * delta
    right = mel_low + (b + 2.0) * delta
    fft_hz = (sample_rate / n_fft) * torch.arange(n_fft // 2, dtype=torch.float32)
    mel = _mel_tensor(fft_hz).unsqueeze(0)  # (1, n_fft/2)
    up = (mel - left) / (center - left)
    down = (right - mel) / (right - center)
    banks = torch.clamp(torch.minimum(up, down), min=0.0)  # (F, n_fft/2)
    return nnf.pad(banks, (0, 1))  # (F, n_fft/2 + 1): Nyquist bin weight 0


def mel_center_frequencies(
    num_mel_bins: int, sample_rate: int, low_freq: float = KALDI_LOW_FREQ_HZ, high_freq: float = 0.0
) -> np.ndarray:
    """Centre frequency in Hz of each Kaldi mel filter, shape (F,) float64."""
    high = high_freq + 0.5 * sample_rate if high_freq <= 0.0 else high_freq
    mels = np.linspace(_mel(low_freq), _mel(high), num_mel_bins + 2)[1:-1]
    return 700.0 * (np.exp(mels / 1127.0) - 1.0)


@functools.lru_cache(maxsize=32)
def _operators(
    win: int, n_fft: int, num_mel_bins: int, sample_rate: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(win,) symmetric Hann window and (n_fft/2+1, F) mel matrix on ``device``."""
    # Parity: 'hanning' in Kaldi is the symmetric Hann window (periodic=False).
    window = torch.hann_window(win, periodic=False, dtype=torch.float32, device=device)
    mel_t = _mel_matrix_cached(num_mel_bins, n_fft, sample_rate, KALDI_LOW_FREQ_HZ, 0.0)
    return window, mel_t.t().contiguous().to(device)


#: On CPU, batched fbanks run over chunks of about this many frames (cache-sized buffers).
_CPU_CHUNK_FRAMES = 4096


def _log_mel(
    x: torch.Tensor, win: int, shift: int, n_fft: int, window: torch.Tensor, mel_t: torch.Tensor
) -> torch.Tensor:
    """Kaldi frame processing of de-meaned waveforms (B, N) -> log-mel (B, T, F)."""
    frames = x.unfold(-1, win, shift)  # (B, T, win), snip_edges framing (a view)
    frames = frames - frames.mean(dim=-1, keepdim=True)  # remove_dc_offset per frame
    # Pre-emphasis y[k] = x[k] - 0.97 x[k-1] with x[-1] := x[0], then the window, written
    # straight into a zero-padded FFT buffer (round_to_power_of_two).
    buf = frames.new_zeros(frames.shape[:-1] + (n_fft,))  # (B, T, n_fft)
    torch.mul(frames[..., :1], (1.0 - KALDI_PREEMPHASIS) * window[:1], out=buf[..., :1])
    # Parity: multiply, then subtract (a fused add-with-alpha rounds differently near the floor).
    emph = frames[..., 1:] - KALDI_PREEMPHASIS * frames[..., :-1]  # (B, T, win - 1)
    torch.mul(emph, window[1:], out=buf[..., 1:win])  # (B, T, win - 1)
    spec = torch.fft.rfft(buf)  # (B, T, n_fft/2 + 1)
    power = spec.real.square() + spec.imag.square()  # (B, T, n_fft/2 + 1)
    mel = torch.matmul(power, mel_t)  # (B, T, F)
    return mel.clamp_min_(LOG_FLOOR).log_()  # (B, T, F)


def kaldi_fbank(
    waveform: torch.Tensor | np.ndarray,
    sample_rate: int,
    num_mel_bins: int = 128,
    frame_length_ms: float = 25.0,
    frame_shift_ms: float = 10.0,
) -> torch.Tensor:
    """Log-mel filterbank of shape (T, F), Kaldi-compatible, as the official ``_wav2fbank``.

    Subtracts each waveform's own mean, then applies Kaldi ``fbank`` with the official options:
    snip_edges framing, per-frame DC removal, pre-emphasis 0.97 (first sample replicated),
    symmetric Hann window, zero-padding to a power-of-two FFT, power spectrum, Kaldi mel
    filters 20 Hz..Nyquist, natural log with a float32-eps floor. No dither.

    Args:
        waveform: Float samples in [-1, 1], shape (N,) or (B, N); any device. Computed in float32.
        sample_rate: Sampling rate in Hz (the official loader passes the file's own rate).
        num_mel_bins: Number of mel filters ``F``.
        frame_length_ms: Analysis window in milliseconds.
        frame_shift_ms: Hop in milliseconds.

    Returns:
        float32 tensor (T, F) or (B, T, F) on the waveform's device, with
        ``T = 1 + (N - win) // shift`` (998 for 10 s at 16 kHz).

    Raises:
        ClipTooShort: If the waveform is shorter than one analysis window.
        ConfigError: If the waveform is not a 1-D/2-D float array of finite values, or an
            option is invalid.
    """
    x = torch.as_tensor(waveform)
    if not x.is_floating_point():
        raise ConfigError(
            f"kaldi_fbank expects float samples in [-1, 1], got dtype {x.dtype}; "
            "convert integer PCM first (e.g. int16 / 32768)"
        )
    if x.ndim not in (1, 2):
        raise ConfigError(f"waveform must have shape (N,) or (B, N), got {tuple(x.shape)}")
    win, shift, n_fft = kaldi_window_sizes(sample_rate, frame_length_ms, frame_shift_ms)
    n = x.shape[-1]
    if n < win:
        raise ClipTooShort(
            f"audio has {n} samples ({n / sample_rate:.4f} s at {sample_rate} Hz) but one "
            f"{frame_length_ms} ms analysis window needs {win}; use a longer clip"
        )
    x = x.to(torch.float32)
    window, mel_t = _operators(win, n_fft, num_mel_bins, sample_rate, x.device)

    batched = x.ndim == 2
    x = x if batched else x.unsqueeze(0)  # (B, N)
    mean = x.mean(dim=-1, keepdim=True)  # (B, 1)
    if not bool(torch.isfinite(mean).all()):  # any NaN/inf sample makes the mean non-finite
        raise ConfigError("waveform contains NaN or infinite samples; check the decoded audio")
    x = x - mean  # Parity: the official loader de-means the whole waveform first (§4.4 step 2)
    rows = x.shape[0]
    if x.device.type == "cpu":  # a few clips at a time stay in cache: ~1.4x faster on CPU
        t = 1 + (n - win) // shift
        rows = max(1, _CPU_CHUNK_FRAMES // t)
    parts = [
        _log_mel(x[i : i + rows], win, shift, n_fft, window, mel_t)
        for i in range(0, x.shape[0], rows)
    ]
    out = parts[0] if len(parts) == 1 else torch.cat(parts)  # (B, T, F)
    return out if batched else out.squeeze(0)


def num_fbank_frames(num_samples: int, sample_rate: int, cfg: FeatureConfig = _DEFAULT_CFG) -> int:
    """Number of fbank frames ``1 + (N - win) // shift`` (0 when ``N < win``).

    Args:
        num_samples: Waveform length ``N``.
        sample_rate: Sampling rate in Hz.
        cfg: Frame length and shift.

    Returns:
        ``T``, e.g. 998 for 160000 samples at 16 kHz.
    """
    win, shift, _ = kaldi_window_sizes(sample_rate, cfg.frame_length_ms, cfg.frame_shift_ms)
    return 0 if num_samples < win else 1 + (num_samples - win) // shift


def pad_or_crop(fbank: torch.Tensor, target_length: int) -> torch.Tensor:
    """Zero-pad at the end (in the log domain) or keep the first ``target_length`` frames.

    Args:
        fbank: Log-mel tensor (T, F) or (B, T, F).
        target_length: Frames to return, e.g. 1024.

    Returns:
        Tensor (target_length, F) or (B, target_length, F).

    Raises:
        ConfigError: On a non-positive target length or a tensor that is not 2-D/3-D.
    """
    if target_length < 1:
        raise ConfigError(f"target_length must be positive, got {target_length}")
    if fbank.ndim not in (2, 3):
        raise ConfigError(f"fbank must have shape (T, F) or (B, T, F), got {tuple(fbank.shape)}")
    t = fbank.shape[-2]
    if t >= target_length:
        return fbank[..., :target_length, :]
    # Parity: ZeroPad2d before normalisation, so padded rows normalise to +1.133 (§4.4 step 4).
    return nnf.pad(fbank, (0, 0, 0, target_length - t))


def normalize_fbank(x: _Array, cfg: FeatureConfig = _DEFAULT_CFG) -> _Array:
    """``(x - mean) / std`` with the dataset statistics (std not doubled; §4.4 step 8)."""
    return (x - cfg.fbank_mean) / cfg.fbank_std


def denormalize_fbank(x: _Array, cfg: FeatureConfig = _DEFAULT_CFG) -> _Array:
    """Inverse of :func:`normalize_fbank`: ``x * std + mean`` (back to natural-log mel power)."""
    return x * cfg.fbank_std + cfg.fbank_mean


def fbank_features(
    waveform: torch.Tensor | np.ndarray, sample_rate: int, cfg: FeatureConfig = _DEFAULT_CFG
) -> torch.Tensor:
    """Model-ready audio input: Kaldi fbank, padded or cropped, normalised.

    Args:
        waveform: Float samples in [-1, 1], shape (N,) or (B, N).
        sample_rate: Sampling rate in Hz; the statistics in ``cfg`` assume ``cfg.sample_rate``.
        cfg: Feature constants (mel bins, target length, statistics, framing).

    Returns:
        float32 tensor (target_length, F) or (B, target_length, F).

    Raises:
        ClipTooShort: If the waveform is shorter than one analysis window.
        ConfigError: On a malformed waveform or invalid settings.
    """
    if sample_rate != cfg.sample_rate:
        logger.warning(
            "fbank at %d Hz but the normalisation statistics assume %d Hz; resample the audio "
            "for model inputs that match training",
            sample_rate,
            cfg.sample_rate,
        )
    fb = kaldi_fbank(
        waveform, sample_rate, cfg.num_mel_bins, cfg.frame_length_ms, cfg.frame_shift_ms
    )  # (B?, T, F)
    return normalize_fbank(pad_or_crop(fb, cfg.target_length), cfg)


# --- frames -------------------------------------------------------------------------------


def _check_frame(frame: np.ndarray, what: str = "frame") -> None:
    """Raise ConfigError unless ``frame`` is an (H, W, 3) uint8 array."""
    if (
        not isinstance(frame, np.ndarray)
        or frame.dtype != np.uint8
        or frame.ndim != 3
        or (frame.shape[-1] != 3)
    ):
        desc = f"{frame.dtype} {frame.shape}" if isinstance(frame, np.ndarray) else type(frame)
        raise ConfigError(f"{what} must be an (H, W, 3) uint8 RGB array, got {desc}")


def resize_center_crop(frame: np.ndarray, size: int = 224) -> np.ndarray:
    """Shorter side to ``size`` (PIL bilinear, antialiased), then centre crop to a square.

    Identical to the official extraction's torchvision ``Resize(size)`` + ``CenterCrop(size)``
    on a PIL image (§4.2): the long side becomes ``int(size * long / short)`` and the crop
    offset is ``round((L - size) / 2)``.

    Args:
        frame: RGB image (H, W, 3) uint8.
        size: Output side ``S``.

    Returns:
        (S, S, 3) uint8 array.

    Raises:
        ConfigError: If ``frame`` is not an (H, W, 3) uint8 array.
    """
    _check_frame(frame)
    img = tvf.resize(Image.fromarray(frame), size)  # default: BILINEAR
    img = tvf.center_crop(img, size)
    return np.asarray(img, dtype=np.uint8)


def jpeg_roundtrip(frame: np.ndarray, quality: int = 75) -> np.ndarray:
    """Encode as JPEG with PIL and decode again, as the official frames were stored.

    ``torchvision.utils.save_image`` writes through ``PIL.Image.save`` with default settings:
    quality 75 and 4:2:0 chroma subsampling.

    Args:
        frame: RGB image (H, W, 3) uint8.
        quality: JPEG quality (1..100; PIL's default and the official value is 75).

    Returns:
        (H, W, 3) uint8 array after the JPEG round trip.

    Raises:
        ConfigError: On a malformed frame or a quality outside 1..100.
    """
    _check_frame(frame)
    if not 1 <= quality <= 100:
        raise ConfigError(f"JPEG quality must be in 1..100, got {quality}")
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8)


def frames_to_tensor(frames: np.ndarray, cfg: FeatureConfig = _DEFAULT_CFG) -> torch.Tensor:
    """ImageNet-normalised float tensors from RGB frames (``ToTensor`` + ``Normalize``).

    Frames that are not ``S x S`` go through :func:`resize_center_crop` first.

    Args:
        frames: (K, H, W, 3) or (H, W, 3) uint8 RGB.
        cfg: Image size and statistics.

    Returns:
        float32 tensor (K, 3, S, S) or (3, S, S).

    Raises:
        ConfigError: If ``frames`` is not a non-empty uint8 RGB array of one of those shapes.
    """
    if not isinstance(frames, np.ndarray) or frames.ndim not in (3, 4) or 0 in frames.shape:
        desc = getattr(frames, "shape", type(frames))
        raise ConfigError(f"frames must be (K, H, W, 3) or (H, W, 3) uint8, got {desc}")
    single = frames.ndim == 3
    stack = frames[None] if single else frames  # (K, H, W, 3)
    s = cfg.img_size
    if stack.shape[1:3] != (s, s):
        stack = np.stack([resize_center_crop(f, s) for f in stack])  # (K, S, S, 3)
    else:
        _check_frame(stack[0], "frames")
    x = torch.from_numpy(np.ascontiguousarray(stack)).permute(0, 3, 1, 2)  # (K, 3, S, S) uint8
    x = x.to(torch.float32).div(255.0)
    mean = torch.tensor(cfg.image_mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(cfg.image_std, dtype=torch.float32).view(1, 3, 1, 1)
    x = (x - mean) / std  # (K, 3, S, S)
    return x[0] if single else x


def tensor_to_frames(x: torch.Tensor, cfg: FeatureConfig = _DEFAULT_CFG) -> np.ndarray:
    """Inverse of :func:`frames_to_tensor` for display: de-normalise, scale, round, clip.

    Args:
        x: Normalised images (K, 3, S, S) or (3, S, S).
        cfg: Image statistics.

    Returns:
        uint8 array (K, S, S, 3) or (S, S, 3).

    Raises:
        ConfigError: On a tensor that is not (K, 3, S, S) or (3, S, S).
    """
    if x.ndim not in (3, 4) or x.shape[-3] != 3:
        raise ConfigError(f"images must be (K, 3, S, S) or (3, S, S), got {tuple(x.shape)}")
    mean = torch.tensor(cfg.image_mean, dtype=torch.float32, device=x.device).view(3, 1, 1)
    std = torch.tensor(cfg.image_std, dtype=torch.float32, device=x.device).view(3, 1, 1)
    img = (x.detach().to(torch.float32) * std + mean) * 255.0  # (..., 3, S, S)
    img = img.round().clamp(0, 255).to(torch.uint8).movedim(-3, -1)  # (..., S, S, 3)
    return img.cpu().numpy()
