"""Random choices of one AV-Shapes clip, drawn deterministically from (seed, index).

A :class:`ClipPlan` holds everything random about a clip (classes, sound events, object
trajectories, colours, background), so that rendering is a pure function of the plan and a
time. Separate random streams keep the parts independent: changing the layout draws never
changes the sounds. Positions are in normalised frame units (0..1, x right, y down).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cavmae.errors import ConfigError
from training.synthetic.classes import CLASSES
from training.synthetic.config import AVShapesConfig

__all__ = [
    "MOTIONS", "ObjectPlan", "ClipPlan", "plan_clip", "object_pose", "pitch_of_size",
    "level_of_shade",
]

MOTIONS = ("static", "bouncing", "orbiting", "rotating", "pulsing", "drifting")

# Random streams, one per independent part of a clip.
STREAM_CONTENT, STREAM_LAYOUT, STREAM_NOISE, STREAM_MISMATCH = 0, 1, 2, 3
_MAX_SCALE = 1.2  # largest size factor of any motion ("pulsing" grows to 1.18)


def clip_rng(seed: int, index: int, stream: int) -> np.random.Generator:
    """Returns the generator of one random stream of clip ``index`` in dataset ``seed``."""
    return np.random.default_rng([seed, index, stream])


@dataclass(frozen=True)
class ObjectPlan:
    """One object in the frame; sources also carry their sound parameters.

    Attributes:
        class_id: class of the object's shape and colour.
        is_source: True for the object that makes a sound, False for a silent distractor.
        size: instance size in [0, 1]: sets ``radius`` and, for a source, ``pitch``.
        shade: instance shade in [0, 1] (dark to light): sets the colour's brightness and,
            for a source, ``level``.
        radius: radius at size factor 1, fraction of the frame size.
        colour: RGB in 0..1 after the shade and a small per-clip jitter, shape (3,).
        motion: motion pattern, one of ``MOTIONS``.
        motion_params: the pattern's random parameters (see ``object_pose``).
        events: the times the object glows, as [start, end) frame-grid intervals: a source
            sounds exactly then; a distractor glows silently (empty without distractor glow).
        pitch: multiplier of every class frequency (from the size, plus a small jitter).
        level: RMS of the sound while it plays (from the shade); 0 for a distractor.
        event_gains: per-event gain factors of a source's sound.
    """

    class_id: int
    is_source: bool
    size: float
    shade: float
    radius: float
    colour: np.ndarray
    motion: str
    motion_params: dict[str, float]
    events: tuple[tuple[int, int], ...] = ()
    pitch: float = 1.0
    level: float = 0.0
    event_gains: tuple[float, ...] = ()

    def active_at(self, times: np.ndarray, fps: float) -> np.ndarray:
        """Returns whether the object glows (a source: sounds) at each time in s, (K,) bool."""
        u = np.asarray(times, dtype=np.float64) * fps + 1e-6  # (K,) in frame units
        out = np.zeros(u.shape, dtype=bool)
        for start, end in self.events:
            out |= (u >= start) & (u < end)
        return out


@dataclass(frozen=True)
class ClipPlan:
    """All random choices of one clip.

    Attributes:
        index: clip index; seed: dataset seed.
        labels: classes of the visible sound sources (one, or two for a mixture).
        objects: sources first (in ``labels`` order), then an optional distractor.
        background: parameters of the background picture.
        mismatched: True when the audio comes from clip ``audio_source_index``.
        audio_source_index: index of the clip whose sounds the audio holds.
    """

    index: int
    seed: int
    labels: tuple[int, ...]
    objects: tuple[ObjectPlan, ...]
    background: dict[str, float]
    mismatched: bool
    audio_source_index: int

    @property
    def sources(self) -> tuple[ObjectPlan, ...]:
        """The objects that make the clip's sounds."""
        return tuple(o for o in self.objects if o.is_source)


