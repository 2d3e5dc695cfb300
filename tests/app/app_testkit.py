"""Test kit of the app tests: tiny random-weight models, generated clips and a fake predictor.

The models are ``cavmae_tiny``-sized (milliseconds per call) and saved with
``cavmae.checkpoint.save_model``, so the app loads them exactly as it loads real checkpoints:
features travel in the checkpoint metadata (32 mel bins x 64 frames, 32 x 32 frames).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from cavmae import viz
from cavmae.checkpoint import save_model
from cavmae.config import FeatureConfig, cavmae_tiny
from cavmae.errors import ConfigError, NoAudioStream, UnreadableMedia
from cavmae.inference import Classification, MaskSpec, Prediction, PreparedClip, Reconstruction
from cavmae.labels import LabelSet
from cavmae.models import build_model

NUM_CLASSES = 4
LABELS = ("red circle", "blue square", "yellow triangle", "green star")


def make_tiny_models(folder: Path, seed: int = 0, **overrides: object) -> tuple[Path, Path]:
    """A random tiny pretraining model and classifier (4 classes, softmax) in ``folder``."""
    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    pt = save_model(build_model(cavmae_tiny(**overrides)), folder / "pretrain.safetensors")
    labels = LabelSet(LABELS, tuple(f"/t/{i}" for i in range(NUM_CLASSES)))
    ft = save_model(
        build_model(cavmae_tiny(label_dim=NUM_CLASSES, **overrides)),
        folder / "classifier.safetensors",
        labels=labels,
        multi_label=False,
        mode="multimodal",
    )
    return pt, ft


def write_clips(
    folder: Path,
    n: int = 3,
    duration_s: float = 3.0,
    seed: int = 0,
    classes: bool = False,
    size: int = 64,
) -> list[Path]:
    """``n`` AV-Shapes videos (``size`` pixels square, 10 fps, with audio); class sub-folders if asked."""
    from training.synthetic import AVShapesConfig, render_clip, write_video
    from training.synthetic.classes import CLASSES

    cfg = AVShapesConfig(duration_s=duration_s, size=size, fps=10, num_classes=4)
    out = []
    for i in range(n):
        clip = render_clip(i, seed, cfg)
        sub = folder / CLASSES[clip.labels[0]].name.replace(" ", "_") if classes else folder
        out.append(write_video(clip, sub / f"clip{i}.mp4"))
    return out


@dataclass
class FakePredictor:
    """Tiny geometry (32 x 64 fbank, 32 x 32 frames, patch 16: 2 x 4 audio and 2 x 2 visual tokens).

    ``prepare`` gives a clip whose fbank value equals the mel bin index (so the display
    orientation is checkable) and whose frames are constant. ``reconstruct`` adds 1 to masked
    patches; masks come from ``spec.patches_*`` or the first ``round(ratio * L)`` tokens.
    """

    labels: list[str] = field(default_factory=lambda: ["a", "b", "c"])
    calls: list[tuple[str, Any]] = field(default_factory=list)
    can_reconstruct: bool = True

    def __post_init__(self) -> None:
        cfg = cavmae_tiny()
        self.features = FeatureConfig.for_model(cfg)
        self.pretrain = SimpleNamespace(config=cfg)
        self.classifier = SimpleNamespace(config=cavmae_tiny(label_dim=len(self.labels)))
        self.device = torch.device("cpu")
        self.multi_label = False
        self.can_classify = True

    def prepare(self, path: str | Path, progress: Any = None, *, frames: str = "official") -> PreparedClip:
        self.calls.append(("prepare", str(path)))
        p = Path(path)
        if "corrupt" in p.name:
            raise UnreadableMedia(f"{p.name}: not a media file")
        f = self.features
        audio = "silent" not in p.name
        video = p.suffix != ".wav"
        fbank = (
            torch.arange(f.num_mel_bins, dtype=torch.float32).repeat(f.target_length, 1)
            if audio
            else None
        )
        frames = torch.zeros(10, 3, f.img_size, f.img_size) if video else None
        return PreparedClip(
            path=str(p),
            fbank=fbank,
            frames=frames,
            frames_uint8=np.full((10, f.img_size, f.img_size, 3), 128, np.uint8) if video else None,
            frame_times=np.arange(10, dtype=np.float64) if video else np.zeros(0),
            waveform=np.zeros(16000, np.float32) if audio else None,
            duration_s=1.0,
        )

    def _mask(self, patches: np.ndarray | None, ratio: float, n: int) -> np.ndarray:
        if patches is not None:
            return np.asarray(patches, bool).astype(np.float32)
        m = np.zeros(n, np.float32)
        m[: int(round(ratio * n))] = 1
        return m

    def reconstruct(
        self, clip: PreparedClip, spec: MaskSpec | None = None, frame_index: int | None = None
    ) -> Reconstruction:
        spec = spec or MaskSpec()
        self.calls.append(("reconstruct", spec))
        cfg = self.pretrain.config
        if (
            spec.ratio_a >= 1
            and spec.ratio_v >= 1
            and spec.patches_a is None
            and spec.patches_v is None
        ):
            raise ConfigError("at least one modality must stay partly visible to reconstruct")
        ma = self._mask(spec.patches_a, spec.ratio_a, cfg.num_audio_patches)
        mv = self._mask(spec.patches_v, spec.ratio_v, cfg.num_visual_patches)
        pa = viz.patch_mask_pixels(ma, cfg.audio_grid, cfg.patch_size)  # (F, T)
        pv = viz.patch_mask_pixels(mv, cfg.visual_grid, cfg.patch_size)
        spec_o = (
            clip.fbank.numpy()
            if clip.fbank is not None
            else np.zeros((cfg.audio_length, cfg.num_mel_bins), np.float32)
        )
        frame = np.full((cfg.img_size, cfg.img_size, 3), 128, np.uint8)
        rec_a = spec_o + 1.0
        return Reconstruction(
            spec_original=spec_o,
            spec_reconstruction=rec_a,
            spec_composite=np.where(pa.T > 0.5, rec_a, spec_o),
            frame_original=frame,
            frame_reconstruction=frame + 1,
            frame_composite=frame,
            mask_a=ma,
            mask_v=mv,
            pixel_mask_a=pa,
            pixel_mask_v=pv,
            loss_a=1.0 if ma.sum() else float("nan"),
            loss_v=1.0 if mv.sum() else float("nan"),
            norm_pix_denormalised=False,
        )

    def loss_sweep(
        self, clip: PreparedClip, ratios: Any, mode_a: str = "unstructured", seed: int = 0
    ) -> dict[str, list[float]]:
        return {
            "ratio": list(ratios),
            "loss_a": [r for r in ratios],
            "loss_v": [2 * r for r in ratios],
        }

    def classify(
        self, clip: PreparedClip, top_k: int = 5, mode: str = "auto", ensemble: bool = True
    ) -> Classification:
        self.calls.append(("classify", mode))
        if mode == "audioonly" and not clip.has_audio:
            raise NoAudioStream("mode 'audioonly' needs audio, and this file has no audio track")
        probs = np.array([0.6, 0.3, 0.1])
        used, note = "multimodal", ""
        if mode == "auto" and not clip.has_audio:
            used, note = "missingvideoonly", "no audio track: used the visual-only fallback"
        preds = [Prediction(i, self.labels[i], float(probs[i])) for i in range(min(top_k, 3))]
        return Classification(
            preds, probs, used if mode == "auto" else mode, False, 10 if ensemble else 1, note
        )

    def describe(self) -> dict[str, Any]:
        return {"device": "cpu", "features": self.features.to_dict()}
