"""Strict loading of any CAV-MAE checkpoint into ``CAVMAE`` / ``CAVMAEFT``.

Loads are strict: a missing, unexpected or mis-shaped key raises
:class:`~cavmae.errors.CheckpointError` naming the first few. The one sanctioned mismatch is
the official fine-tuning start (OFFICIAL_CAVMAE.md §3.2, pitfall §9.1): a pretrained CAVMAE
loaded into CAVMAEFT (``label_dim=N``) drops exactly its decoder-side tensors (53 for the
parity fixture, 173 at full size) and leaves exactly the four ``mlp_head`` tensors at their
fresh initialisation; both sets are asserted, as ``mae/main_finetune.py`` asserts its head.

A same-kind load builds the model on the ``meta`` device and assigns the checkpoint's tensors
(no random initialisation of ~190M parameters, no second copy in memory).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from cavmae.checkpoint.infer import infer_config, read_geometry
from cavmae.checkpoint.keys import HEAD_KEYS, _first, is_decoder_key
from cavmae.checkpoint.reading import Source, read_raw
from cavmae.config import FeatureConfig, ModelConfig
from cavmae.errors import CheckpointError, ConfigError
from cavmae.labels import LabelSet

__all__ = ["LoadedCheckpoint", "load_checkpoint", "load_model", "MODES", "check_mode"]

logger = logging.getLogger(__name__)

#: ``CAVMAEFT.forward`` modes (OFFICIAL_CAVMAE.md §2.8).
MODES = ("multimodal", "audioonly", "videoonly", "missingaudioonly", "missingvideoonly")
Labels = LabelSet | str | os.PathLike[str] | None


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A loaded model together with everything known about it.

    Attributes:
        model: ``CAVMAE`` or ``CAVMAEFT`` in eval mode, on the requested device.
        config: The model's architecture (equal to ``model.config``).
        features: Preprocessing constants to use with it.
        labels: Class names of a classifier, when known.
        multi_label: True for a sigmoid (multi-label, AudioSet) head, False for softmax
            (VGGSound), None when unknown or for a pretrained model.
        kind: ``"pretrain"`` (with decoder) or ``"finetune"`` (classifier).
        source: The file read, or None for an in-memory state_dict.
        meta: ``format`` (``"cavmae"``, ``"torch"``, ``"safetensors"``, ``"state_dict"``),
            ``mode`` (recommended forward mode or None), ``provenance``, ``metrics``,
            ``extra``, ``zoo`` (registry name or None) and ``initialised_head`` (True after a
            pretrained-to-classifier load, which also records ``dropped_keys`` and
            ``initialised_keys`` in state_dict order).
    """

    model: nn.Module
    config: ModelConfig
    features: FeatureConfig
    labels: LabelSet | None
    multi_label: bool | None
    kind: Literal["pretrain", "finetune"]
    source: Path | None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def mode(self) -> str | None:
        """The recommended ``CAVMAEFT.forward`` mode, e.g. ``"audioonly"``, or None."""
        return self.meta.get("mode")


def check_mode(mode: str | None) -> None:
    """Raise ConfigError unless ``mode`` is None or a ``CAVMAEFT.forward`` mode."""
    if mode is not None and mode not in MODES:
        raise ConfigError(f"unknown mode {mode!r}; expected one of {list(MODES)}")


