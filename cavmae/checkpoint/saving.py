"""Our checkpoint format: one ``.safetensors`` file plus a JSON document in its header.

The safetensors header metadata holds one string under the key ``"cavmae"``::

    {"format_version": 1, "kind": "pretrain" | "finetune",
     "model_config": {...ModelConfig...}, "feature_config": {...FeatureConfig...},
     "labels": {"names": [...], "mids": [...]} | null, "multi_label": bool | null,
     "mode": "multimodal" | ... | null,
     "provenance": {"created": ISO time, "library": ..., "torch": ..., "source": ...,
                    "source_sha256": ..., "training": {...}},
     "metrics": {...}, "extra": {...}}

Weights are ``unwrap(model).state_dict()`` with bare keys (MAE's ``model_without_ddp``,
nanoGPT's ``raw_model``), so the tensors equal the official ones key for key. Files are
written to a temporary name in the destination folder and moved into place with
``os.replace``, so a crash never leaves a half-written checkpoint under the final name.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cavmae.checkpoint.keys import normalise_keys, unwrap
from cavmae.checkpoint.loading import Labels, check_mode, load_checkpoint
from cavmae.checkpoint.reading import FORMAT_VERSION, METADATA_KEY, Source
from cavmae.config import FeatureConfig, ModelConfig
from cavmae.errors import ConfigError
from cavmae.labels import LabelSet

__all__ = ["save_model", "convert_checkpoint"]

logger = logging.getLogger(__name__)


def save_model(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    features: FeatureConfig | None = None,
    labels: LabelSet | None = None,
    multi_label: bool | None = None,
    mode: str | None = None,
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Write a model in our format: one ``.safetensors`` file with JSON metadata.

    Args:
        model: A ``CAVMAE``/``CAVMAEFT``, possibly wrapped in DDP or ``torch.compile``.
        path: Destination (conventionally ``*.safetensors``); parent folders are created.
        features: Preprocessing constants; default ``FeatureConfig.for_model(model.config)``.
        labels: Class names of a classifier (``label_dim`` of them).
        multi_label: Sigmoid (True) or softmax (False) head of a classifier.
        mode: Recommended forward mode of a classifier (``"multimodal"``, ...).
        meta: Optional ``provenance`` (dict, e.g. ``{"training": {...}}``) and ``metrics``
            (dict); any other keys are kept under ``extra``. Must be JSON-serialisable.

    Returns:
        The path written.

    Raises:
        ConfigError: If the model has no ``ModelConfig`` in ``.config``, the labels do not
            fit it, the mode is unknown, or ``meta`` is not JSON-serialisable.
    """
    from safetensors.torch import save_file

    bare = unwrap(model)
    cfg = getattr(bare, "config", None)
    if not isinstance(cfg, ModelConfig):
        raise ConfigError(f"{type(bare).__name__} has no ModelConfig in .config; cannot save it")
    if labels is not None and (cfg.is_pretrain or len(labels) != cfg.label_dim):
        raise ConfigError(f"{len(labels)} labels do not fit a model with label_dim={cfg.label_dim}")
    check_mode(mode)
    extra = dict(meta or {})
    provenance = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "library": f"cavmae-studio {_version()}",
        "torch": torch.__version__,
        **dict(extra.pop("provenance", None) or {}),
    }
    document = {
        "format_version": FORMAT_VERSION,
        "kind": "pretrain" if cfg.is_pretrain else "finetune",
        "model_config": cfg.to_dict(),
        "feature_config": (features or FeatureConfig.for_model(cfg)).to_dict(),
        "labels": labels.to_dict() if labels is not None else None,
        "multi_label": None if cfg.is_pretrain else multi_label,
        "mode": mode,
        "provenance": provenance,
        # Undefined metrics (e.g. the AP of a class without positives) are stored as null.
        "metrics": _finite_or_none(dict(extra.pop("metrics", None) or {})),
        "extra": extra,
    }
    try:
        text = json.dumps(document, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"checkpoint metadata must be JSON-serialisable: {e}") from e
    tensors = {
        k: v.detach().to("cpu").contiguous() for k, v in normalise_keys(bare.state_dict()).items()
    }

    dest = Path(path).expanduser()
    if dest.suffix != ".safetensors":
        logger.warning(
            "%s: cavmae checkpoints are safetensors files; prefer a .safetensors name", dest
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={METADATA_KEY: text})
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual file mode
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    logger.info("saved %s (%d tensors, %s)", dest, len(tensors), document["kind"])
    return dest


def convert_checkpoint(
    src: Source,
    dst: str | os.PathLike[str],
    *,
    labels: Labels = None,
    multi_label: bool | None = None,
    mode: str | None = None,
    label_dim: int | None = None,
    **overrides: Any,
) -> Path:
    """Convert an official ``.pth`` (or a zoo name) into our ``.safetensors`` format.

    The weights are copied unchanged. The metadata records the inferred config, the source's
    name and SHA-256, and what the zoo knows (labels, head type, mode, reported metric).

    Args:
        src: Official checkpoint path, state_dict, or zoo name.
        dst: Output ``.safetensors`` path.
        labels: Class names of a classifier (a ``LabelSet`` or a label CSV path).
        multi_label: Sigmoid (True) or softmax (False) head.
        mode: Recommended forward mode.
        label_dim: Turn a pretrained checkpoint into a classifier (fresh head).
        **overrides: ``ModelConfig`` fields the tensors do not determine (``num_heads``, ...).

    Returns:
        The written path.

    Raises:
        CheckpointError, ConfigError, DownloadError: As :func:`load_checkpoint`.
    """
    from cavmae.hub import sha256_file

    loaded = load_checkpoint(
        src, labels=labels, multi_label=multi_label, mode=mode, label_dim=label_dim, **overrides
    )
    provenance = dict(loaded.meta.get("provenance") or {})
    if loaded.source is not None:
        provenance.setdefault("source", loaded.source.name)
        provenance["source_sha256"] = sha256_file(loaded.source)
    provenance["converted_from"] = loaded.meta["format"]
    if loaded.meta.get("initialised_head"):
        provenance["initialised_head"] = True
    return save_model(
        loaded.model,
        dst,
        features=loaded.features,
        labels=loaded.labels,
        multi_label=loaded.multi_label,
        mode=loaded.mode,
        meta={
            **loaded.meta.get("extra", {}),
            "provenance": provenance,
            "metrics": loaded.meta.get("metrics"),
        },
    )


def _version() -> str:
    from cavmae import __version__

    return __version__


def _finite_or_none(value: Any) -> Any:
    """Replaces NaN/inf floats (recursively) by None, which strict JSON can store."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value


def _umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask
