"""Training-time augmentations of CAV-MAE samples, each driven by an explicit ``torch.Generator``.

Follows the official ``AudiosetDataset.__getitem__`` (OFFICIAL_CAVMAE.md §4.4 steps 1, 6, 7, 9;
pitfall 13): time-frequency noise plus a circular time roll (pretraining and fine-tuning),
SpecAugment with one frequency and one time band filled with 0 in the raw log-mel domain,
mixup with ``lambda ~ Beta(10, 10)``, and label smoothing. The official code draws from Python's
``random``, NumPy and torch at once (STYLE.md anti-pattern 20); here every draw comes from one
generator that the dataset seeds from ``(seed, epoch, index)`` (:func:`sample_generator`), so a
sample's augmentation does not depend on the worker or rank that loads it.

Domains: ``raw`` means natural-log mel power straight out of ``kaldi_fbank`` and
``pad_or_crop`` (padding is 0); ``normalised`` means ``(raw - mean) / std``. SpecAugment and the
fbank mixup work on raw fbanks, the noise and roll on normalised ones, as in the official order.

Deviation: the official mixup mixes *waveforms* before the fbank. Prepared datasets store
fbanks only, so :func:`mix_fbank` mixes in the linear mel-power domain instead, with the
weights that a waveform mix gives in expectation (``lambda**2`` and ``(1 - lambda)**2``: the
power of ``lambda*w1 + (1 - lambda)*w2`` when the two sounds are uncorrelated). The datasets that
have waveforms (the official JSON format) mix waveforms exactly as the official code does.

Shapes: ``T`` fbank frames, ``F`` mel bins, ``C`` classes, ``S`` image side.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from cavmae.errors import ConfigError

__all__ = [
    "AugmentConfig",
    "MixupWeighting",
    "sample_generator",
    "add_noise_and_roll",
    "spec_augment",
    "draw_mixup",
    "mix_fbank",
    "mix_images",
    "smooth_labels",
]

MixupWeighting = Literal["waveform", "power"]

#: Kaldi's log floor: ``log(float32 eps)``; the fbank of silence.
_LOG_FLOOR = math.log(float(torch.finfo(torch.float32).eps))


@dataclass(frozen=True)
class AugmentConfig:
    """Which augmentations a training dataset applies (the official ``audio_conf`` keys).

    Attributes:
        noise: Add uniform noise of amplitude ``U[0,1)/10`` to the normalised fbank and roll it
            circularly in time by ``randint(-T, T)`` (official ``noise``; on in every official
            training recipe, pretraining included).
        freqm: SpecAugment frequency-mask parameter (band width ``< freqm``); 0 disables.
        timem: SpecAugment time-mask parameter (band width ``< timem``); 0 disables.
        mixup: Probability that a sample is mixed with a uniformly drawn partner.
        label_smooth: Label smoothing ``s``: positives ``1 - s``, negatives ``s / C``.
        mixup_alpha: Mixup ``lambda ~ Beta(alpha, alpha)`` (official 10).
        mixup_weighting: How prepared fbanks are mixed: ``"waveform"`` weights the mel powers by
            ``lambda**2`` / ``(1-lambda)**2`` (the expected power of a waveform mix, closest to
            the official waveform mixup); ``"power"`` by ``lambda`` / ``1-lambda``.
        window_prob: Probability that a sample's audio is cut to ``window_s`` seconds centred
            on its frame and padded with log-domain zeros, exactly the input that the app's
            temporal similarity and ``cavmae.media.iter_windows`` give the model for a short
            window; such a sample is not rolled in time. Not official (0 in every official
            recipe); it teaches the audio-visual match *when* a sound plays.
        window_s: Length of that window in seconds.
        temporal_pair: Not official. A windowed sample also carries a second view of the same
            clip: another frame, at least ``window_s`` away in time, with the audio window
            centred on it (``fbank_pair``, ``image_pair``; ``pair`` says whether the sample has
            one). The pretraining objective appends these views to the batch, so each view's
            contrastive negatives include its own clip at another time: the only negative
            that asks the embeddings *when* a sound plays, not only which clip it is. Needs
            ``window_prob > 0`` and no mixup.
    """

    noise: bool = False
    freqm: int = 0
    timem: int = 0
    mixup: float = 0.0
    label_smooth: float = 0.0
    mixup_alpha: float = 10.0
    mixup_weighting: MixupWeighting = "waveform"
    window_prob: float = 0.0
    window_s: float = 2.0
    temporal_pair: bool = False

    def __post_init__(self) -> None:
        if self.freqm < 0 or self.timem < 0:
            raise ConfigError(f"freqm ({self.freqm}) and timem ({self.timem}) must be >= 0")
        if not 0.0 <= self.mixup <= 1.0:
            raise ConfigError(f"mixup is a probability in [0, 1], got {self.mixup}")
        if not 0.0 <= self.label_smooth < 1.0:
            raise ConfigError(f"label_smooth must be in [0, 1), got {self.label_smooth}")
        if self.mixup_alpha <= 0:
            raise ConfigError(f"mixup_alpha must be positive, got {self.mixup_alpha}")
        if not 0.0 <= self.window_prob <= 1.0:
            raise ConfigError(f"window_prob is a probability in [0, 1], got {self.window_prob}")
        if self.window_s <= 0:
            raise ConfigError(f"window_s must be positive, got {self.window_s}")
        if self.temporal_pair and (self.window_prob <= 0 or self.mixup > 0):
            raise ConfigError(
                "temporal_pair pairs windowed samples: it needs window_prob > 0 and mixup 0, got "
                f"window_prob={self.window_prob}, mixup={self.mixup}"
            )
        if self.mixup_weighting not in ("waveform", "power"):
            raise ConfigError(
                f"mixup_weighting must be 'waveform' or 'power', got {self.mixup_weighting!r}"
            )

    @classmethod
    def pretrain(cls, **changes: Any) -> AugmentConfig:
        """Official pretraining: noise and roll only (§5.2: freqm/timem 0, mixup 0)."""
        return cls(noise=True, **changes)

    @classmethod
    def finetune(cls, **changes: Any) -> AugmentConfig:
        """Official fine-tuning (§5.3): noise, freqm 48, timem 192, mixup 0.5, smoothing 0.1."""
        kw: dict[str, Any] = dict(noise=True, freqm=48, timem=192, mixup=0.5, label_smooth=0.1)
        kw.update(changes)
        return cls(**kw)

    @property
    def is_identity(self) -> bool:
        """True when no augmentation is enabled."""
        return not (
            self.noise or self.freqm or self.timem or self.mixup or self.label_smooth
            or self.window_prob
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AugmentConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown augment config keys: {unknown}")
        return cls(**d)


# --- random numbers ---------------------------------------------------------------------------


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A CPU generator that depends only on ``(seed, epoch, index)``.

    Seeding per sample (rather than per worker) makes augmentations identical whatever the
    number of DataLoader workers, processes or the resume point.

    Args:
        seed: Base seed of the run.
        epoch: Epoch number (changes the augmentation every epoch).
        index: Sample index in the dataset.

    Returns:
        A seeded ``torch.Generator``.
    """
    if min(seed, epoch, index) < 0:
        raise ConfigError(f"seed, epoch and index must be >= 0, got {seed}, {epoch}, {index}")
    state = np.random.SeedSequence([seed, epoch, index]).generate_state(2, dtype=np.uint32)
    g = torch.Generator()
    g.manual_seed(int(state[0]) << 31 ^ int(state[1]))
    return g