def load_checkpoint(
    source: Source,
    *,
    device: str | torch.device = "cpu",
    label_dim: int | None = None,
    labels: Labels = None,
    multi_label: bool | None = None,
    mode: str | None = None,
    attn_impl: str | None = None,
    download: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: Callable[[int, int | None], None] | None = None,
    **overrides: Any,
) -> LoadedCheckpoint:
    """Load any CAV-MAE checkpoint into the right model, strictly.

    Args:
        source: An official ``.pth`` (with or without ``module.``/``_orig_mod.`` prefixes,
            possibly wrapped under ``model``/``state_dict``), one of our ``.safetensors``
            files, a state_dict, or a model name of :mod:`cavmae.zoo` (zoo entries are
            downloaded to the cache; bundled names resolve to ``assets/models``).
        device: Where to put the model.
        label_dim: For a pretrained checkpoint, build a classifier with this many classes
            (decoder dropped, head freshly initialised, OFFICIAL_CAVMAE.md §3.2). For a
            classifier it must equal the head's size.
        labels: Class names (a ``LabelSet`` or a label CSV path); default: from the
            checkpoint's metadata or the zoo entry.
        multi_label: Sigmoid (True) or softmax (False) head; default from metadata or zoo.
        mode: Recommended forward mode to record; default from metadata or zoo.
        attn_impl: ``"sdpa"`` or ``"eager"``; default the model's.
        download: Whether zoo names may be downloaded.
        cache_dir: Download cache root (default ``cavmae.hub.cache_dir()``).
        progress: Download progress callback ``(done, total)``.
        **overrides: Any ``ModelConfig`` field (``num_heads``, ``norm_pix_loss``, ...).

    Returns:
        The model (eval mode) and what is known about it.

    Raises:
        CheckpointError: Unreadable file, not a CAV-MAE checkpoint, or key mismatch.
        ConfigError: A bad or contradicting override, mode or label set.
        DownloadError: A zoo file cannot be downloaded.
    """
    defaults: dict[str, Any] = {}
    if not isinstance(source, Mapping) and not Path(source).expanduser().is_file():
        source, defaults = _from_registry(str(source), cache_dir, download, progress)
    raw = read_raw(source, classifier=label_dim)
    where = str(raw.source) if raw.source is not None else "the given state_dict"
    stored = raw.metadata
    cfg_meta = stored.get("model_config") or defaults.get("model_config") or {}
    cfg = infer_config(raw.state_dict, metadata=cfg_meta, label_dim=label_dim, **overrides)
    kind, geometry, _ = read_geometry(raw.state_dict)

    if kind == "pretrain" and not cfg.is_pretrain:
        # The stored model, for the key check (head counts do not change keys).
        stored_cfg = cfg.replace(
            label_dim=None,
            decoder_embed_dim=geometry["decoder_embed_dim"],
            decoder_depth=geometry["decoder_depth"],
            decoder_num_heads=1,
        )
        model, dropped = _pretrained_into_classifier(
            cfg, stored_cfg, raw.state_dict, where, attn_impl
        )
        same_kind = False
    else:
        model = _load_same_kind(cfg, raw.state_dict, where, attn_impl, owned=raw.source is not None)
        same_kind, dropped = True, []
    model.eval().to(device)

    label_set = _labels(labels, stored, defaults, cfg, same_kind, cache_dir, download, progress)
    if multi_label is None and same_kind:
        multi_label = stored.get("multi_label", defaults.get("multi_label"))
    if mode is None and same_kind:
        mode = stored.get("mode", defaults.get("mode"))
    check_mode(mode)
    features = (
        FeatureConfig.from_dict(stored["feature_config"])
        if stored.get("feature_config")
        else FeatureConfig.for_model(cfg)
    )
    meta = {
        "format": raw.format,
        "mode": mode,
        "provenance": dict(stored.get("provenance") or defaults.get("provenance") or {}),
        "metrics": dict(stored.get("metrics") or defaults.get("metrics") or {}),
        "extra": dict(stored.get("extra") or {}),
        "zoo": defaults.get("zoo"),
        "initialised_head": not same_kind,
    }
    if not same_kind:  # the official strict=False lists, asserted (OFFICIAL_CAVMAE.md §3.2)
        meta["dropped_keys"] = dropped
        meta["initialised_keys"] = [k for k in model.state_dict() if k in HEAD_KEYS]
    return LoadedCheckpoint(
        model=model,
        config=cfg,
        features=features,
        labels=label_set,
        multi_label=None if cfg.is_pretrain else multi_label,
        kind="pretrain" if cfg.is_pretrain else "finetune",
        source=raw.source,
        meta=meta,
    )


def load_model(
    source: Source,
    *,
    device: str | torch.device = "cpu",
    label_dim: int | None = None,
    labels: Labels = None,
    **overrides: Any,
) -> nn.Module:
    """Load a checkpoint and return only the model (see :func:`load_checkpoint`).

    Args:
        source: A checkpoint path, a state_dict, or a zoo/bundled model name.
        device: Where to put the model.
        label_dim: Classes of a classifier built from a pretrained checkpoint.
        labels: Class names (checked against the head).
        **overrides: Any ``ModelConfig`` field, and the other keywords of ``load_checkpoint``.

    Returns:
        ``CAVMAE`` or ``CAVMAEFT`` in eval mode.
    """
    return load_checkpoint(
        source, device=device, label_dim=label_dim, labels=labels, **overrides
    ).model


# --- building and strict loading --------------------------------------------------------


def _build(cfg: ModelConfig, attn_impl: str | None, device: str | None = None) -> nn.Module:
    from cavmae.models import CAVMAE, CAVMAEFT

    cls = CAVMAE if cfg.is_pretrain else CAVMAEFT
    kwargs = {} if attn_impl is None else {"attn_impl": attn_impl}
    if device is None:
        return cls.from_config(cfg, **kwargs)
    with torch.device(device):
        return cls.from_config(cfg, **kwargs)


def _mismatch(
    expected: Mapping[str, Any], sd: Mapping[str, torch.Tensor], skip: frozenset[str] = frozenset()
) -> str:
    """A report of missing / unexpected / mis-shaped keys ("" when they match)."""
    missing = [k for k in expected if k not in sd and k not in skip]
    unexpected = [k for k in sd if k not in expected]
    shapes = [
        f"{k} {tuple(sd[k].shape)} (model {tuple(expected[k].shape)})"
        for k in sd
        if k in expected and tuple(sd[k].shape) != tuple(expected[k].shape)
    ]
    parts = [
        f"{len(keys)} {label}: {_first(keys)}"
        for label, keys in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("with the wrong shape", shapes),
        )
        if keys
    ]
    return "; ".join(parts)


