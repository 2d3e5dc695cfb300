"""Training-state files: atomic writes, resumable ``last.pt``, RNG capture, weight averaging.

``last.pt`` holds everything needed to continue a run exactly (model, optimizer, GradScaler,
epoch and step, sampler position and the torch/numpy/python/CUDA RNG states of every rank) as
plain dicts, lists, numbers, strings and tensors, so it loads with
``torch.load(weights_only=True)`` (STYLE.md rule 15; the official ``progress.pkl`` and
``args`` pickles cannot). Every file is written to a temporary name in the same directory and
moved into place with ``os.replace``: a kill leaves either the old file or the new one, never a
truncated one.

Weight averaging follows the official ``wa_model`` (OFFICIAL_CAVMAE.md §3.4): a uniform average
of every tensor over the epoch checkpoints of a window.
"""

from __future__ import annotations

import json
import logging
import os
import random
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cavmae.errors import CheckpointError

__all__ = [
    "STATE_FORMAT",
    "atomic_save",
    "atomic_write_text",
    "atomic_write_json",
    "capture_rng_state",
    "restore_rng_state",
    "load_training_state",
    "load_state_dict_file",
    "weight_average",
    "epoch_model_path",
]

logger = logging.getLogger(__name__)

#: Format tag stored in ``last.pt``; bump the version when the layout changes.
STATE_FORMAT = {"name": "cavmae-train-state", "version": 1}


def _atomic_write(path: Path, write: Any) -> None:
    """Call ``write(file_object)`` on a temp file beside ``path``, fsync, then ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save(obj)`` to ``path`` atomically (temp file + ``os.replace``)."""
    p = Path(path)
    _atomic_write(p, lambda f: torch.save(obj, f))
    return p


def atomic_write_text(text: str, path: str | os.PathLike[str]) -> Path:
    """Write UTF-8 text atomically."""
    p = Path(path)
    _atomic_write(p, lambda f: f.write(text.encode("utf-8")))
    return p


def atomic_write_json(obj: Any, path: str | os.PathLike[str]) -> Path:
    """Write indented JSON atomically."""
    return atomic_write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", path)


# ---------------------------------------------------------------------- RNG states


def capture_rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """The RNG states of torch (CPU and ``device`` if CUDA), numpy and ``random``.

    Returns:
        A dict of tensors, ints and floats only (loadable with ``weights_only=True``).
    """
    np_state = np.random.get_state()
    py_state = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {
            "version": int(py_state[0]),
            "state": torch.tensor(py_state[1], dtype=torch.int64),
            "gauss_next": py_state[2],
        },
    }
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            n["keys"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss_next"]))
    if "cuda" in state and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


# ---------------------------------------------------------------------- loading


def load_training_state(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a ``last.pt`` written by the trainer (``weights_only=True``, onto the CPU).

    Raises:
        CheckpointError: if the file is missing, unreadable or not a training state.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"no training state at {p}; start without --resume or fix the path")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for corrupt or foreign files
        raise CheckpointError(f"cannot read training state {p}: {e}") from e
    fmt = state.get("format") if isinstance(state, dict) else None
    if fmt != STATE_FORMAT:
        raise CheckpointError(
            f"{p} is not a CAV-MAE Studio training state (format {fmt!r}, expected "
            f"{STATE_FORMAT}); to start from model weights use --init instead of --resume"
        )
    return state


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """A plain state_dict from a ``.safetensors`` or ``torch.save`` file (CPU tensors).

    Raises:
        CheckpointError: if the file cannot be read or holds no tensors.
    """
    p = Path(path)
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(p), device="cpu")
        else:
            sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # safetensors and torch raise various types for bad files
        raise CheckpointError(f"cannot read model weights from {p}: {e}") from e
    if isinstance(sd, dict) and "model" in sd and isinstance(sd["model"], dict):
        sd = sd["model"]
    if not isinstance(sd, dict) or not sd or not all(torch.is_tensor(v) for v in sd.values()):
        raise CheckpointError(f"{p} does not hold a state_dict of tensors")
    return sd


# ---------------------------------------------------------------------- epoch files / WA


def epoch_model_path(run_dir: str | os.PathLike[str], epoch: int) -> Path:
    """``<run_dir>/checkpoints/epoch_NNN.safetensors`` for 1-based ``epoch``."""
    return Path(run_dir) / "checkpoints" / f"epoch_{epoch:03d}.safetensors"


def weight_average(
    state_dicts: Iterable[dict[str, torch.Tensor] | str | os.PathLike[str]],
) -> dict[str, torch.Tensor]:
    """Uniform average of every tensor over several checkpoints (official ``wa_model``).

    Floating-point tensors are summed in float64 and cast back; every key is averaged,
    positional tables and the head included (OFFICIAL_CAVMAE.md §3.4). Non-float tensors must
    be identical and are kept.

    Args:
        state_dicts: state_dicts or files readable by :func:`load_state_dict_file`; files are
            loaded one at a time.

    Returns:
        The averaged state_dict.

    Raises:
        CheckpointError: if the key sets or shapes differ, or the iterable is empty.
    """
    acc: dict[str, torch.Tensor] = {}
    dtypes: dict[str, torch.dtype] = {}
    n = 0
    for item in state_dicts:
        sd = item if isinstance(item, dict) else load_state_dict_file(item)
        if n == 0:
            for k, v in sd.items():
                dtypes[k] = v.dtype
                acc[k] = (
                    v.detach().to(torch.float64).clone() if v.is_floating_point() else v.clone()
                )
        else:
            if set(sd) != set(acc):
                diff = sorted(set(sd) ^ set(acc))
                raise CheckpointError(
                    f"checkpoints to average have different keys, e.g. {diff[:3]}"
                )
            for k, v in sd.items():
                if v.shape != acc[k].shape:
                    raise CheckpointError(
                        f"cannot average {k}: shapes {tuple(v.shape)} and {tuple(acc[k].shape)}"
                    )
                if v.is_floating_point():
                    acc[k] += v.detach().to(torch.float64)
                elif not torch.equal(v, acc[k]):
                    raise CheckpointError(f"cannot average integer tensor {k}: values differ")
        n += 1
    if n == 0:
        raise CheckpointError("weight averaging needs at least one checkpoint")
    logger.info("averaged %d checkpoints", n)
    return {k: (v / n).to(dtypes[k]) if dtypes[k].is_floating_point else v for k, v in acc.items()}