def _uniform(generator: torch.Generator | None) -> float:
    """One U[0, 1) draw."""
    return float(torch.rand((), generator=generator))


# --- fbank augmentations ----------------------------------------------------------------------


def add_noise_and_roll(
    fbank: torch.Tensor, generator: torch.Generator | None = None, roll: bool = True
) -> torch.Tensor:
    """Official noise augmentation: ``x + rand(T, F) * r / 10`` then a circular time roll.

    ``r ~ U[0, 1)`` once per sample; the shift is ``randint(-T, T)`` (``-T`` inclusive, ``T``
    exclusive), so padded frames move too (§4.4 step 9). The image is not shifted.

    Args:
        fbank: Normalised fbank (T, F).
        generator: Random source; draws ``r``, the (T, F) noise, then the shift.
        roll: False skips the roll (the shift is still drawn, so later draws do not change).

    Returns:
        New tensor (T, F).
    """
    t = fbank.shape[0]
    r = _uniform(generator)
    noise = torch.rand(fbank.shape, generator=generator, dtype=torch.float32)  # (T, F)
    out = fbank + noise.to(fbank.dtype) * (r / 10.0)  # (T, F)
    shift = int(torch.randint(-t, t, (), generator=generator))
    return torch.roll(out, shifts=shift, dims=0) if roll else out  # (T, F)


def audio_window(
    fbank: torch.Tensor, num_real: int, centre_s: float, window_s: float, cfg: Any
) -> torch.Tensor:
    """The raw fbank of a ``window_s``-second window centred on ``centre_s``, as a window's input.

    The window is moved inside the clip's real frames where it would stick out. Its frames are
    the ones the Kaldi fbank of the window's own samples gives (``1 + (n - frame_length) //
    frame_shift`` for n samples), placed first and followed by log-domain zeros, as
    :func:`cavmae.media.iter_windows` pads a short window.

    Args:
        fbank: Raw (unnormalised) log-mel (T, F), zero-padded after ``num_real`` frames.
        num_real: Number of real frames of the clip.
        centre_s: Window centre in seconds (e.g. the time of the sample's frame).
        window_s: Window length in seconds.
        cfg: The ``cavmae.config.FeatureConfig`` of the fbank (frame length and shift).

    Returns:
        New raw fbank (T, F).
    """
    shift = cfg.frame_shift_ms / 1000.0
    samples = int(round(window_s * cfg.sample_rate))
    frame_len = int(round(cfg.frame_length_ms * cfg.sample_rate / 1000.0))
    n = max(1, min(1 + (samples - frame_len) // int(round(shift * cfg.sample_rate)), num_real))
    start = int(round((centre_s - window_s / 2) / shift))
    start = max(0, min(start, num_real - n))
    out = torch.zeros_like(fbank)  # (T, F): log-domain zeros, the official padding
    out[:n] = fbank[start : start + n]
    return out


def _mask_band(size: int, param: int, generator: torch.Generator | None) -> tuple[int, int]:
    """torchaudio 0.12 ``mask_along_axis``: [start, end) of one band of width < ``param``."""
    value = _uniform(generator) * param
    start = int(_uniform(generator) * (size - value))  # floor for non-negative values
    return start, start + int(value)


def spec_augment(
    fbank: torch.Tensor,
    freqm: int,
    timem: int,
    generator: torch.Generator | None = None,
    fill: float = 0.0,
) -> torch.Tensor:
    """One frequency band then one time band set to ``fill`` (official SpecAugment, §4.4 step 7).

    Each band has width ``floor(U * param)`` and starts at ``floor(U' * (size - U * param))``
    (torchaudio 0.12 ``FrequencyMasking`` / ``TimeMasking``). Apply to the raw log-mel fbank:
    the official fill 0 happens before normalisation, so masked cells normalise to
    ``-mean / std`` (about +1.133).

    Args:
        fbank: Raw log-mel fbank (T, F).
        freqm: Frequency-mask parameter (0 disables the frequency band; no draws then).
        timem: Time-mask parameter (0 disables the time band; no draws then).
        generator: Random source.
        fill: Value written into the bands.

    Returns:
        New tensor (T, F).
    """
    out = fbank.clone()  # (T, F)
    t, f = out.shape
    if freqm > 0:
        lo, hi = _mask_band(f, freqm, generator)
        out[:, lo:hi] = fill
    if timem > 0:
        lo, hi = _mask_band(t, timem, generator)
        out[lo:hi, :] = fill
    return out


# --- mixup ------------------------------------------------------------------------------------


def draw_mixup(
    probability: float,
    num_items: int,
    generator: torch.Generator | None = None,
    alpha: float = 10.0,
) -> tuple[int, float] | None:
    """Decide whether to mix, and with which partner and lambda (§4.4 step 1).

    Draw order: U[0,1) for the decision; if mixing, the partner ``randint(0, num_items)`` (uniform,
    independent of any sampler, as official) and then ``lambda ~ Beta(alpha, alpha)``. torch's Beta
    sampler takes no generator, so lambda comes from a NumPy generator seeded by one draw of
    ``generator``.

    Args:
        probability: Mixup probability (0 never draws anything else).
        num_items: Dataset size to pick the partner from.
        generator: Random source.
        alpha: Beta parameter.

    Returns:
        ``(partner_index, lambda)`` or ``None`` when the sample is not mixed.
    """
    if probability <= 0.0 or _uniform(generator) >= probability:
        return None
    partner = int(torch.randint(0, num_items, (), generator=generator))
    np_seed = int(torch.randint(0, 2**62, (), generator=generator))
    lam = float(np.random.default_rng(np_seed).beta(alpha, alpha))
    return partner, lam


def mix_fbank(
    fbank1: torch.Tensor,
    fbank2: torch.Tensor,
    lam: float,
    *,
    len1: int | None = None,
    len2: int | None = None,
    weighting: MixupWeighting = "waveform",
) -> torch.Tensor:
    """Mix two raw log-mel fbanks in the linear mel-power domain.

    ``log(w1 * exp(f1) + w2 * exp(f2))`` floored at Kaldi's ``log(eps)``, with ``(w1, w2)`` =
    ``(lam**2, (1-lam)**2)`` for ``"waveform"`` or ``(lam, 1-lam)`` for ``"power"``. Like the
    official waveform mix, the result has the first clip's length: frames at or after ``len1``
    stay padding (0), and the partner is silent after ``len2`` (its waveform was zero-padded).

    Args:
        fbank1: Raw fbank of the sample (T, F); padding rows are 0.
        fbank2: Raw fbank of the partner (T, F).
        lam: Mixing weight of the sample, in [0, 1].
        len1: Real (unpadded) frames of ``fbank1``; ``None`` means T.
        len2: Real frames of ``fbank2``; ``None`` means T.
        weighting: ``"waveform"`` or ``"power"`` (see :class:`AugmentConfig`).

    Returns:
        Raw mixed fbank (T, F), float32.
    """
    if fbank1.shape != fbank2.shape:
        raise ConfigError(
            f"cannot mix fbanks of shapes {tuple(fbank1.shape)} and {tuple(fbank2.shape)}"
        )
    if not 0.0 <= lam <= 1.0:
        raise ConfigError(f"mixup lambda must be in [0, 1], got {lam}")
    t = fbank1.shape[0]
    len1 = t if len1 is None else min(len1, t)
    len2 = t if len2 is None else min(len2, t)
    if weighting == "waveform":
        w1, w2 = lam * lam, (1.0 - lam) ** 2
    elif weighting == "power":
        w1, w2 = lam, 1.0 - lam
    else:
        raise ConfigError(f"mixup weighting must be 'waveform' or 'power', got {weighting!r}")
    f1 = fbank1.to(torch.float32)
    f2 = fbank2.to(torch.float32).clone()  # (T, F)
    f2[len2:] = -math.inf  # the partner's padding is silence (zero power), not log-power 0
    log_w1 = math.log(w1) if w1 > 0 else -math.inf
    log_w2 = math.log(w2) if w2 > 0 else -math.inf
    mixed = torch.logaddexp(f1 + log_w1, f2 + log_w2).clamp_min(_LOG_FLOOR)  # (T, F)
    mixed[len1:] = 0.0  # Parity: pad_or_crop pads the mixed clip with log-domain zeros
    return mixed


def mix_images(image1: torch.Tensor, image2: torch.Tensor, lam: float) -> torch.Tensor:
    """``lam * image1 + (1 - lam) * image2`` on normalised pixels (§4.5 "Image mixup").

    Args:
        image1: Normalised image (3, S, S) of the sample.
        image2: Normalised image (3, S, S) of the partner.
        lam: Weight of the sample.

    Returns:
        Mixed image (3, S, S).
    """
    return lam * image1 + (1.0 - lam) * image2


# --- labels -----------------------------------------------------------------------------------


def smooth_labels(
    labels: torch.Tensor,
    smooth: float,
    *,
    partner: torch.Tensor | None = None,
    lam: float | None = None,
) -> torch.Tensor:
    """Official label vectors (§4.4 step 6), from multi-hot inputs.

    Without a partner every entry is ``smooth / C`` and each positive is *set* to
    ``1 - smooth``. With a partner each positive of the sample *gets* ``lam * (1 - smooth)``
    added and each positive of the partner ``(1 - lam) * (1 - smooth)`` (on top of
    ``smooth / C``), so a class both share ends at ``smooth / C + 1 - smooth``.

    Args:
        labels: Multi-hot (C,) of the sample; entries > 0.5 are positives.
        smooth: Label smoothing in [0, 1).
        partner: Multi-hot (C,) of the mixup partner, or ``None``.
        lam: Mixup weight of the sample; required with ``partner``.

    Returns:
        float32 (C,).
    """
    c = labels.shape[-1]
    pos = labels > 0.5  # (C,)
    out = torch.full((c,), smooth / c if c else 0.0, dtype=torch.float32)  # (C,)
    if partner is None:
        out[pos] = 1.0 - smooth
        return out
    if lam is None:
        raise ConfigError("smooth_labels needs lam when a mixup partner is given")
    out = out + pos.to(torch.float32) * (lam * (1.0 - smooth))
    return out + (partner > 0.5).to(torch.float32) * ((1.0 - lam) * (1.0 - smooth))