def _describe(cfg: ModelConfig) -> str:
    return (
        f"{'CAVMAE' if cfg.is_pretrain else 'CAVMAEFT'}(embed_dim={cfg.embed_dim}, "
        f"depth={cfg.modality_specific_depth}+{cfg.num_shared_blocks}, "
        f"audio_length={cfg.audio_length}, img_size={cfg.img_size}, label_dim={cfg.label_dim})"
    )


def _load_same_kind(
    cfg: ModelConfig,
    sd: Mapping[str, torch.Tensor],
    where: str,
    attn_impl: str | None,
    *,
    owned: bool,
) -> nn.Module:
    """Build on the meta device and assign the checkpoint's tensors (copies unless ``owned``)."""
    model = _build(cfg, attn_impl, device="meta")
    expected = model.state_dict()
    report = _mismatch(expected, sd)
    if report:
        raise CheckpointError(f"{where} does not match {_describe(cfg)}: {report}")
    names = {n for n, _ in model.named_parameters()} | {n for n, _ in model.named_buffers()}
    if not names <= set(expected):
        # Tensors that checkpoints do not carry (non-persistent buffers) need a real build.
        model = _build(cfg, attn_impl)
        model.load_state_dict(sd, strict=True)
        return model
    tensors = {k: v.to(dtype=expected[k].dtype, copy=not owned) for k, v in sd.items()}
    model.load_state_dict(tensors, strict=True, assign=True)
    return model


def _pretrained_into_classifier(
    cfg: ModelConfig,
    stored_cfg: ModelConfig,
    sd: Mapping[str, torch.Tensor],
    where: str,
    attn_impl: str | None,
) -> tuple[nn.Module, list[str]]:
    """OFFICIAL_CAVMAE.md §3.2: drop exactly the decoder, initialise exactly ``mlp_head``.

    Returns the classifier and the dropped keys in state_dict order."""
    pretrained = _build(stored_cfg, None, device="meta").state_dict()
    report = _mismatch(pretrained, sd)
    if report:
        raise CheckpointError(f"{where} is not a complete {_describe(stored_cfg)}: {report}")
    model = _build(cfg, attn_impl)
    own = model.state_dict()
    dropped = set(pretrained) - set(own)
    added = set(own) - set(pretrained)
    if not all(is_decoder_key(k) for k in dropped) or added != HEAD_KEYS:
        raise CheckpointError(
            f"unexpected pretrained -> classifier difference: dropping {_first(sorted(dropped))}, "
            f"adding {sorted(added)}; expected only decoder keys and {sorted(HEAD_KEYS)}"
        )
    kept = {k: v for k, v in sd.items() if k not in dropped}
    result = model.load_state_dict(kept, strict=False)
    if set(result.missing_keys) != HEAD_KEYS or result.unexpected_keys:
        raise CheckpointError(f"{where}: unexpected pretrained -> classifier load result {result}")
    logger.info(
        "%s: pretrained -> classifier: dropped %d decoder tensors, %s freshly initialised",
        where,
        len(dropped),
        ", ".join(sorted(HEAD_KEYS)),
    )
    return model, [k for k in sd if k in dropped]


# --- metadata sources -------------------------------------------------------------------


def _from_registry(
    name: str, cache_dir: Any, download: bool, progress: Any
) -> tuple[Path, dict[str, Any]]:
    """Resolve a zoo/bundled name to a file, with the zoo entry's metadata as defaults."""
    from cavmae import zoo

    path = zoo.resolve(name, cache_dir=cache_dir, download=download, progress=progress)
    entry = zoo.ZOO.get(name.lower())
    if entry is None:  # a bundled model: our own format carries its metadata
        return path, {}
    return path, {
        "zoo": entry.name,
        "model_config": entry.model_config.to_dict(),
        "multi_label": entry.multi_label,
        "mode": entry.mode,
        "label_set": entry.label_set,
        "provenance": {"source": entry.url, "zoo": entry.name, "purpose": entry.purpose},
        "metrics": {"reported": entry.metric} if entry.metric else {},
    }


def _labels(
    labels: Labels,
    stored: Mapping[str, Any],
    defaults: Mapping[str, Any],
    cfg: ModelConfig,
    same_kind: bool,
    cache_dir: Any,
    download: bool,
    progress: Any,
) -> LabelSet | None:
    """The label set: the argument, else stored metadata, else the zoo's published CSV."""
    if labels is not None and not isinstance(labels, LabelSet):
        labels = LabelSet.from_csv(labels)
    if labels is None and same_kind:
        if stored.get("labels"):
            labels = LabelSet.from_dict(stored["labels"])
        elif defaults.get("label_set"):
            from cavmae import zoo

            labels = zoo.load_labels(
                defaults["label_set"], cache_dir=cache_dir, download=download, progress=progress
            )
    if labels is None:
        return None
    if cfg.is_pretrain:
        logger.warning(
            "labels ignored: a pretrained model has no classifier (pass label_dim=N to build one)"
        )
        return None
    if len(labels) != cfg.label_dim:
        raise ConfigError(
            f"the label set has {len(labels)} classes but the model has label_dim={cfg.label_dim}"
        )
    return labels
