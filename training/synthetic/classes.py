"""The AV-Shapes classes: each pairs a visual object with a characteristic sound.

A class is a shape in a distinct colour and texture that moves in a typical way, and a sound
whose spectro-temporal signature is distinct in a 128-bin log-mel fbank (OFFICIAL_CAVMAE.md
§4.4): pure tones, sweeps, harmonic stacks, noise bands, click trains, modulated tones.
The label file follows the official ``index,mid,display_name`` format (§4.3), with
mids ``/avs/<index>``.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ClassSpec", "CLASSES", "class_mid", "label_rows", "write_label_csv"]


@dataclass(frozen=True, eq=False)
class ClassSpec:
    """One AV-Shapes class.

    Attributes:
        name: human-readable display name, also used as the class folder name.
        shape: outline, one of ``visual.SHAPES``.
        colour: RGB colour in 0..255.
        texture: surface pattern, one of ``visual.TEXTURES``.
        motion: movement pattern, one of ``plan.MOTIONS``.
        sound: sound generator, one of ``audio.SOUNDS``.
        params: the generator's parameters (frequencies in Hz, rates in Hz).
    """

    name: str
    shape: str
    colour: tuple[int, int, int]
    texture: str
    motion: str
    sound: str
    params: Mapping[str, float] = field(default_factory=dict)


CLASSES: list[ClassSpec] = [
    ClassSpec("red circle + 440 Hz tone", "circle", (232, 44, 44), "shaded", "bouncing",
              "tone", {"freq": 440.0}),
    ClassSpec("blue square + rising chirp", "square", (45, 100, 245), "stripes", "rotating",
              "sweep", {"f_start": 400.0, "f_end": 3200.0, "period": 0.5}),
    ClassSpec("yellow triangle + falling chirp", "triangle", (250, 214, 30), "solid", "orbiting",
              "sweep", {"f_start": 3000.0, "f_end": 500.0, "period": 0.5}),
    ClassSpec("green star + 220 Hz buzz", "star", (40, 196, 72), "shaded", "rotating",
              "harmonics", {"freq": 220.0, "num_harmonics": 8}),
    ClassSpec("cyan ring + hiss", "ring", (20, 214, 232), "rings", "pulsing",
              "noise_band", {"f_low": 2500.0, "f_high": 5500.0}),
    ClassSpec("white cross + click train", "cross", (242, 242, 242), "checker", "static",
              "clicks", {"rate": 12.0, "freq": 2200.0}),
    ClassSpec("magenta diamond + 1 kHz tremolo", "diamond", (230, 50, 205), "checker", "bouncing",
              "am_tone", {"freq": 1000.0, "mod_rate": 8.0}),
    ClassSpec("orange bars + warble", "bars", (255, 140, 10), "solid", "drifting",
              "fm_tone", {"freq": 700.0, "deviation": 150.0, "mod_rate": 6.0}),
    ClassSpec("purple hexagon + siren", "hexagon", (145, 75, 230), "dots", "orbiting",
              "siren", {"f_low": 600.0, "f_high": 900.0, "rate": 2.5}),
    ClassSpec("pink heart + rumble", "heart", (255, 120, 175), "shaded", "pulsing",
              "noise_band", {"f_low": 60.0, "f_high": 300.0}),
]


def class_mid(class_id: int) -> str:
    """Returns the label id (``mid``) of class ``class_id``, e.g. ``/avs/3``."""
    return f"/avs/{class_id}"


def label_rows(num_classes: int | None = None) -> list[tuple[int, str, str]]:
    """Returns ``(index, mid, display_name)`` rows of the first ``num_classes`` classes."""
    n = len(CLASSES) if num_classes is None else num_classes
    return [(i, class_mid(i), spec.name) for i, spec in enumerate(CLASSES[:n])]


def write_label_csv(path: str | Path, num_classes: int | None = None) -> Path:
    """Writes the class list in the official label CSV format ``index,mid,display_name``.

    Args:
        path: output file; parent folders are created.
        num_classes: write only the first classes (all of ``CLASSES`` when None).

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "mid", "display_name"])
        writer.writerows(label_rows(num_classes))
    return path
