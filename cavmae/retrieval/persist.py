"""Atomic on-disk format of an :class:`~cavmae.retrieval.index.EmbeddingIndex`.

Layout of an index folder::

    manifest.json            format, version, model_id, dim, counts, search settings, data folder
    data-XXXXXXXX/           one generation of the content, never modified after it is written
        items.json           {"keys": [...], "meta": [...]} in insertion order
        audio.npy            (N_a, D) float32 L2-normalised vectors
        audio_items.npy      (N_a,) int64 position of each row's key in items.json
        audio.ivf            faiss IVF index over audio.npy rows (only above exact_max_items)
        visual.npy, visual_items.npy, visual.ivf   the same for the visual vectors

A save writes a new ``data-*`` folder, then replaces ``manifest.json`` with ``os.replace``: a
reader sees either the old or the new index, never a mix, and a crash mid-save leaves the old
index valid. Older ``data-*`` folders are deleted after the switch. The manifest's ``model_id``
is checked on load so that vectors of two models are never mixed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cavmae.errors import ConfigError
from cavmae.retrieval.store import AnnConfig

if TYPE_CHECKING:
    from cavmae.retrieval.index import EmbeddingIndex

__all__ = ["FORMAT", "FORMAT_VERSION", "MANIFEST", "load_index", "read_manifest", "save_index"]

logger = logging.getLogger(__name__)

FORMAT = "cavmae-embedding-index"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_LOAD_CHUNK = 100_000  # rows copied per step from the memory-mapped .npy into faiss


def _write_json(path: Path, obj: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False)
        f.flush()
        os.fsync(f.fileno())


def save_index(index: EmbeddingIndex, directory: Path) -> Path:
    """Write ``index`` to ``directory`` atomically (the caller holds the index lock).

    Returns:
        The index folder.

    Raises:
        ConfigError: ``directory`` is a file, or holds a manifest of another kind of folder.
    """
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"cannot save the index to {directory}: it is a file, not a folder")
    directory.mkdir(parents=True, exist_ok=True)
    manifest_path = directory / MANIFEST
    if manifest_path.exists():
        read_manifest(directory)  # refuse to overwrite something that is not our index
    data = Path(tempfile.mkdtemp(prefix="data-", dir=directory))
    try:
        keys = list(index._meta)
        position = {k: i for i, k in enumerate(keys)}
        _write_json(data / "items.json", {"keys": keys, "meta": [index._meta[k] for k in keys]})
        counts: dict[str, int] = {}
        ivf_trained_on: dict[str, int] = {}
        for modality, store in index._stores.items():
            store.build()  # train the IVF lists now, so that loading a large index is quick
            np.save(data / f"{modality}.npy", store.vectors())  # (N_m, D) float32
            rows = np.fromiter((position[k] for k in store.keys), dtype=np.int64, count=len(store))
            np.save(data / f"{modality}_items.npy", rows)  # (N_m,)
            counts[modality] = len(store)
            if store.save_ann(data / f"{modality}.ivf"):
                ivf_trained_on[modality] = store.ivf_trained_on
        manifest = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "model_id": index.model_id,
            "dim": index.dim,
            "count": len(keys),
            "count_audio": counts["audio"],
            "count_visual": counts["visual"],
            "metric": "cosine",
            "ann": index.ann.to_dict(),
            "ivf_trained_on": ivf_trained_on,
            "data": data.name,
        }
        fd, tmp = tempfile.mkstemp(prefix=".manifest-", suffix=".json", dir=directory)
        os.close(fd)
        _write_json(Path(tmp), manifest)
        os.replace(tmp, manifest_path)  # the atomic switch to the new generation
    except BaseException:
        shutil.rmtree(data, ignore_errors=True)
        raise
    for old in directory.glob("data-*"):
        if old.is_dir() and old.name != data.name:
            shutil.rmtree(old, ignore_errors=True)
    for stray in directory.glob(".manifest-*.json"):
        stray.unlink(missing_ok=True)
    logger.info("saved %d items (model %s) to %s", len(keys), index.model_id, directory)
    return directory


def read_manifest(directory: Path) -> dict[str, Any]:
    """Read and check the manifest of an index folder.

    Raises:
        ConfigError: No manifest, unreadable JSON, another format, or a newer version.
    """
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise ConfigError(f"{directory} is not an embedding index (no {MANIFEST}); build one first")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}; delete the index folder and rebuild it") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ConfigError(f"{path} is not a cavmae embedding-index manifest")
    version = manifest.get("version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ConfigError(
            f"{path} has format version {version!r}; this cavmae reads versions up to "
            f"{FORMAT_VERSION}: upgrade cavmae or rebuild the index"
        )
    return manifest


def load_index(
    cls: type[EmbeddingIndex],
    directory: Path,
    expected_model_id: str | None,
    ann: AnnConfig | None,
) -> EmbeddingIndex:
    """Load an index folder written by :func:`save_index` (see ``EmbeddingIndex.load``)."""
    manifest = read_manifest(directory)
    model_id = manifest.get("model_id")
    if expected_model_id is not None and model_id != expected_model_id:
        raise ConfigError(
            f"the index in {directory} was built with model {model_id!r}, not {expected_model_id!r}; "
            "its vectors cannot be compared with this model's. Rebuild the index with this model "
            "(into another folder, or delete the old one), or select the model it was built with."
        )
    damaged = f"the index in {directory} is damaged"
    data_name = str(manifest.get("data", ""))
    if not data_name.startswith("data-") or Path(data_name).name != data_name:
        raise ConfigError(f"{damaged} (bad data folder {data_name!r}); delete it and rebuild the index")
    data = directory / data_name
    try:
        dim = int(manifest["dim"])
        saved_ann = AnnConfig(**manifest.get("ann", {}))
        items = json.loads((data / "items.json").read_text(encoding="utf-8"))
        keys, metas = items["keys"], items["meta"]
        if len(keys) != len(metas) or len(keys) != int(manifest["count"]):
            raise ValueError("item count does not match the manifest")
        index = cls(dim, str(model_id), ann=ann or saved_ann)
        index._meta = {k: dict(m) for k, m in zip(keys, metas, strict=True)}
        if len(index._meta) != len(keys):
            raise ValueError("duplicate keys")
        for modality, store in index._stores.items():
            vecs = np.load(data / f"{modality}.npy", mmap_mode="r")  # (N_m, D), not read yet
            rows = np.load(data / f"{modality}_items.npy")  # (N_m,)
            n = int(manifest[f"count_{modality}"])
            if vecs.dtype != np.float32 or vecs.shape != (n, dim) or rows.shape != (n,):
                raise ValueError(f"{modality} vectors have shape {vecs.shape} and dtype {vecs.dtype}")
            if n and (rows.min() < 0 or rows.max() >= len(keys)):
                raise ValueError(f"{modality} rows point outside the item list")
            for s in range(0, n, _LOAD_CHUNK):
                e = min(n, s + _LOAD_CHUNK)
                store.add([keys[i] for i in rows[s:e]], np.ascontiguousarray(vecs[s:e]))
            if len(store) != n:
                raise ValueError(f"{modality} rows repeat an item")
            ivf_path = data / f"{modality}.ivf"
            trained_on = manifest.get("ivf_trained_on", {}).get(modality)
            if ivf_path.is_file() and trained_on and store.is_approximate:
                store.load_ann(ivf_path, int(trained_on))
    except ConfigError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{damaged} ({exc}); delete the folder and rebuild the index") from exc
    logger.info("loaded %d items (model %s) from %s", len(index), model_id, directory)
    return index
