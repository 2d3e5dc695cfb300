"""Optimizer construction: the official Adam with coupled L2 decay and a head-LR group.

OFFICIAL_CAVMAE.md §5.1: ``torch.optim.Adam(params, lr, weight_decay=5e-7, betas=(0.95, 0.999))``
(classic L2 added to the gradient, not AdamW), over the parameters with ``requires_grad`` only.
Fine-tuning uses two groups: the head (``model.head_parameters()``, replacing the official
hard-coded list of ``mlp_head`` names, STYLE.md anti-pattern 19) at ``head_lr_ratio`` x the LR,
and everything else at the LR. Each group carries ``lr_scale``, which
:func:`training.schedules.apply_lr` multiplies in; both groups follow one schedule.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from cavmae.errors import ConfigError

__all__ = ["param_groups", "build_optimizer"]

logger = logging.getLogger(__name__)


def param_groups(model: nn.Module, head_lr_ratio: float | None = None) -> list[dict[str, Any]]:
    """Trainable parameters split into ``base`` and (optionally) ``head`` groups.

    Args:
        model: the bare model (not DDP-wrapped). With ``head_lr_ratio`` it must provide
            ``head_parameters()``.
        head_lr_ratio: LR multiplier of the head group; ``None`` puts everything in one group.

    Returns:
        A list of param-group dicts with ``params``, ``name`` and ``lr_scale``. Groups without
        trainable parameters are left out (e.g. the base when it is frozen).

    Raises:
        ConfigError: if nothing is trainable, or a head ratio is given for a model without
            ``head_parameters()``.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ConfigError("the model has no trainable parameters")
    if head_lr_ratio is None:
        return [{"params": trainable, "name": "base", "lr_scale": 1.0}]
    if not hasattr(model, "head_parameters"):
        raise ConfigError(
            f"{type(model).__name__} has no head_parameters(); cannot use head_lr_ratio"
        )
    head_ids = {id(p) for p in model.head_parameters()}
    head = [p for p in trainable if id(p) in head_ids]
    base = [p for p in trainable if id(p) not in head_ids]
    groups = []
    if base:
        groups.append({"params": base, "name": "base", "lr_scale": 1.0})
    if head:
        groups.append({"params": head, "name": "head", "lr_scale": float(head_lr_ratio)})
    return groups


def build_optimizer(
    model: nn.Module,
    *,
    name: str = "adam",
    lr: float,
    betas: tuple[float, float] = (0.95, 0.999),
    weight_decay: float = 5e-7,
    eps: float = 1e-8,
    head_lr_ratio: float | None = None,
    fused: bool = False,
) -> torch.optim.Optimizer:
    """The official optimizer (``"adam"``: coupled L2) or ``"adamw"`` (decoupled decay).

    Args:
        model: the bare model.
        name: ``"adam"`` (official) or ``"adamw"``.
        lr: base learning rate (the schedule overwrites it every step).
        betas: Adam betas (official (0.95, 0.999)).
        weight_decay: L2 coefficient (official 5e-7), applied to every trainable parameter
            as in the official code.
        eps: Adam epsilon (official default 1e-8).
        head_lr_ratio: fine-tuning head multiplier (see :func:`param_groups`).
        fused: use the fused CUDA kernel (all parameters must be on a CUDA device).

    Returns:
        The optimizer; each group has ``name`` and ``lr_scale``.

    Raises:
        ConfigError: for an unknown optimizer name.
    """
    groups = param_groups(model, head_lr_ratio)
    for g in groups:
        g["lr"] = lr * g["lr_scale"]
    kwargs: dict[str, Any] = dict(lr=lr, betas=betas, weight_decay=weight_decay, eps=eps)
    if fused:
        kwargs["fused"] = True
    if name == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(groups, **kwargs)
    elif name == "adamw":
        opt = torch.optim.AdamW(groups, **kwargs)
    else:
        raise ConfigError(f"unknown optimizer {name!r}; choose 'adam' or 'adamw'")
    for g in opt.param_groups:
        n = sum(p.numel() for p in g["params"])
        logger.info(
            "param group %-4s: %d tensors, %.2fM values, lr x%g",
            g["name"],
            len(g["params"]),
            n / 1e6,
            g["lr_scale"],
        )
    return opt
