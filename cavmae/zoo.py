"""Model zoo: every published CAV-MAE checkpoint, the label files, and the bundled models.

The registry follows OFFICIAL_CAVMAE.md §7: the pretrained ``CAVMAE`` checkpoints with a
decoder (§7.1: the four main models, every ablation, and the ImageNet-MAE initialisation of
§3.3) and the fine-tuned ``CAVMAEFT`` classifiers (§7.2), all Dropbox links with ``?dl=1``.
``LABEL_SETS`` holds the AudioSet and VGGSound label CSVs (§7.4). ``BUNDLED`` names the small
models shipped in the repository's ``assets/models/``.

``resolve(name_or_path)`` turns a zoo name, a bundled name or a file path into a local file,
downloading zoo files into the cache (``cavmae.hub.cache_dir()``) when needed. Sizes and
checksums of the published files are not recorded in the official repository, so they are
``None`` here until measured; ``download`` then checks only what the server reports.
"""

from __future__ import annotations

import difflib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cavmae import hub
from cavmae.config import ModelConfig, cavmae_base, cavmae_ft_base
from cavmae.errors import CheckpointError, ConfigError, DownloadError
from cavmae.labels import LabelSet

__all__ = [
    "ZooEntry",
    "LabelSource",
    "ZOO",
    "LABEL_SETS",
    "BUNDLED",
    "ASSETS_DIR",
    "get",
    "list_models",
    "resolve",
    "resolve_labels",
    "load_labels",
    "model_path",
]

logger = logging.getLogger(__name__)

Kind = Literal["pretrain", "finetune"]
LabelSetName = Literal["audioset", "vggsound"]
Mode = Literal["multimodal", "audioonly", "videoonly"]

#: The repository's asset folder (present in a source checkout / editable install).
ASSETS_DIR = Path(__file__).resolve().parents[1] / "assets"


@dataclass(frozen=True)
class ZooEntry:
    """One published checkpoint.

    Attributes:
        name: Registry name (lower case, used on the command line).
        url: Download URL (Dropbox, ``?dl=1``).
        filename: The file's official name (what a manual download is called).
        kind: ``"pretrain"`` (``CAVMAE`` with decoder) or ``"finetune"`` (``CAVMAEFT``).
        model_config: The architecture to load it into.
        norm_pix_loss: Whether pretraining used the per-patch normalised MAE target (None for
            classifiers, where it does not apply).
        label_set: ``"audioset"``/``"vggsound"`` for classifiers, None for pretrained models.
        mode: Recommended ``CAVMAEFT.forward`` mode for classifiers, None for pretrained models.
        metric: The reported result, e.g. ``"51.2 mAP (AS-2M)"``; None when none is reported.
        purpose: What the checkpoint is for, in a few words.
        sha256: Expected SHA-256 of the file, None while unknown.
        size: Expected size in bytes, None while unknown.
        mirror: A second download location for people who cannot reach Dropbox, if any.
    """

    name: str
    url: str
    filename: str
    kind: Kind
    model_config: ModelConfig
    norm_pix_loss: bool | None
    label_set: LabelSetName | None
    mode: Mode | None
    metric: str | None
    purpose: str
    sha256: str | None = None
    size: int | None = None
    mirror: str | None = None

    @property
    def multi_label(self) -> bool | None:
        """Sigmoid (AudioSet, multi-label) or softmax (VGGSound) head; None for pretraining."""
        if self.label_set is None:
            return None
        return self.label_set == "audioset"


@dataclass(frozen=True)
class LabelSource:
    """A published label CSV (``index,mid,display_name``)."""

    name: str
    url: str
    filename: str
    num_classes: int
    sha256: str | None = None
    size: int | None = None


def _dropbox(key: str, filename: str) -> str:
    """The ``?dl=1`` Dropbox link of the official READMEs."""
    return f"https://www.dropbox.com/s/{key}/{filename}?dl=1"


def _pretrained(
    name: str,
    key: str,
    filename: str,
    purpose: str,
    *,
    norm_pix_loss: bool = True,
    mirror: str | None = None,
) -> ZooEntry:
    return ZooEntry(
        name=name,
        url=_dropbox(key, filename),
        filename=filename,
        kind="pretrain",
        # Parity: every published CAVMAE is the full-size default (OFFICIAL_CAVMAE.md §7.1).
        model_config=cavmae_base(norm_pix_loss=norm_pix_loss),
        norm_pix_loss=norm_pix_loss,
        label_set=None,
        mode=None,
        metric=None,
        purpose=purpose,
        mirror=mirror,
    )