def _events(rng: np.random.Generator, cfg: AVShapesConfig) -> tuple[tuple[int, int], ...]:
    """Draws 1..n non-overlapping events on the frame grid, [start, end) in frames."""
    n_frames = cfg.num_frames
    active = int(round(rng.uniform(*cfg.active_fraction) * n_frames))
    active = min(max(active, 1), n_frames)
    # Each event needs >= 1 frame, and >= 1 silent frame between two events.
    n = int(rng.integers(cfg.events_per_clip[0], cfg.events_per_clip[1] + 1))
    n = max(1, min(n, active, (n_frames - active) + 1))
    lengths = 1 + rng.multinomial(active - n, rng.dirichlet(np.ones(n)))  # (n,)
    spare = n_frames - active - (n - 1)
    gaps = rng.multinomial(spare, rng.dirichlet(np.ones(n + 1)))  # (n + 1,)
    gaps[1:-1] += 1
    starts = np.cumsum(gaps[:-1]) + np.concatenate([[0], np.cumsum(lengths)[:-1]])
    return tuple((int(s), int(s + d)) for s, d in zip(starts, lengths, strict=True))


def _motion_params(
    rng: np.random.Generator, motion: str, radius: float, others: list[tuple[float, float]]
) -> dict[str, float]:
    """Draws a trajectory that keeps the object inside the frame, away from ``others``."""
    margin = radius * _MAX_SCALE + 0.02
    lo, hi = margin, 1.0 - margin
    best, best_dist = (0.5, 0.5), -1.0
    for _ in range(12):  # keep the start point farthest from the other objects
        x, y = rng.uniform(lo, hi, size=2)
        dist = min((np.hypot(x - ox, y - oy) for ox, oy in others), default=1.0)
        if dist > best_dist:
            best, best_dist = (float(x), float(y)), dist
        if dist > 2.5 * radius:
            break
    x, y = best
    p: dict[str, float] = {"x": x, "y": y, "lo": lo, "hi": hi, "angle": 0.0}
    p["phase"] = float(rng.uniform(0, 2 * np.pi))
    if motion == "bouncing":
        speed, direction = rng.uniform(0.15, 0.3), rng.uniform(0, 2 * np.pi)
        p.update(vx=speed * np.cos(direction), vy=speed * np.sin(direction))
    elif motion in ("orbiting", "drifting"):
        room = min(x - lo, hi - x, y - lo, hi - y)
        p["amp"] = float(min(room, rng.uniform(0.08, 0.2)))
        p["rate"] = float(rng.uniform(0.1, 0.2) * rng.choice([-1.0, 1.0]))
        p["rate2"] = float(rng.uniform(0.15, 0.3))  # drifting: second Lissajous frequency
    elif motion == "rotating":
        p["spin"] = float(rng.uniform(0.6, 1.5) * rng.choice([-1.0, 1.0]))  # rad/s
        p["angle"] = float(rng.uniform(0, np.pi / 2))
    elif motion == "pulsing":
        p["rate"] = float(rng.uniform(0.4, 0.8))
    return {k: float(v) for k, v in p.items()}


def object_pose(obj: ObjectPlan, times: np.ndarray, fps: float) -> tuple[np.ndarray, ...]:
    """Returns the centre, size factor and angle of an object at times in seconds.

    Args:
        obj: the object.
        times: frame times in seconds, shape (K,).
        fps: frame rate of the event grid (``cfg.fps``).

    Returns:
        ``(cx, cy, scale, angle)``, each shape (K,); centre in frame units, angle in radians.
        The size does not change with activity, so every frame shows the instance size.
    """
    t = np.asarray(times, dtype=np.float64)  # (K,)
    p = obj.motion_params
    cx, cy = np.full_like(t, p["x"]), np.full_like(t, p["y"])
    scale, angle = np.ones_like(t), np.full_like(t, p["angle"])
    ph = p["phase"]
    if obj.motion == "static":  # a slight wobble so that the picture is alive
        cx = cx + 0.01 * np.sin(2 * np.pi * 0.3 * t + ph)
        cy = cy + 0.01 * np.cos(2 * np.pi * 0.3 * t + ph)
    elif obj.motion == "bouncing":  # straight lines reflected at the frame border
        cx = _reflect(cx + p["vx"] * t, p["lo"], p["hi"])
        cy = _reflect(cy + p["vy"] * t, p["lo"], p["hi"])
    elif obj.motion == "orbiting":  # a circle around the start point
        w = 2 * np.pi * p["rate"] * t + ph
        cx, cy = cx + p["amp"] * np.cos(w), cy + p["amp"] * np.sin(w)
    elif obj.motion == "drifting":  # a slow Lissajous wander
        cx = cx + p["amp"] * np.sin(2 * np.pi * p["rate"] * t + ph)
        cy = cy + p["amp"] * np.sin(2 * np.pi * p["rate2"] * t + 2 * ph)
    elif obj.motion == "rotating":  # spin in place with a gentle sway
        angle = angle + p["spin"] * t
        cx = cx + 0.02 * np.sin(2 * np.pi * 0.2 * t + ph)
    elif obj.motion == "pulsing":  # breathe in size
        scale = 1.0 + 0.18 * np.sin(2 * np.pi * p["rate"] * t + ph)
    return cx, cy, scale, angle


