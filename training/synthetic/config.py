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
    of 16 kHz mono audio and 224 x 224 RGB frames, here at 10 frames per second. They are the
    world the bundled demo model is trained and measured on (``python -m training.synthetic``
    writes it with these defaults):

    - each object has two instance properties that one frame and the audio both reveal: its
      *size* sets the pitch of its sound (the largest object sounds ``pitch_octaves`` below the
      smallest) and its *shade* (how light its colour is) sets the loudness (the darkest is
      ``loudness_db`` quieter than the lightest);
    - an object glows while it is "active": a source exactly while its sound plays, a silent
      distractor at times of its own (``distractor_glow``), so one frame does not tell which
      object sounds;
    - the sounds are structured (onsets, harmonics, rhythm, pitch contours) over a quiet
      pink-noise floor (``noise_level``, about 42 dB below the loudest sources).
    """

    num_classes: int = 10  # the first ``num_classes`` entries of ``CLASSES``
    duration_s: float = 10.0
    fps: int = 10
    size: int = 224  # frames are size x size pixels
    sample_rate: int = 16000
    mix_prob: float = 0.25  # chance of a two-class mixture (two objects, two sounds)
    distractor_prob: float = 0.6  # chance of an extra silent object of another class
    mismatch_prob: float = 0.0  # chance that the audio comes from another clip (flagged)
    noise_level: float = 0.0008  # RMS of the background noise (full scale is 1.0)
    source_rms: float = 0.1  # RMS of the lightest (loudest) class sound while it plays
    events_per_clip: tuple[int, int] = (1, 4)  # inclusive range of sound events per source
    active_fraction: tuple[float, float] = (0.4, 0.7)  # share of the clip a source sounds
    object_radius: tuple[float, float] = (0.12, 0.22)  # radius range, fraction of frame size
    pitch_octaves: float = 1.5  # pitch span from the smallest to the largest object
    loudness_db: float = 20.0  # level span from the lightest to the darkest object
    shade_range: tuple[float, float] = (0.45, 1.0)  # colour brightness from darkest to lightest
    pitch_jitter: float = 0.01  # relative random change of every class frequency, on top
    level_jitter_db: float = 1.0  # random level change of each event, in [-x, +x] dB
    distractor_glow: bool = True  # silent distractors glow at times of their own

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
        if not 0.02 <= lo_r <= hi_r <= 0.25:
            raise ConfigError(
                f"object_radius={self.object_radius} must lie in [0.02, 0.25] with lo <= hi"
            )
        if not 0.0 <= self.pitch_octaves <= 2.0:
            raise ConfigError(f"pitch_octaves={self.pitch_octaves} must be in [0, 2]")
        if not 0.0 <= self.loudness_db <= 40.0:
            raise ConfigError(f"loudness_db={self.loudness_db} must be in [0, 40]")
        lo_s, hi_s = self.shade_range
        if not 0.2 <= lo_s <= hi_s <= 1.0:
            raise ConfigError(f"shade_range={self.shade_range} must lie in [0.2, 1] with lo <= hi")
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
