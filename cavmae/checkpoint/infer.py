"""Architecture inference: a :class:`~cavmae.config.ModelConfig` from state_dict shapes.

Official ``.pth`` files hold nothing but tensors (OFFICIAL_CAVMAE.md §3.1), so the
architecture is read from their shapes, with key names as in OFFICIAL_CAVMAE.md §9.2:

====================  ==============================================================
field                 read from
====================  ==============================================================
embed_dim, in_chans,  ``patch_embed_v.proj.weight`` (D, C, p, p)
patch_size
depths                number of ``blocks_a.i`` / ``blocks_u.i`` / ``decoder_blocks.i``
mlp_ratio             ``blocks_u.0.mlp.fc1.weight`` (D * ratio, D)
img_size              ``pos_embed_v`` (1, (img/p)^2, D)
audio_length          ``pos_embed_a`` (1, F/p * T/p, D) with F = num_mel_bins (128)
decoder_embed_dim     ``decoder_embed.weight`` (D_dec, D)
label_dim             ``mlp_head.1.weight`` (C, D)
kind                  decoder keys (pretrained) or ``mlp_head`` (fine-tuned)
====================  ==============================================================

Head counts, ``norm_pix_loss`` and ``tr_pos`` change no shape; they come from overrides,
then metadata, then the official defaults.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any, Literal

from cavmae.checkpoint.keys import _first, normalise_keys
from cavmae.config import OFFICIAL_TOTAL_DEPTH, ModelConfig
from cavmae.errors import CheckpointError, ConfigError

__all__ = ["infer_config", "read_geometry"]

logger = logging.getLogger(__name__)

Kind = Literal["pretrain", "finetune"]

_FIELDS = ModelConfig.__dataclass_fields__
_OFFICIAL_NUM_HEADS = 12
_OFFICIAL_DECODER_NUM_HEADS = 16
_DECODER_FIELDS = ("decoder_embed_dim", "decoder_depth", "decoder_num_heads")


def _shape(v: Any) -> tuple[int, ...]:
    """A tensor's shape, or a plain shape sequence, as a tuple."""
    return tuple(int(s) for s in (v.shape if hasattr(v, "shape") else v))


def _count(shapes: Mapping[str, Any], prefix: str) -> int:
    """Number of blocks ``prefix.0``, ``prefix.1``, ... (the indices must be 0..n-1)."""
    idx = {int(k[len(prefix) + 1 :].split(".", 1)[0]) for k in shapes if k.startswith(prefix + ".")}
    if idx != set(range(len(idx))):
        raise CheckpointError(f"{prefix} has non-consecutive block indices {sorted(idx)[:12]}")
    return len(idx)


def read_geometry(state_dict: Mapping[str, Any]) -> tuple[Kind, dict[str, Any], int]:
    """Everything the tensors determine.

    Args:
        state_dict: Normalised keys mapped to tensors or shapes.

    Returns:
        ``(kind, fields, L_a)``: ``"pretrain"``/``"finetune"``, the ModelConfig fields read
        from shapes (``shared_depth`` as the real count), and the number of audio tokens.

    Raises:
        CheckpointError: If the keys are not those of a CAV-MAE model.
    """
    shapes = state_dict
    required = (
        "patch_embed_a.proj.weight",
        "patch_embed_v.proj.weight",
        "pos_embed_a",
        "pos_embed_v",
        "blocks_u.0.mlp.fc1.weight",
    )
    missing = [k for k in required if k not in shapes]
    if missing:
        raise CheckpointError(
            f"not a CAV-MAE checkpoint: no {', '.join(missing)} (its keys begin "
            f"{_first(shapes, 4)}); a CAV-MAE state_dict has patch_embed_a/v, pos_embed_a/v and "
            "blocks_a/v/u"
        )
    has_decoder, has_head = "decoder_embed.weight" in shapes, "mlp_head.1.weight" in shapes
    if has_decoder == has_head:
        what = "both a decoder and mlp_head" if has_decoder else "neither a decoder nor mlp_head"
        raise CheckpointError(f"cannot tell pretrained from fine-tuned: the state_dict has {what}")
    d, c, p, p2 = _shape(shapes["patch_embed_v.proj.weight"])  # (D, C, p, p)
    d_a, c_a, pa, _ = _shape(shapes["patch_embed_a.proj.weight"])  # (D, 1, p, p)
    if p != p2 or (d_a, c_a, pa) != (d, 1, p):
        raise CheckpointError(
            f"patch embeddings disagree: visual {(d, c, p, p2)}, audio {(d_a, c_a, pa)}; "
            "expected square patches of one size and a single audio channel"
        )
    n_v = _shape(shapes["pos_embed_v"])[1]  # (1, L_v, D)
    side = math.isqrt(n_v)
    if side * side != n_v:
        raise CheckpointError(f"pos_embed_v has {n_v} tokens, not a square grid")
    depth_a, depth_v = _count(shapes, "blocks_a"), _count(shapes, "blocks_v")
    if depth_a != depth_v:
        raise CheckpointError(f"blocks_a has {depth_a} blocks but blocks_v has {depth_v}")
    hidden = _shape(shapes["blocks_u.0.mlp.fc1.weight"])[0]  # (D * mlp_ratio, D)
    fields: dict[str, Any] = dict(
        img_size=side * p,
        patch_size=p,
        in_chans=c,
        embed_dim=d,
        modality_specific_depth=depth_a,
        shared_depth=_count(shapes, "blocks_u"),
        mlp_ratio=hidden / d,
    )
    n_a = _shape(shapes["pos_embed_a"])[1]  # (1, L_a, D)
    if has_decoder:
        fields["decoder_embed_dim"] = _shape(shapes["decoder_embed.weight"])[0]  # (D_dec, D)
        fields["decoder_depth"] = _count(shapes, "decoder_blocks")
        return "pretrain", fields, n_a
    fields["label_dim"] = _shape(shapes["mlp_head.1.weight"])[0]  # (C, D)
    return "finetune", fields, n_a