def _reflect(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Folds positions into [lo, hi] as a ball bouncing between two walls."""
    span = hi - lo
    y = np.mod(x - lo, 2 * span)
    return lo + np.where(y > span, 2 * span - y, y)


def pitch_of_size(size: float, cfg: AVShapesConfig) -> float:
    """Pitch multiplier of an object of instance size ``size`` in [0, 1] (larger is lower)."""
    return float(2.0 ** (cfg.pitch_octaves * (0.5 - size)))


def level_of_shade(shade: float, cfg: AVShapesConfig) -> float:
    """RMS of a source of instance shade ``shade`` in [0, 1] (lighter is louder)."""
    return float(cfg.source_rms * 10 ** (-cfg.loudness_db * (1.0 - shade) / 20))


def _source(
    rng_c: np.random.Generator,
    rng_l: np.random.Generator,
    class_id: int,
    cfg: AVShapesConfig,
    others: list[tuple[float, float]],
) -> ObjectPlan:
    """Draws a sound-making object of class ``class_id``: sound from rng_c, look from rng_l.

    Its size and shade come from rng_c, because they set the sound (pitch and loudness).
    """
    events = _events(rng_c, cfg)
    size, shade = (float(v) for v in rng_c.uniform(0, 1, size=2))
    pitch = pitch_of_size(size, cfg) * float(1.0 + rng_c.uniform(-1, 1) * cfg.pitch_jitter)
    level = level_of_shade(shade, cfg)
    jitter = cfg.level_jitter_db
    gains = tuple(float(g) for g in 10 ** (rng_c.uniform(-jitter, jitter, size=len(events)) / 20))
    return _object(rng_l, class_id, True, size, shade, cfg, others, events=events, pitch=pitch,
                   level=level, event_gains=gains, motion=CLASSES[class_id].motion)


def _distractor(
    rng_l: np.random.Generator, class_id: int, cfg: AVShapesConfig, others: list[tuple[float, float]]
) -> ObjectPlan:
    """Draws a silent object: it glows at times of its own, drawn like a source's events."""
    size, shade = (float(v) for v in rng_l.uniform(0, 1, size=2))
    events = _events(rng_l, cfg) if cfg.distractor_glow else ()
    return _object(rng_l, class_id, False, size, shade, cfg, others, events=events,
                   motion=CLASSES[class_id].motion)


def _object(
    rng_l: np.random.Generator,
    class_id: int,
    is_source: bool,
    size: float,
    shade: float,
    cfg: AVShapesConfig,
    others: list[tuple[float, float]],
    motion: str,
    **sound: Any,
) -> ObjectPlan:
    """Draws the trajectory of an object of the given size and shade; ``others`` gets its start."""
    spec = CLASSES[class_id]
    lo, hi = cfg.object_radius
    radius = lo + size * (hi - lo)
    s_lo, s_hi = cfg.shade_range
    colour = np.asarray(spec.colour, np.float64) / 255.0 * (s_lo + shade * (s_hi - s_lo))
    colour = np.clip(colour + rng_l.uniform(-0.02, 0.02, size=3), 0.0, 1.0)
    params = _motion_params(rng_l, motion, radius, others)
    others.append((params["x"], params["y"]))
    return ObjectPlan(class_id, is_source, size, shade, radius, colour, motion, params, **sound)


def plan_clip(index: int, seed: int, cfg: AVShapesConfig, allow_mismatch: bool = True) -> ClipPlan:
    """Draws the plan of clip ``index`` of the dataset ``seed``.

    The first class is ``index % cfg.num_classes``, so consecutive indices cycle through the
    classes and ``num_classes * n`` clips hold exactly ``n`` of each.

    Args:
        index: clip index, >= 0.
        seed: dataset seed, >= 0.
        cfg: dataset configuration.
        allow_mismatch: False draws the clip as if ``mismatch_prob`` were 0 (used for the
            audio partner of a mismatched clip).

    Returns:
        The clip's plan.

    Raises:
        ConfigError: if ``index`` or ``seed`` is negative.
    """
    if index < 0 or seed < 0:
        raise ConfigError(f"index ({index}) and seed ({seed}) must be >= 0")
    rng_c, rng_l = clip_rng(seed, index, STREAM_CONTENT), clip_rng(seed, index, STREAM_LAYOUT)
    labels = [index % cfg.num_classes]
    if rng_c.random() < cfg.mix_prob:
        second = int(rng_c.integers(cfg.num_classes - 1))
        labels.append(second + (second >= labels[0]))
    others: list[tuple[float, float]] = []
    objects = [_source(rng_c, rng_l, c, cfg, others) for c in labels]
    candidates = [c for c in range(cfg.num_classes) if c not in labels]
    if rng_l.random() < cfg.distractor_prob and candidates:
        c = int(candidates[rng_l.integers(len(candidates))])
        objects.append(_distractor(rng_l, c, cfg, others))
    background = _background_params(rng_l)
    mismatched, source_index = False, index
    if allow_mismatch and clip_rng(seed, index, STREAM_MISMATCH).random() < cfg.mismatch_prob:
        source_index = _mismatch_partner(index, seed, cfg, set(labels))
        mismatched = True
    return ClipPlan(index, seed, tuple(labels), tuple(objects), background, mismatched,
                    source_index)


def _background_params(rng: np.random.Generator) -> dict[str, float]:
    """Draws a two-colour gradient, less saturated than the objects so that they stand out.

    Brightness varies widely between clips (dark to light): with the earlier narrow, dark range
    (values 0.12-0.45) a masked autoencoder could not beat predicting one global mean colour
    within a demo-sized budget, because the per-image colour carried too little of the signal.
    """
    return {
        "hue": float(rng.uniform(0, 1)),
        "hue_shift": float(rng.uniform(0.08, 0.3) * rng.choice([-1, 1])),
        "sat": float(rng.uniform(0.1, 0.45)),
        "val_lo": float(rng.uniform(0.1, 0.55)),
        "val_hi": float(rng.uniform(0.5, 0.95)),
        "angle": float(rng.uniform(0, 2 * np.pi)),
        "pattern": float(rng.integers(4)),  # 0 none, 1 grid, 2 diagonal stripes, 3 dots
        "pattern_scale": float(rng.uniform(0.06, 0.12)),
        "noise_seed": float(rng.integers(2**31)),
    }


def _mismatch_partner(index: int, seed: int, cfg: AVShapesConfig, labels: set[int]) -> int:
    """Picks another clip of the same dataset seed whose classes share none with ``labels``.

    The partner index lies above ``index`` (by up to 10**6), so it is a valid clip of the same
    seed, generally outside the rendered index range.
    """
    rng = clip_rng(seed, index, STREAM_MISMATCH)
    rng.random()  # the mismatch decision itself
    for _ in range(64):
        other = index + int(rng.integers(1, 1_000_000))
        if labels.isdisjoint(plan_clip(other, seed, cfg, allow_mismatch=False).labels):
            return other
    raise ConfigError(f"found no clip without classes {sorted(labels)} to mismatch clip {index}")
