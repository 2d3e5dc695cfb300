"""Reading checkpoint files: official ``.pth`` (weights only), our ``.safetensors``, or a dict.

PyTorch files are read with ``torch.load(..., weights_only=True, map_location="cpu")`` and
nothing else: a file that needs full unpickling is refused with instructions. Files are
sniffed first, so a video, an HTML page from a failed download or an empty file gives a
message that says so instead of a pickle traceback.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cavmae.checkpoint.keys import normalise_keys
from cavmae.config import ModelConfig
from cavmae.errors import CheckpointError

__all__ = ["FORMAT_VERSION", "METADATA_KEY", "RawCheckpoint", "read_checkpoint", "read_raw"]

logger = logging.getLogger(__name__)

#: Version of our metadata document; files with a newer version are refused.
FORMAT_VERSION = 1
#: safetensors header-metadata key (and wrapper-dict key) holding our JSON document.
METADATA_KEY = "cavmae"
#: Keys under which wrapped checkpoints keep their state_dict, tried in this order.
_WRAPPER_KEYS = ("model", "state_dict", "model_state_dict")
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default (zip) format
_PICKLE_MAGIC = b"\x80"  # pickle protocol >= 2: torch.save's legacy format

Source = str | os.PathLike[str] | Mapping[str, Any]


@dataclass(frozen=True)
class RawCheckpoint:
    """A state_dict as read, before any interpretation.

    Attributes:
        state_dict: Normalised keys mapped to CPU tensors.
        metadata: Our metadata document, ``{"model_config": ...}`` found beside a wrapped
            state_dict, or empty (official files).
        source: The file read, or None for an in-memory mapping.
        format: ``"cavmae"`` (our safetensors), ``"safetensors"`` (without our metadata),
            ``"torch"`` (a PyTorch file) or ``"state_dict"`` (a mapping).
    """

    state_dict: dict[str, torch.Tensor]
    metadata: dict[str, Any]
    source: Path | None
    format: str


def read_checkpoint(source: Source) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint (or take a state_dict) without building a model.

    Args:
        source: A ``.pth``/``.pt`` file, one of our ``.safetensors`` files, or a mapping that
            is a state_dict or wraps one under ``model``/``state_dict``/``model_state_dict``.

    Returns:
        ``(state_dict, metadata)``: normalised keys mapped to CPU tensors, and our metadata
        (empty for official files).

    Raises:
        CheckpointError: If the file is missing, empty, not a checkpoint, or holds Python
            objects that ``weights_only=True`` refuses.
    """
    raw = read_raw(source)
    return raw.state_dict, raw.metadata


def read_raw(source: Source, *, classifier: int | None = None) -> RawCheckpoint:
    """Like :func:`read_checkpoint`, with the source and format.

    ``classifier=N`` selects, in a file that holds both a pretrained ``state_dict`` and a
    fine-tuned ``ft_state_dict`` (the layout of the official reference fixtures, with
    ``config`` / ``ft_config`` beside them), the fine-tuned one when its head has N classes.
    """
    if isinstance(source, Mapping):
        sd, meta = _unwrap_container(source, "the given state_dict", classifier)
        return RawCheckpoint(sd, meta, None, "state_dict")
    path = Path(source).expanduser()
    if not path.is_file():
        what = "is a directory, not a checkpoint file" if path.is_dir() else "does not exist"
        raise CheckpointError(f"{path} {what}")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): not a checkpoint; download it again")
    with path.open("rb") as f:
        head = f.read(64)
    if _looks_like_safetensors(head, size):
        return _read_safetensors(path)
    if not head.startswith((_ZIP_MAGIC, _PICKLE_MAGIC)):
        raise CheckpointError(
            f"{path} is not a checkpoint: it looks like {_describe(head)}. Expected an official "
            "CAV-MAE .pth file or a .safetensors file written by cavmae"
        )
    sd, meta = _unwrap_container(_torch_load(path), str(path), classifier)
    return RawCheckpoint(sd, meta, path, "torch")


def parse_metadata(text: Any, where: str) -> dict[str, Any]:
    """Decode our metadata document (a JSON string or a dict) and check its version."""
    try:
        meta = json.loads(text) if isinstance(text, (str, bytes)) else dict(text)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: the cavmae metadata is not valid JSON ({e})") from e
    if not isinstance(meta, dict):
        raise CheckpointError(f"{where}: the cavmae metadata is not a JSON object")
    version = meta.get("format_version", FORMAT_VERSION)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{where} was written in checkpoint format {version!r}, newer than this cavmae "
            f"understands ({FORMAT_VERSION}); upgrade cavmae-studio"
        )
    return meta