def infer_config(
    state_dict: Mapping[str, Any],
    *,
    metadata: Mapping[str, Any] | None = None,
    **overrides: Any,
) -> ModelConfig:
    """The architecture of a state_dict, from tensor shapes plus overrides and metadata.

    ``label_dim`` on a pretrained state_dict asks for a classifier (the result is then the
    CAVMAEFT config, with ``tr_pos=True`` unless given); on a fine-tuned one it must equal the
    head's size. A classifier's config keeps the default decoder fields (it has no decoder;
    decoder overrides are ignored).

    Args:
        state_dict: Keys (wrapper prefixes allowed) mapped to tensors or plain shapes.
        metadata: A stored model config (``ModelConfig.to_dict()`` form), lower priority than
            overrides; the fields the tensors determine are checked against them.
        **overrides: Any ``ModelConfig`` field.

    Returns:
        The config of the model to build.

    Raises:
        CheckpointError: If the keys are not a CAV-MAE state_dict, or the metadata contradicts
            the tensors.
        ConfigError: If an override is unknown or contradicts the tensors, or an official
            default head count does not divide the width (then pass ``num_heads=...``).
    """
    unknown = sorted(set(overrides) - set(_FIELDS))
    if unknown:
        raise ConfigError(f"unknown model settings {unknown}; valid ones are {sorted(_FIELDS)}")
    kind, fields, n_a = read_geometry(normalise_keys(state_dict))
    meta = {k: v for k, v in (metadata or {}).items() if k in _FIELDS}
    to_classifier = kind == "pretrain" and overrides.get("label_dim") is not None
    if to_classifier:  # the stored pretraining settings of head and decoder do not apply
        meta = {k: v for k, v in meta.items() if k not in ("label_dim", "tr_pos", "norm_pix_loss")}

    # L_a = (num_mel_bins / p) * (audio_length / p): the frequency side must be given.
    p = fields["patch_size"]
    mel = overrides.get("num_mel_bins", meta.get("num_mel_bins", 128))
    if mel % p or n_a % (mel // p):
        raise ConfigError(
            f"pos_embed_a has {n_a} tokens, which num_mel_bins={mel} with patch_size {p} cannot "
            "produce; pass the model's num_mel_bins"
        )
    fields["num_mel_bins"] = mel
    fields["audio_length"] = n_a // (mel // p) * p

    if kind == "finetune" and overrides.get("label_dim") not in (None, fields["label_dim"]):
        raise ConfigError(
            f"label_dim={overrides['label_dim']} contradicts the checkpoint, a classifier with "
            f"{fields['label_dim']} classes (mlp_head.1.weight); a new head needs fine-tuning "
            "from a pretrained checkpoint"
        )
    for name, value in fields.items():
        _check(name, value, overrides, "the override", ConfigError)
        if not (name == "num_mel_bins" and name in overrides):
            _check(name, value, meta, "the stored metadata", CheckpointError)
    if fields["shared_depth"] == OFFICIAL_TOTAL_DEPTH - fields["modality_specific_depth"]:
        fields["shared_depth"] = None  # the official rule; keeps configs canonical

    def pick(name: str, default: Any) -> Any:
        return overrides[name] if name in overrides else meta.get(name, default)

    fields["num_heads"] = pick("num_heads", None)
    fields["norm_pix_loss"] = pick("norm_pix_loss", False)
    if kind == "finetune" or to_classifier:
        fields["label_dim"] = fields.get("label_dim") or overrides["label_dim"]
        for name in _DECODER_FIELDS:  # a classifier has no decoder: canonical defaults
            fields[name] = _FIELDS[name].default
        fields["tr_pos"] = pick("tr_pos", True)  # CAVMAEFT's default
    else:
        fields["decoder_num_heads"] = pick("decoder_num_heads", None)
        fields["tr_pos"] = pick("tr_pos", False)  # CAVMAE's default
        _default_heads(
            fields, "decoder_num_heads", "decoder_embed_dim", _OFFICIAL_DECODER_NUM_HEADS
        )
    _default_heads(fields, "num_heads", "embed_dim", _OFFICIAL_NUM_HEADS)
    return ModelConfig(**fields)


def _check(
    name: str, value: Any, given: Mapping[str, Any], what: str, error: type[Exception]
) -> None:
    """Raise ``error`` if ``given[name]`` is set and differs from the tensors' ``value``."""
    if given.get(name) is None:
        return
    g = given[name]
    same = math.isclose(float(g), float(value)) if name == "mlp_ratio" else g == value
    if same:
        return
    hint = ""
    if name == "audio_length":
        hint = (
            f" (read from pos_embed_a with num_mel_bins={given.get('num_mel_bins', 128)}; pass "
            "num_mel_bins if the model does not use 128 mel bins)"
        )
    raise error(
        f"{name}={g!r} from {what} contradicts the checkpoint, whose tensors give {name}={value!r}{hint}"
    )


def _default_heads(fields: dict[str, Any], name: str, width: str, official: int) -> None:
    """Fill in the official head count, or explain why it cannot be used."""
    if fields.get(name) is not None:
        return
    if fields[width] % official:
        raise ConfigError(
            f"{name} cannot be read from the weights, and the official default {name}={official} "
            f"does not divide {width}={fields[width]}: pass {name}=N (a divisor of {fields[width]})"
        )
    fields[name] = official
