"""Configuration of the AV-Shapes synthetic dataset generator."""

from __future__ import annotations

from dataclasses import dataclass

from cavmae.errors import ConfigError
from training.synthetic.classes import CLASSES

__all__ = ["AVShapesConfig"]


@dataclass(frozen=True)
class AVShapesConfig:
    """Settings of an AV-Shapes dataset; every clip is a pure function of (seed, index, config).

    The defaults give clips in the official CAV-MAE input format (OFFICIAL_CAVMAE.md §4): 10 s
    of 16 kHz mono audio and 224 x 224 RGB frames, here at 10 frames per second.
    """

    num_classes: int = 10  # the first ``num_classes`` entries of ``CLASSES``
    duration_s: float = 10.0
    fps: int = 10
    size: int = 224  # frames are size x size pixels
    sample_rate: int = 16000
    mix_prob: float = 0.0  # chance of a two-class mixture (two objects, two sounds)
    distractor_prob: float = 0.3  # chance of an extra silent object of another class
    mismatch_prob: float = 0.0  # chance that the audio comes from another clip (flagged)
    noise_level: float = 0.02  # RMS of the background noise (full scale is 1.0)
    source_rms: float = 0.1  # RMS of a class sound while it plays, before level jitter
    events_per_clip: tuple[int, int] = (1, 4)  # inclusive range of sound events per source
    active_fraction: tuple[float, float] = (0.35, 0.7)  # share of the clip a source sounds
    object_radius: tuple[float, float] = (0.1, 0.15)  # object radius, fraction of frame size
    pitch_jitter: float = 0.03  # relative random change of every class frequency
    level_jitter_db: float = 6.0  # a source's level is drawn in [-level_jitter_db, 0] dB

    def __post_init__(self) -> None:
        if not 1 <= self.num_classes <= len(CLASSES):
            raise ConfigError(f"num_classes={self.num_classes} must be in 1..{len(CLASSES)}")
        if self.duration_s <= 0 or self.fps <= 0 or self.size < 8 or self.sample_rate < 8000:
            raise ConfigError(
                f"need duration_s > 0, fps > 0, size >= 8 and sample_rate >= 8000; got "
                f"duration_s={self.duration_s}, fps={self.fps}, size={self.size}, "
                f"sample_rate={self.sample_rate}"
            )
        for name in ("mix_prob", "distractor_prob", "mismatch_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name}={value} must be a probability in [0, 1]")
        if self.num_classes < 2 and (self.mix_prob > 0 or self.mismatch_prob > 0):
            raise ConfigError("mixtures and mismatched pairs need num_classes >= 2")
        if self.noise_level < 0 or self.source_rms <= 0 or self.level_jitter_db < 0:
            raise ConfigError("noise_level and level_jitter_db must be >= 0, source_rms > 0")
        lo, hi = self.events_per_clip
        if not 1 <= lo <= hi:
            raise ConfigError(f"events_per_clip={self.events_per_clip} must satisfy 1 <= lo <= hi")
        lo_f, hi_f = self.active_fraction
        if not 0.0 < lo_f <= hi_f < 1.0:
            raise ConfigError(f"active_fraction={self.active_fraction} must be in (0, 1), lo <= hi")
        lo_r, hi_r = self.object_radius
        if not 0.02 <= lo_r <= hi_r <= 0.2:
            raise ConfigError(
                f"object_radius={self.object_radius} must lie in [0.02, 0.2] with lo <= hi"
            )
        if not 0.0 <= self.pitch_jitter < 0.2:
            raise ConfigError(f"pitch_jitter={self.pitch_jitter} must be in [0, 0.2)")

    @property
    def num_frames(self) -> int:
        """Number of video frames of a clip (at least 1)."""
        return max(1, int(round(self.duration_s * self.fps)))

    @property
    def num_samples(self) -> int:
        """Number of audio samples of a clip."""
        return int(round(self.duration_s * self.sample_rate))
