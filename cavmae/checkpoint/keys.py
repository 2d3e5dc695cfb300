"""State_dict key normalisation and model unwrapping: the only place wrapper prefixes are handled.

Official checkpoints carry DataParallel's ``module.`` prefix on every key (OFFICIAL_CAVMAE.md
§9.1); ``torch.compile`` adds ``_orig_mod.``. nanoGPT strips the latter in one place; we strip
both here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from torch import nn

from cavmae.errors import CheckpointError

__all__ = ["HEAD_KEYS", "normalise_keys", "unwrap", "is_decoder_key"]

V = TypeVar("V")

#: The classifier head: left freshly initialised when a pretrained model is fine-tuned.
HEAD_KEYS = frozenset(
    {"mlp_head.0.weight", "mlp_head.0.bias", "mlp_head.1.weight", "mlp_head.1.bias"}
)


def normalise_keys(state_dict: Mapping[str, V]) -> dict[str, V]:
    """Strip the ``module.`` prefix (DataParallel/DDP) and ``_orig_mod.`` (torch.compile).

    Args:
        state_dict: Any mapping of parameter names to values (tensors or shapes).

    Returns:
        A new dict with bare keys, in the original order.

    Raises:
        CheckpointError: If two keys become the same after stripping.
    """
    out: dict[str, V] = {}
    for key, value in state_dict.items():
        k = str(key).replace("._orig_mod.", ".")  # a compiled submodule
        while k.startswith(("module.", "_orig_mod.")):
            k = k.split(".", 1)[1]
        if k in out:
            raise CheckpointError(f"keys collide after removing wrapper prefixes: {key!r} -> {k!r}")
        out[k] = value
    return out


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside DataParallel/DistributedDataParallel and ``torch.compile`` wrappers."""
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif isinstance(inner := getattr(model, "_orig_mod", None), nn.Module):
            model = inner  # torch._dynamo OptimizedModule
        else:
            return model


def is_decoder_key(key: str) -> bool:
    """True for the pretraining-only tensors a classifier does not have (§3.2's 173 keys)."""
    return key == "mask_token" or key.startswith("decoder_")


def _first(keys: Any, n: int = 5) -> str:
    """``'a, b, c, ...'``: the first ``n`` keys for an error message."""
    keys = list(keys)
    return ", ".join(keys[:n]) + (", ..." if len(keys) > n else "")