def _torch_load(path: Path) -> Any:
    """``torch.load`` restricted to tensors and plain containers, with readable errors."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        if "Unsupported global" in text or "GLOBAL" in text:
            raise CheckpointError(
                f"{path} stores Python objects besides tensors (e.g. an argparse Namespace), and "
                "cavmae only loads checkpoints with torch.load(weights_only=True), which cannot "
                'run code. If you trust the file, extract its weights once: python -c "import '
                "torch; c = torch.load('IN', weights_only=False); torch.save(c['model'], "
                "'OUT.pth')\" and load OUT.pth"
            ) from e
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (corrupt data)") from e
    # Truncation raises RuntimeError / EOFError; garbage after a valid pickle header makes the
    # restricted unpickler fail in arbitrary ways (an opcode popping an empty stack raises
    # IndexError, a bad memo reference KeyError, ...).
    except (RuntimeError, EOFError, ValueError, OSError, IndexError, KeyError, TypeError,
            AttributeError, MemoryError, OverflowError) as e:  # fmt: skip
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint (truncated or corrupt: {first}); "
            "download it again"
        ) from e


def _unwrap_container(
    obj: Any, where: str, classifier: int | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Find the state_dict inside a loaded object and any metadata kept beside it."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{where} holds a {type(obj).__name__}, not a state_dict")
    if _is_tensor_dict(obj):
        return normalise_keys(obj), {}
    ft = obj.get("ft_state_dict")
    if classifier is not None and isinstance(ft, Mapping) and _is_tensor_dict(ft):
        ft = normalise_keys(ft)
        head = ft.get("mlp_head.1.weight")
        if head is not None and head.shape[0] == classifier:  # (C, D)
            logger.info("%s: using the fine-tuned state_dict under 'ft_state_dict'", where)
            cfg = obj.get("ft_config")
            fields = set(ModelConfig.__dataclass_fields__)
            ok = isinstance(cfg, Mapping) and set(cfg) <= fields
            return ft, ({"model_config": dict(cfg)} if ok else {})
    for key in _WRAPPER_KEYS:
        inner = obj.get(key)
        if isinstance(inner, Mapping) and _is_tensor_dict(inner):
            logger.info("%s: using the state_dict under %r", where, key)
            return normalise_keys(inner), _wrapper_metadata(obj, where)
    entries = ", ".join(repr(k) for k in list(obj)[:8])
    raise CheckpointError(
        f"{where} is not a state_dict: its top-level entries ({entries}) are not all tensors "
        f"and none of {list(_WRAPPER_KEYS)} holds one"
    )


def _wrapper_metadata(obj: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Metadata beside a wrapped state_dict: our document, or a plain model-config dict."""
    if METADATA_KEY in obj:
        return parse_metadata(obj[METADATA_KEY], where)
    fields = set(ModelConfig.__dataclass_fields__)
    for key in ("model_config", "config"):
        cfg = obj.get(key)
        if isinstance(cfg, Mapping) and cfg and set(cfg) <= fields:
            return {"model_config": dict(cfg)}
    return {}


def _is_tensor_dict(obj: Mapping[Any, Any]) -> bool:
    return bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    """An 8-byte little-endian header length followed by a JSON object."""
    if len(head) < 9:
        return False
    n = int.from_bytes(head[:8], "little")
    return 2 <= n <= size - 8 and head[8:9] == b"{"


def _read_safetensors(path: Path) -> RawCheckpoint:
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
        sd = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e})") from e
    if METADATA_KEY not in header:
        return RawCheckpoint(normalise_keys(sd), {}, path, "safetensors")
    meta = parse_metadata(header[METADATA_KEY], str(path))
    return RawCheckpoint(normalise_keys(sd), meta, path, "cavmae")


def _describe(head: bytes) -> str:
    """A guess at what a non-checkpoint file is, from its first bytes."""
    if head[4:8] == b"ftyp":
        return "an MP4/MOV video"
    if head.startswith(b"\x1aE\xdf\xa3"):
        return "a Matroska/WebM video"
    if head.startswith(b"RIFF"):
        return "a RIFF file (WAV audio or AVI video)"
    if head.startswith((b"ID3", b"\xff\xfb", b"\xff\xf3", b"OggS", b"fLaC")):
        return "an audio file"
    if head.startswith((b"\x89PNG", b"\xff\xd8\xff", b"GIF8")):
        return "an image"
    stripped = head.lstrip().lower()
    if stripped.startswith(b"<"):
        return "an HTML/XML page (a failed download? Dropbox links need '?dl=1')"
    if stripped.startswith((b"{", b"[")):
        return "a JSON file"
    try:
        head.decode("utf-8")
        return "a text file"
    except UnicodeDecodeError:
        return "unrecognised binary data"