def _finetuned(
    name: str,
    key: str,
    filename: str,
    label_set: LabelSetName,
    mode: Mode,
    metric: str,
    purpose: str,
) -> ZooEntry:
    label_dim = LABEL_SETS[label_set].num_classes
    return ZooEntry(
        name=name,
        url=_dropbox(key, filename),
        filename=filename,
        kind="finetune",
        model_config=cavmae_ft_base(label_dim=label_dim),
        norm_pix_loss=None,
        label_set=label_set,
        mode=mode,
        metric=metric,
        purpose=purpose,
    )


LABEL_SETS: dict[str, LabelSource] = {
    "audioset": LabelSource(
        "audioset",
        _dropbox("z3ko8bv9b7738t1", "class_labels_indices.csv"),
        "class_labels_indices.csv",
        527,
    ),
    "vggsound": LabelSource(
        "vggsound",
        _dropbox("6k0czs8pzz6yj2c", "class_labels_indices_vgg.csv"),
        "class_labels_indices_vgg.csv",
        309,
    ),
}

_ENTRIES: list[ZooEntry] = [
    # --- §7.1 main pretrained models -----------------------------------------------------
    _pretrained(
        "cav-mae-scale++",
        "l5t5geufdy3qvnv",
        "audio_model.21.pth",
        "recommended pretrained model (batch 256); initialises every fine-tuning recipe",
        mirror="https://share.weiyun.com/vGfP1YZt",
    ),
    _pretrained(
        "cav-mae-scale+",
        "xu8bfie6hz86oev",
        "audio_model.25.pth",
        "pretrained, batch 108; reproduces the paper's numbers; retrieval",
    ),
    _pretrained(
        "cav-mae-base",
        "wxrjgr86gdhc5k8",
        "cav-mae-base.pth",
        "pretrained, batch 48; paper numbers and the 75%/unstructured/0.01 ablation row",
    ),
    _pretrained(
        "cav-mae-base-nonorm",
        "arrg7cb3e4hhjwu",
        "cav-mae-base-nonorm.pth",
        "pretrained without norm_pix_loss: reconstructions in pixel/fbank scale (inpainting)",
        norm_pix_loss=False,
    ),
    # --- §7.1 ablations (Base, batch 48, lambda_c 0.01 unless named) ----------------------
    _pretrained("cav-mae-base-mask50", "dgorer0ybdbnvgf", "50.pth", "ablation: 50% masking"),
    _pretrained("cav-mae-base-mask65", "xmuyksqch6l6g87", "65.pth", "ablation: 65% masking"),
    _pretrained("cav-mae-base-mask85", "y3o9zggpecmrbnu", "85.pth", "ablation: 85% masking"),
    _pretrained(
        "cav-mae-base-tf75",
        "madv6ynuy5113zh",
        "time_freq_75.pth",
        "ablation: 75% time-frequency audio masking",
    ),
    _pretrained(
        "cav-mae-base-tf50",
        "nd7qlagn8je6zjn",
        "time_freq_50.pth",
        "ablation: 50% time-frequency audio masking",
    ),
    _pretrained(
        "cav-mae-base-time75", "hfehd7m379ehr0y", "time_75.pth", "ablation: 75% time audio masking"
    ),
    _pretrained(
        "cav-mae-base-freq75",
        "ad4fhzt6d3xre5p",
        "freq_75.pth",
        "ablation: 75% frequency audio masking",
    ),
    _pretrained(
        "cav-mae-base-c0.001",
        "4j4qyiyjcmbtc6u",
        "cav-mae-base-c0.001.pth",
        "ablation: contrastive weight 0.001",
    ),
    _pretrained(
        "cav-mae-base-c0.1",
        "wf54ver9rs9fl1b",
        "cav-mae-base-c0.1.pth",
        "ablation: contrastive weight 0.1",
    ),
    _pretrained(
        "cav-mae-scale+-single-direction",
        "mvhmg7eda410phr",
        "single_direction.pth",
        "ablation: single-direction contrastive loss (Scale+, batch 120)",
    ),
    _pretrained(
        "cav-mae-symc-scale+",
        "ute6ydkw4hdv7rn",
        "symc.pth",
        "ablation: bidirectional contrastive loss (Scale+, batch 120)",
    ),
    # --- §3.3 pretraining initialisation -------------------------------------------------
    _pretrained(
        "in-initial",
        "9nlz523a5q52w86",
        "ori_mae_11.pth",
        "ImageNet-MAE ViT-B/16 weights mapped into CAVMAE: initialisation of "
        "every AS-2M / VGGSound pretraining recipe (not trained on audio)",
    ),
    # --- §7.2 fine-tuned classifiers -----------------------------------------------------
    _finetuned(
        "cav-mae-ft-as2m",
        "hejj49zdgyyfsuh",
        "as-full-51.2.pth",
        "audioset",
        "multimodal",
        "51.2 mAP (AS-2M)",
        "AudioSet classifier, audio+video (Scale+)",
    ),
    _finetuned(
        "cav-mae-ft-as20k",
        "9x6y642so3zve5y",
        "as-20k-42.0.pth",
        "audioset",
        "multimodal",
        "42.0 mAP (AS-20K)",
        "AudioSet classifier fine-tuned on AS-20K, audio+video (Scale+)",
    ),
    _finetuned(
        "cav-mae-ft-vggsound",
        "f4wrbxv2unewss9",
        "vgg_65.5.pth",
        "vggsound",
        "multimodal",
        "65.5 acc (VGGSound)",
        "VGGSound classifier, audio+video (Scale+, AS-2M pretraining)",
    ),
    _finetuned(
        "cav-mae-ft-vggsound-asvgg",
        "q66s3mu526mj2x6",
        "vgg_66.0.pth",
        "vggsound",
        "multimodal",
        "65.9 acc (VGGSound)",
        "VGGSound classifier, audio+video (Scale+, AS-2M + VGGSound pretraining)",
    ),
    _finetuned(
        "cav-mae-ft-as2m-audio",
        "itfw7p0ueq7z9og",
        "as_46.6.pth",
        "audioset",
        "audioonly",
        "46.6 mAP (AS-2M, audio only)",
        "AudioSet classifier, audio only",
    ),
    _finetuned(
        "cav-mae-ft-as20k-audio",
        "pariabyh1iyayda",
        "as_37.7.pth",
        "audioset",
        "audioonly",
        "37.7 mAP (AS-20K, audio only)",
        "AudioSet classifier fine-tuned on AS-20K, audio only",
    ),
    _finetuned(
        "cav-mae-ft-as20k-visual",
        "9ngkq9ygwqecxz5",
        "as_20.0.pth",
        "audioset",
        "videoonly",
        "20.0 mAP (AS-20K, visual only)",
        "AudioSet classifier fine-tuned on AS-20K, video frames only (Scale++)",
    ),
    _finetuned(
        "cav-mae-ft-vggsound-audio",
        "l4rj0sgpnt08bp2",
        "vgg_59.8.pth",
        "vggsound",
        "audioonly",
        "59.8 acc (VGGSound, audio only)",
        "VGGSound classifier, audio only (AS-2M + VGGSound pretraining)",
    ),
]

