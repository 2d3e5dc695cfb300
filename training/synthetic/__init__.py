"""AV-Shapes: a procedural synthetic audio-visual dataset with ground truth.

Each class pairs a visual object (a shape with a distinct colour, texture and motion) with a
characteristic sound (tone, sweep, harmonic stack, noise band, click train, modulated tone).
The object is drawn "active" (full size, full colour, with a halo) exactly while its sound
plays, in 1-4 events per clip; its box and pixel mask are known at every frame. Optional
silent distractors, two-class mixtures and mismatched audio make the task non-trivial. Every
clip is a pure function of (seed, index, config).

Clips follow the official input format (OFFICIAL_CAVMAE.md §4): 10 s of 16 kHz mono audio
(1024 x 128 fbank after feature extraction) and 224 x 224 RGB frames, and the label CSV
follows the official ``index,mid,display_name`` format (§4.3).

Modules: ``config`` (AVShapesConfig), ``classes`` (the class list), ``plan`` (random choices),
``audio`` and ``visual`` (rendering), ``clip`` (whole clips and the fast training path),
``export`` (mp4 files and dataset folders).
"""

from training.synthetic.classes import CLASSES, ClassSpec, class_mid, label_rows, write_label_csv
from training.synthetic.clip import (
    SyntheticClip,
    audio_plan,
    default_frame_times,
    patch_mask,
    render_arrays,
    render_clip,
)
from training.synthetic.config import AVShapesConfig
from training.synthetic.export import generate_folder, write_video, write_wav
from training.synthetic.plan import ClipPlan, plan_clip

__all__ = [
    "AVShapesConfig",
    "CLASSES",
    "ClassSpec",
    "ClipPlan",
    "SyntheticClip",
    "audio_plan",
    "class_mid",
    "default_frame_times",
    "generate_folder",
    "label_rows",
    "patch_mask",
    "plan_clip",
    "render_arrays",
    "render_clip",
    "write_label_csv",
    "write_video",
    "write_wav",
]
