"""The official CAV-MAE data-list format: audio files plus extracted JPEG frames.

Reads ``{"data": [{"wav", "labels", "video_id", "video_path"}, ...]}`` with an official
``index,mid,display_name`` label CSV (OFFICIAL_CAVMAE.md §4.3, §4.5), so that an existing
AudioSet/VGGSound preparation trains directly. Samples are assembled by
:class:`training.data.base.AVDataset`.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cavmae.config import FeatureConfig
from cavmae.errors import ConfigError, UnreadableMedia
from cavmae.features import kaldi_fbank, pad_or_crop
from cavmae.labels import LabelSet
from training.augment import AugmentConfig
from training.data.base import AVDataset, FrameChoice, multi_hot

__all__ = ["OfficialJsonDataset"]

logger = logging.getLogger(__name__)


class OfficialJsonDataset(AVDataset):
    """The official data-list format (OFFICIAL_CAVMAE.md §4.3): audio files plus JPEG frames.

    Each entry of ``{"data": [...]}`` has ``wav`` (audio path), ``labels`` (comma-separated mids
    of the label CSV), ``video_id`` and ``video_path``; frame ``k`` is
    ``video_path/frame_{k}/video_id.jpg`` and, as official, a missing frame falls back to the
    next lower ``k`` that exists. Audio is decoded with ``cavmae.media.decode_audio`` (first
    channel, resampled to the feature sample rate) and mixup mixes the waveforms, exactly as
    official. Deviation: the partner's frame comes from the partner's own ``video_path`` (the
    official code uses the primary's, which only matters with several frame roots).

    Args:
        json_path: The data-list JSON.
        label_csv: The official ``index,mid,display_name`` CSV.
        train, augment, frame, feature_config, seed, return_all_frames: As
            :class:`PreparedDataset` (``feature_config`` default: ``FeatureConfig()``).
        total_frames: Frames per clip on disk (official 10).
        check_files: Drop (and count in ``skipped``) entries whose audio file or every frame is
            missing, with a warning, instead of failing when they are loaded.
    """

    def __init__(
        self,
        json_path: str | os.PathLike[str],
        label_csv: str | os.PathLike[str],
        *,
        train: bool = False,
        augment: AugmentConfig | None = None,
        frame: FrameChoice | None = None,
        feature_config: FeatureConfig | None = None,
        seed: int = 0,
        return_all_frames: bool = False,
        total_frames: int = 10,
        check_files: bool = False,
    ) -> None:
        self.json_path = Path(json_path)
        self.feature_config = feature_config or FeatureConfig()
        self.frames_per_clip = int(total_frames)
        if self.frames_per_clip < 1:
            raise ConfigError(f"total_frames must be >= 1, got {total_frames}")
        self.label_set = LabelSet.from_csv(label_csv)
        self.label_names = list(self.label_set.names)
        entries = _read_data_list(self.json_path)
        self.skipped: list[tuple[str, str]] = []
        if check_files:
            entries = self._existing(entries)
        self.entries = entries
        labels: list[list[int]] = []
        for n, e in enumerate(entries):
            try:
                labels.append(
                    [
                        self.label_set.index(m.strip())
                        for m in str(e["labels"]).split(",")
                        if m.strip()
                    ]
                )
            except KeyError as err:
                raise ConfigError(
                    f"{self.json_path}, entry {n} ({e.get('video_id')}): {err.args[0]}; "
                    "use the label CSV the data list was made for"
                ) from None
        self.labels_matrix = multi_hot(labels, self.num_classes)
        self._setup(
            train=train,
            augment=augment,
            frame=frame,
            seed=seed,
            return_all_frames=return_all_frames,
        )

    def _existing(self, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        kept = []
        for e in entries:
            if not Path(e["wav"]).is_file():
                self.skipped.append((str(e["video_id"]), f"audio file {e['wav']} not found"))
            elif _frame_path(e, self.frames_per_clip - 1) is None:
                self.skipped.append(
                    (str(e["video_id"]), f"no frame_k/{e['video_id']}.jpg under {e['video_path']}")
                )
            else:
                kept.append(e)
        if self.skipped:
            logger.warning(
                "%s: dropped %d of %d entries with missing files (first: %s)",
                self.json_path,
                len(self.skipped),
                len(entries),
                self.skipped[0][1],
            )
        return kept

    def _waveform(self, i: int) -> torch.Tensor:
        """De-meaned waveform (N,) float32 at the feature sample rate."""
        from cavmae import media

        wav = media.decode_audio(
            self.entries[i]["wav"], sample_rate=self.feature_config.sample_rate
        )
        w = torch.as_tensor(np.asarray(wav, dtype=np.float32))  # (N,)
        return w - w.mean()  # Parity: waveform - waveform.mean() (§4.4 step 2)

    def _fbank_of(self, wav: torch.Tensor) -> tuple[torch.Tensor, int]:
        cfg = self.feature_config
        fb = kaldi_fbank(
            wav, cfg.sample_rate, cfg.num_mel_bins, cfg.frame_length_ms, cfg.frame_shift_ms
        )
        n = min(int(fb.shape[0]), cfg.target_length)
        return pad_or_crop(fb, cfg.target_length), n  # (T, F)

    def _raw_fbank(self, i: int) -> tuple[torch.Tensor, int]:
        return self._fbank_of(self._waveform(i))

    def _mixed_raw_fbank(self, i: int, j: int, lam: float) -> torch.Tensor:
        # Parity: mix de-meaned waveforms; the partner is zero-padded or cut to the first's length.
        w1, w2 = self._waveform(i), self._waveform(j)
        if w2.shape[0] < w1.shape[0]:
            w2 = torch.nn.functional.pad(w2, (0, w1.shape[0] - w2.shape[0]))
        mixed = lam * w1 + (1.0 - lam) * w2[: w1.shape[0]]  # (N,)
        return self._fbank_of(mixed - mixed.mean())[0]

    def _frame(self, i: int, k: int) -> np.ndarray:
        import torchvision.transforms.functional as tvf
        from PIL import Image

        e = self.entries[i]
        path = _frame_path(e, k)
        if path is None:
            raise UnreadableMedia(
                f"no frame for {e['video_id']}: none of {e['video_path']}/frame_0..{k}/"
                f"{e['video_id']}.jpg exists; extract the frames or drop the entry (check_files=True)"
            )
        s = self.feature_config.img_size
        try:
            with Image.open(path) as img:
                img = img.convert("RGB")
                if img.size != (s, s):
                    # Parity: Resize(S, BICUBIC) + CenterCrop(S) at load time (§4.5).
                    img = tvf.center_crop(tvf.resize(img, s, tvf.InterpolationMode.BICUBIC), s)
                return np.array(img, dtype=np.uint8)  # (S, S, 3), writable
        except OSError as err:
            raise UnreadableMedia(f"cannot read frame {path}: {err}") from err


def _frame_path(entry: dict[str, Any], k: int) -> Path | None:
    """``video_path/frame_{k}/video_id.jpg``, falling back to lower ``k`` (official)."""
    for kk in range(k, -1, -1):
        p = Path(entry["video_path"]) / f"frame_{kk}" / f"{entry['video_id']}.jpg"
        if p.is_file():
            return p
    return None


def _read_data_list(path: Path) -> list[dict[str, Any]]:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"cannot read the data list {path}: {err}") from err
    data = obj.get("data") if isinstance(obj, dict) else None
    if not isinstance(data, list) or not data:
        raise ConfigError(
            f'{path} must hold {{"data": [{{wav, labels, video_id, video_path}}, ...]}}'
        )
    need = ("wav", "labels", "video_id", "video_path")
    for n, e in enumerate(data):
        missing = [k for k in need if k not in e] if isinstance(e, dict) else list(need)
        if missing:
            raise ConfigError(f"{path}, entry {n} lacks the keys {missing}")
    return data