#: Registry of published checkpoints, by name, in the order of OFFICIAL_CAVMAE.md §7.
ZOO: dict[str, ZooEntry] = {e.name: e for e in _ENTRIES}

#: Small models shipped with the repository (trained by this project), by name.
BUNDLED: dict[str, Path] = {
    "demo": ASSETS_DIR / "models" / "cavmae-demo.safetensors",
    "demo-pretrain": ASSETS_DIR / "models" / "cavmae-demo-pretrain.safetensors",
}


def list_models() -> list[ZooEntry]:
    """All published checkpoints, pretrained ones first (OFFICIAL_CAVMAE.md §7 order)."""
    return list(ZOO.values())


def get(name: str) -> ZooEntry:
    """The zoo entry called ``name`` (case-insensitive).

    Raises:
        ConfigError: If there is no such entry (the message suggests close names).
    """
    entry = ZOO.get(name.lower())
    if entry is None:
        raise ConfigError(f"no model called {name!r} in the zoo{_suggest(name)}")
    return entry


def model_path(name: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where the zoo file ``name`` lives in the cache (it may not exist yet)."""
    entry = get(name)
    root = Path(cache_dir) if cache_dir is not None else hub.cache_dir()
    return root / "models" / entry.name / entry.filename


def resolve(
    name_or_path: str | os.PathLike[str],
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
    progress: hub.ProgressCallback | None = None,
) -> Path:
    """A local checkpoint file for a path, a bundled model name, or a zoo name.

    An existing path is returned as is. A bundled name (``demo``) maps into ``assets/models``.
    A zoo name is looked up in the cache and downloaded there when missing; the label CSV of a
    classifier is fetched along with it.

    Args:
        name_or_path: A file path, a key of ``BUNDLED``, or a key of ``ZOO``.
        cache_dir: Cache root; default ``cavmae.hub.cache_dir()``.
        download: Whether a missing zoo file may be downloaded.
        progress: Download progress callback ``(done, total)``.

    Returns:
        Path of an existing file.

    Raises:
        CheckpointError: If a path or bundled model does not exist, or a name is unknown.
        DownloadError: If a download fails, or the file is missing and ``download`` is False.
    """
    p = Path(name_or_path).expanduser()
    if p.is_file():
        return p
    key = str(name_or_path)
    if key in BUNDLED:
        path = BUNDLED[key]
        if not path.is_file():
            raise CheckpointError(
                f"the bundled model {key!r} is missing: expected {path}. It ships with the "
                "source repository (assets/models); use a checkout of the repository or pass "
                "the path of a checkpoint"
            )
        return path
    if key.lower() in ZOO:
        entry = ZOO[key.lower()]
        path = model_path(entry.name, cache_dir)
        if not path.is_file():
            if not download:
                raise DownloadError(
                    f"{entry.name} is not in the cache ({path}) and downloading is off; "
                    f"download {entry.url} by hand and pass its path"
                )
            logger.info("downloading %s (%s) to %s", entry.name, entry.url, path)
            hub.download(entry.url, path, sha256=entry.sha256, size=entry.size, progress=progress)
            _reject_web_page(path, entry.url)
        if entry.label_set is not None:
            resolve_labels(
                entry.label_set, cache_dir=cache_dir, download=download, progress=progress
            )
        return path
    if p.exists():
        raise CheckpointError(f"{p} is a directory, not a checkpoint file")
    raise CheckpointError(
        f"{str(name_or_path)!r} is neither an existing file nor a known model name"
        f"{_suggest(key)}; see `cavmae models` for the list"
    )


def resolve_labels(
    label_set: str,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
    progress: hub.ProgressCallback | None = None,
) -> Path:
    """The local copy of a published label CSV (``"audioset"`` or ``"vggsound"``).

    Raises:
        ConfigError: If ``label_set`` is not a key of ``LABEL_SETS``.
        DownloadError: If the file is not cached and cannot be downloaded.
    """
    src = LABEL_SETS.get(label_set)
    if src is None:
        raise ConfigError(f"unknown label set {label_set!r}; known: {sorted(LABEL_SETS)}")
    root = Path(cache_dir) if cache_dir is not None else hub.cache_dir()
    path = root / "labels" / src.filename
    if path.is_file():
        return path
    if not download:
        raise DownloadError(
            f"the {label_set} labels are not in the cache ({path}) and downloading is off; "
            f"download {src.url} by hand and pass its path"
        )
    hub.download(src.url, path, sha256=src.sha256, size=src.size, progress=progress)
    _reject_web_page(path, src.url)
    return path


def load_labels(
    label_set: str,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
    progress: hub.ProgressCallback | None = None,
) -> LabelSet:
    """Read a published label set, downloading its CSV if needed; checks the class count.

    Raises:
        ConfigError: If the set is unknown or the file does not have the published class count.
        DownloadError: If the file is not cached and cannot be downloaded.
    """
    path = resolve_labels(label_set, cache_dir=cache_dir, download=download, progress=progress)
    labels = LabelSet.from_csv(path)
    expected = LABEL_SETS[label_set].num_classes
    if len(labels) != expected:
        raise ConfigError(
            f"{path} has {len(labels)} classes but the {label_set} label set has {expected}; "
            "delete the file so that it is downloaded again"
        )
    return labels


def _reject_web_page(path: Path, url: str) -> None:
    """Delete a download that is an HTML page (an expired or rate-limited share link)."""
    with path.open("rb") as f:
        head = f.read(256).lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")):
        path.unlink()
        raise DownloadError(
            f"{url} returned a web page instead of the file (the link may have expired or be "
            "rate-limited); try again later or download it by hand and pass its path"
        )


def _suggest(name: str) -> str:
    """``"; did you mean ...?"`` for a misspelt name, or an empty string."""
    close = difflib.get_close_matches(name.lower(), [*ZOO, *BUNDLED], n=3, cutoff=0.6)
    return f"; did you mean {', '.join(close)}?" if close else ""
