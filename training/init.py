"""Initialise a CAVMAE from an ImageNet MAE ViT (the official ``IN-initial.pth`` recipe).

OFFICIAL_CAVMAE.md §3.3 and pitfall 9: every official AS-2M / VGGSound pretraining run starts
from the facebookresearch/mae ViT-B/16 checkpoint *with decoder*, mapped into CAVMAE by
``src/adapt_vmae_weights.py``:

- MAE blocks ``0..d-1`` go into **both** ``blocks_a`` and ``blocks_v`` (d =
  ``modality_specific_depth``), the following blocks into ``blocks_u`` (their ``norm1``/``norm2``
  also into the ``_a``/``_v`` copies);
- the final ``norm`` into ``norm``, ``norm_a`` and ``norm_v``;
- ``patch_embed`` into ``patch_embed_v``, and its weight **summed over the RGB channels** into
  ``patch_embed_a``;
- ``pos_embed`` without the cls row into ``pos_embed_v``;
- the decoder unchanged (``decoder_pred`` into ``decoder_pred_v``, its **first P_a output rows**
  into ``decoder_pred_a``, ``decoder_pos_embed`` without the cls row into
  ``decoder_pos_embed_v``).

Not taken from MAE (they keep the fresh CAV-MAE initialisation): ``modality_a/v``,
``decoder_modality_a/v``, the audio positional tables, and the unused ``_a``/``_v`` LayerNorms
of ``blocks_a``, ``blocks_v`` and ``decoder_blocks``. An encoder-only source (timm's ViT
weights, e.g. ``vit_base_patch16_224.mae``) leaves the whole decoder fresh as well. The load
asserts this exact missing set (STYLE.md rule 15).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cavmae.config import ModelConfig
from cavmae.errors import CheckpointError, ConfigError

__all__ = [
    "IMAGENET_MAE_PREFIX",
    "BLOCK_PARAMS",
    "resolve_init_checkpoint",
    "adapt_mae_vit",
    "expected_missing_keys",
    "read_mae_state_dict",
    "load_imagenet_mae",
]

logger = logging.getLogger(__name__)

#: ``init = "imagenet-mae:<timm model name or checkpoint path>"`` in a training config.
IMAGENET_MAE_PREFIX = "imagenet-mae:"

#: Parameter names of one ViT block (timm / MAE / CAV-MAE agree on them).
BLOCK_PARAMS: tuple[str, ...] = (
    "norm1.weight",
    "norm1.bias",
    "attn.qkv.weight",
    "attn.qkv.bias",
    "attn.proj.weight",
    "attn.proj.bias",
    "norm2.weight",
    "norm2.bias",
    "mlp.fc1.weight",
    "mlp.fc1.bias",
    "mlp.fc2.weight",
    "mlp.fc2.bias",
)
_SIDE_NORMS = ("norm1_a", "norm1_v", "norm2_a", "norm2_v")


def resolve_init_checkpoint(init: str) -> str:
    """The checkpoint a ``--init`` value names: a run directory becomes its final model.

    ``--init runs/pt`` (a finished ``training.pretrain``/``training.finetune`` run) means
    ``runs/pt/model.safetensors``; files and zoo names are returned unchanged.

    Raises:
        CheckpointError: for a directory without ``model.safetensors`` (an unfinished run).
    """
    p = Path(init).expanduser()
    if not p.is_dir():
        return init
    model = p / "model.safetensors"
    if not model.is_file():
        raise CheckpointError(
            f"--init {init} is a folder without model.safetensors (not a finished training "
            "run); finish or resume that run first, or pass a checkpoint file "
            f"(e.g. {p / 'checkpoints' / 'epoch_001.safetensors'}) or a zoo name"
        )
    return str(model)


def _count_blocks(sd: Mapping[str, torch.Tensor], prefix: str) -> int:
    ids = {int(k.split(".")[1]) for k in sd if k.startswith(prefix + ".")}
    return max(ids) + 1 if ids else 0


def _drop_cls_row(table: torch.Tensor, num_patches: int, name: str) -> torch.Tensor:
    """(1, 1 + L, D) or (1, L, D) -> (1, L, D)."""
    if table.shape[1] == num_patches + 1:
        return table[:, 1:, :]  # (1, L, D)
    if table.shape[1] == num_patches:
        return table
    raise ConfigError(
        f"{name} has {table.shape[1]} rows but the CAVMAE config has {num_patches} visual "
        "patches; use a ViT with the same img_size / patch_size"
    )


def adapt_mae_vit(
    state_dict: Mapping[str, torch.Tensor], cfg: ModelConfig
) -> dict[str, torch.Tensor]:
    """Map an ImageNet MAE / timm ViT state_dict onto CAVMAE keys (OFFICIAL_CAVMAE.md §3.3).

    Args:
        state_dict: MAE (``mae_pretrain_vit_base_full.pth``'s ``model``, with decoder) or timm
            ViT weights (encoder only); ``module.`` prefixes are stripped.
        cfg: the target pretraining model's config. Its ``modality_specific_depth`` plus
            ``num_shared_blocks`` must not exceed the source depth; widths must match.

    Returns:
        The CAVMAE tensors that come from the source (fresh copies); everything else is left
        to the model's initialisation (see :func:`expected_missing_keys`).

    Raises:
        ConfigError: if the source is too shallow, or widths or patch counts differ.
    """
    from cavmae.checkpoint import normalise_keys

    sd = normalise_keys(state_dict)
    for k in ("patch_embed.proj.weight", "pos_embed", "blocks.0.attn.qkv.weight"):
        if k not in sd:
            raise CheckpointError(f"not a ViT/MAE state_dict: key {k!r} is missing")
    depth = _count_blocks(sd, "blocks")
    d_spec, d_shared = cfg.modality_specific_depth, cfg.num_shared_blocks
    if d_spec + d_shared > depth:
        raise ConfigError(
            f"the ViT has {depth} blocks but the CAVMAE config needs {d_spec} modality-specific "
            f"+ {d_shared} shared = {d_spec + d_shared}"
        )
    width = sd["patch_embed.proj.weight"].shape[0]
    if width != cfg.embed_dim:
        raise ConfigError(f"the ViT width is {width} but the CAVMAE embed_dim is {cfg.embed_dim}")

    out: dict[str, torch.Tensor] = {}

    def put(dst: str, t: torch.Tensor) -> None:
        out[dst] = t.detach().clone()

    # ------------------------------------------------------------ encoder
    for i in range(d_spec):
        for name in BLOCK_PARAMS:
            put(f"blocks_a.{i}.{name}", sd[f"blocks.{i}.{name}"])
            put(f"blocks_v.{i}.{name}", sd[f"blocks.{i}.{name}"])
    for j in range(d_shared):
        src = d_spec + j
        for name in BLOCK_PARAMS:
            put(f"blocks_u.{j}.{name}", sd[f"blocks.{src}.{name}"])
        for m in ("a", "v"):
            for norm in ("norm1", "norm2"):
                for p in ("weight", "bias"):
                    put(f"blocks_u.{j}.{norm}_{m}.{p}", sd[f"blocks.{src}.{norm}.{p}"])
    final = "norm" if "norm.weight" in sd else "fc_norm"  # timm avg-pool ViTs use fc_norm
    if f"{final}.weight" not in sd:
        raise CheckpointError("the ViT state_dict has neither 'norm' nor 'fc_norm' weights")
    for dst in ("norm", "norm_a", "norm_v"):
        put(f"{dst}.weight", sd[f"{final}.weight"])
        put(f"{dst}.bias", sd[f"{final}.bias"])
    w = sd["patch_embed.proj.weight"]  # (D, 3, p, p)
    put("patch_embed_v.proj.weight", w)
    put("patch_embed_v.proj.bias", sd["patch_embed.proj.bias"])
    # Parity: the audio patch embedding is the RGB sum of MAE's (OFFICIAL_CAVMAE.md §3.3).
    put("patch_embed_a.proj.weight", w.sum(dim=1, keepdim=True))  # (D, 1, p, p)
    put("patch_embed_a.proj.bias", sd["patch_embed.proj.bias"])
    put("pos_embed_v", _drop_cls_row(sd["pos_embed"], cfg.num_visual_patches, "pos_embed"))

    # ------------------------------------------------------------ decoder (MAE only)
    if "decoder_embed.weight" in sd:
        dec_depth = _count_blocks(sd, "decoder_blocks")
        if cfg.decoder_depth > dec_depth:
            raise ConfigError(
                f"the MAE decoder has {dec_depth} blocks but the config asks for {cfg.decoder_depth}"
            )
        put("mask_token", sd["mask_token"])
        put("decoder_embed.weight", sd["decoder_embed.weight"])
        put("decoder_embed.bias", sd["decoder_embed.bias"])
        for j in range(cfg.decoder_depth):
            for name in BLOCK_PARAMS:
                put(f"decoder_blocks.{j}.{name}", sd[f"decoder_blocks.{j}.{name}"])
        put("decoder_norm.weight", sd["decoder_norm.weight"])
        put("decoder_norm.bias", sd["decoder_norm.bias"])
        put("decoder_pred_v.weight", sd["decoder_pred.weight"])
        put("decoder_pred_v.bias", sd["decoder_pred.bias"])
        p_a = cfg.patch_size * cfg.patch_size
        # Parity: decoder_pred_a takes MAE's first P_a output rows (OFFICIAL_CAVMAE.md §3.3).
        put("decoder_pred_a.weight", sd["decoder_pred.weight"][:p_a])  # (P_a, D_dec)
        put("decoder_pred_a.bias", sd["decoder_pred.bias"][:p_a])  # (P_a,)
        put(
            "decoder_pos_embed_v",
            _drop_cls_row(sd["decoder_pos_embed"], cfg.num_visual_patches, "decoder_pos_embed"),
        )
    return out


def expected_missing_keys(model: nn.Module, with_decoder: bool) -> set[str]:
    """CAVMAE keys that an ImageNet MAE source does not provide (fresh initialisation)."""
    missing = {
        "modality_a",
        "modality_v",
        "pos_embed_a",
        "decoder_modality_a",
        "decoder_modality_v",
        "decoder_pos_embed_a",
    }
    for name, _ in model.named_parameters():
        parts = name.split(".")
        if parts[0] in ("blocks_a", "blocks_v", "decoder_blocks") and parts[2] in _SIDE_NORMS:
            missing.add(name)
        elif not with_decoder and (name.startswith("decoder_") or name == "mask_token"):
            missing.add(name)
    return missing


def read_mae_state_dict(source: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """ViT weights from a checkpoint file (``weights_only``) or a timm model name.

    A path is read with ``torch.load(weights_only=True)`` or safetensors, unwrapping a
    ``model`` entry (MAE's format). Anything else is passed to
    ``timm.create_model(name, pretrained=True)``, which needs network access (or timm's cache).

    Raises:
        CheckpointError: if the file is unreadable or the timm weights cannot be fetched.
    """
    p = Path(source).expanduser()
    if p.is_file():
        from training.checkpointing import load_state_dict_file

        return load_state_dict_file(p)
    try:
        import timm

        vit = timm.create_model(str(source), pretrained=True)
    except Exception as e:  # timm/hub raise many types (offline, unknown name, HTTP)
        raise CheckpointError(
            f"cannot get ImageNet MAE weights {str(source)!r}: it is not a file, and timm could "
            f"not create it with pretrained weights ({type(e).__name__}: {e}). Without network "
            "access, download mae_pretrain_vit_base_full.pth elsewhere and pass its path"
        ) from e
    return vit.state_dict()


def load_imagenet_mae(model: nn.Module, source: str | os.PathLike[str] | Mapping[str, Any]) -> None:
    """Copy ImageNet MAE weights into a freshly built CAVMAE, asserting the missing set.

    Args:
        model: a ``CAVMAE`` (pretraining model) with ``.config``.
        source: a state_dict, a checkpoint path, or a timm model name.

    Raises:
        CheckpointError: if any key outside the expected set is missing, or shapes differ.
    """
    sd = dict(source) if isinstance(source, Mapping) else read_mae_state_dict(source)
    adapted = adapt_mae_vit(sd, model.config)
    with_decoder = "decoder_embed.weight" in adapted
    own = model.state_dict()
    for k, v in adapted.items():
        if k not in own:
            raise CheckpointError(f"adapted key {k!r} does not exist in the CAVMAE model")
        if own[k].shape != v.shape:
            raise CheckpointError(
                f"{k}: ImageNet MAE gives shape {tuple(v.shape)}, the model has {tuple(own[k].shape)}"
            )
    result = model.load_state_dict(adapted, strict=False)
    missing = set(result.missing_keys)
    expected = expected_missing_keys(model, with_decoder)
    if missing != expected or result.unexpected_keys:
        raise CheckpointError(
            "ImageNet MAE initialisation does not cover the expected keys: unexpectedly missing "
            f"{sorted(missing - expected)[:5]}, unexpectedly loaded {sorted(expected - missing)[:5]}, "
            f"unexpected {sorted(result.unexpected_keys)[:5]}"
        )
    logger.info(
        "initialised %d tensors from ImageNet MAE (%s decoder); %d keep their fresh init",
        len(adapted),
        "with" if with_decoder else "without",
        len(missing),
    )
