"""Streaming readers of sharded datasets (format: :mod:`training.data.shards`).

:class:`ShardedDataset` is the training reader: an ``IterableDataset`` over webdataset tar
shards on local disk or behind any URL (``file://``, ``pipe:cmd``, fsspec schemes such as
``s3://`` when the matching fsspec backend is installed). Each epoch is one deterministic
function of ``(seed, epoch)``:

1. *Occurrences*: every clip of the dataset (or of a split) once; with sample weights
   (balanced sampling, :func:`training.samplers.balanced_weights`) a systematic resampling
   draws the same number of clips with the weighted frequencies (the stream cannot draw with
   replacement by random access, so a clip repeats in place; the shuffle buffer spreads it).
2. *Global order*: the shards in a seeded permutation, each shard's occurrences in file order.
3. *Split*: rank ``r`` of ``R`` takes a contiguous ``1/R`` of the global order (training drops
   the tail that does not divide, as ``DistributedSampler(drop_last=True)``; evaluation wraps
   it, as without drop_last). Inside a rank, batches ``m = 0, 1, ...`` of ``batch_size`` are
   served by DataLoader worker ``m % W``; worker ``w`` owns a contiguous block of the rank's
   order, so every shard is opened by about one worker and every sample is read once per
   epoch across the job.
4. *Shuffle*: a seeded shuffle buffer (webdataset's ``shuffle``) inside each worker's block.
5. *Assembly*: :class:`training.data.base.AVDataset` over a small window of recent samples
   (random frame of K, mixup with a partner drawn from the window, SpecAugment, noise, roll),
   seeded by the occurrence's epoch position, so the sample does not depend on timing.

Exact resume: ``load_state_dict({"epoch", "seed", "consumed"})`` makes the next iteration skip
the ``consumed`` samples of this rank (read, not decoded) and rotate the workers' roles so that
batch ``m`` of the resumed loader is batch ``consumed / batch_size + m`` of the uninterrupted
epoch. It needs the same ``batch_size`` and DataLoader worker count.

Bad shards: a shard that cannot be opened or read (truncated, corrupt) is logged by name and
skipped; its missing samples are replaced by repeats of the worker's most recent good samples
so that every rank keeps the same step count (DDP needs it), and :meth:`epoch_report` counts
both. A shard whose samples carry another feature digest raises :class:`ConfigError`.

:class:`ShardMapDataset` is a map-style reader for evaluation loaders (it reads forward
through the shards; random access re-opens a shard).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import tarfile
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from cavmae.config import FeatureConfig
from cavmae.errors import ConfigError
from cavmae.features import pad_or_crop
from cavmae.labels import LabelSet
from training.augment import AugmentConfig
from training.data import formats as fmt
from training.data.base import AVDataset, FrameChoice, compatible_feature_config, multi_hot
from training.data.shards import check_shard_manifest, decode_jpeg, is_shard_dir, sample_fbank
from training.samplers import default_world

__all__ = ["ShardSource", "ShardedDataset", "ShardMapDataset", "is_shard_spec", "open_url"]

logger = logging.getLogger(__name__)

#: Most DataLoader workers whose statistics are kept (one shared row each).
_MAX_WORKERS = 256
_READ_ERRORS = (tarfile.TarError, EOFError, OSError, ValueError, KeyError, json.JSONDecodeError)


# --- locations -----------------------------------------------------------------------------------


def open_url(url: str) -> IO[bytes]:
    """Open a local path, ``file://``, ``pipe:`` (webdataset's gopen) or fsspec URL for reading."""
    import webdataset as wds

    if url.startswith("pipe:") or url.startswith("file:") or "://" not in url:
        return wds.gopen(url, "rb")
    import fsspec

    return fsspec.open(url, "rb").open()


def is_shard_spec(spec: str | os.PathLike[str]) -> bool:
    """True for a local sharded folder, a shard URL/pattern, or a sharded manifest URL."""
    s = str(spec)
    if is_shard_dir(s):
        return True
    return s.startswith("pipe:") or "://" in s or bool(re.search(r"\.tar(\})?\s*$", s)) or (
        "{" in s and ".tar" in s
    )


def _manifest_url(spec: str) -> str:
    """Where the manifest of a shard pattern lives: beside the shards (also inside a pipe)."""
    if spec.endswith("manifest.json"):
        return spec
    m = re.search(r"(\S*\.tar)", spec)
    if m is None:
        raise ConfigError(f"cannot find a .tar shard name in {spec!r}")
    token = m.group(1)
    parent = token.rsplit("/", 1)[0] + "/" if "/" in token else ""
    return spec[: m.start()] + parent + fmt.MANIFEST_FILE + spec[m.end():]


class ShardSource:
    """A sharded dataset's manifest, items and shard URLs, from a folder or a URL pattern.

    Args:
        spec: A local folder written by ``training.prepare``; a brace pattern of shards
            (``/data/as2m/shard-{000000..000799}.tar``, ``file://...``, ``pipe:aws s3 cp
            s3://b/shard-{000000..000799}.tar -``, ``s3://b/shard-{...}.tar``) whose
            ``manifest.json`` and ``items.jsonl`` sit beside the shards (inside a ``pipe:``
            command the shard name is replaced by them); or the URL of that manifest.

    Raises:
        ConfigError: When the manifest is missing, unfinished or of another format, or a
            shard of the pattern is not listed in it (a shard of another preparation).
    """

    def __init__(self, spec: str | os.PathLike[str]) -> None:
        s = str(spec)
        self.spec = s
        if is_shard_dir(s):
            root = Path(s)
            manifest_url = str(root / fmt.MANIFEST_FILE)
        else:
            manifest_url = _manifest_url(s)
        self.manifest = self._read_json(manifest_url)
        check_shard_manifest(self.manifest, manifest_url)
        listed = {sh["name"]: sh for sh in self.manifest["shards"]}
        if is_shard_dir(s) or s.endswith("manifest.json"):
            names = list(listed)
            self.urls = [manifest_url.replace(fmt.MANIFEST_FILE, n) for n in names]
        else:
            from webdataset.shardlists import expand_urls

            self.urls = expand_urls(s)
            names = []
            for u in self.urls:
                m = re.search(r"([^/\s]+\.tar)", u)
                name = m.group(1) if m else u
                if name not in listed:
                    raise ConfigError(
                        f"shard {u} is not listed in {manifest_url}: it belongs to another "
                        "preparation (or the pattern is wrong)"
                    )
                names.append(name)
        self.names = names
        self.counts = np.array([int(listed[n]["count"]) for n in names], dtype=np.int64)
        self.first_uid = np.array([int(listed[n]["first_uid"]) for n in names], dtype=np.int64)
        self.items = self._read_items(manifest_url.replace(fmt.MANIFEST_FILE, fmt.ITEMS_FILE))
        self.label_set = self._read_labels(manifest_url.replace(fmt.MANIFEST_FILE, fmt.LABELS_FILE))

    @staticmethod
    def _read_json(url: str) -> dict[str, Any]:
        try:
            with open_url(url) as f:
                return json.loads(f.read().decode("utf-8"))
        except (OSError, ValueError) as e:
            raise ConfigError(
                f"cannot read the sharded-dataset manifest {url} ({e}); prepare the data with "
                "`python -m training.prepare VIDEO_DIR OUT_DIR` or point at its shards"
            ) from e

    @staticmethod
    def _read_items(url: str) -> list[dict[str, Any]]:
        try:
            with open_url(url) as f:
                lines = f.read().decode("utf-8").splitlines()
        except OSError as e:
            raise ConfigError(f"cannot read {url} ({e}); the sharded dataset is incomplete") from e
        return [json.loads(line) for line in lines if line.strip()]

    def _read_labels(self, url: str) -> LabelSet | None:
        if not self.manifest.get("num_classes"):
            return None
        import tempfile

        with open_url(url) as f, tempfile.TemporaryDirectory() as d:
            p = Path(d) / fmt.LABELS_FILE
            p.write_bytes(f.read())
            return LabelSet.from_csv(p)


# --- sample assembly over a window of recent samples ------------------------------------------


class _Window(AVDataset):
    """The last ``size`` raw samples a worker read, as an AVDataset (mixup partners come from it)."""

    def __init__(self, size: int, num_classes: int, owner: Any) -> None:
        self.feature_config = owner.feature_config
        self.frames_per_clip = owner.frames_per_clip
        self.label_names = owner.label_names
        self.labels_matrix = np.zeros((size, num_classes), dtype=np.float32)
        self.slots: list[dict[str, Any] | None] = [None] * size
        self.filled = 0
        self._setup(
            train=owner.train,
            augment=owner.augment,
            frame=owner.frame,
            seed=owner.seed,
            return_all_frames=owner.return_all_frames,
        )
        self._epoch.fill_(owner.epoch)

    def __len__(self) -> int:
        return self.filled

    def put(self, slot: int, raw: dict[str, Any], record: dict[str, Any], pos: int) -> None:
        self.slots[slot] = {"raw": raw, "rec": record, "pos": pos}
        self.labels_matrix[slot] = 0.0
        for c in record.get("labels", []):
            self.labels_matrix[slot, c] = 1.0
        self.filled = max(self.filled, slot + 1)

    def _slot(self, i: int) -> dict[str, Any]:
        s = self.slots[i]
        assert s is not None
        return s

    def _seed_index(self, i: int) -> int:
        return int(self._slot(i)["pos"])

    def _sample_index(self, i: int) -> int:
        return int(self._slot(i)["rec"]["uid"])

    def _raw_fbank(self, i: int) -> tuple[torch.Tensor, int]:
        fb = sample_fbank(self._slot(i)["raw"])  # (n, F) float16
        t = self.feature_config.target_length
        out = pad_or_crop(torch.from_numpy(fb.astype(np.float32)), t)  # (T, F)
        return out, int(min(fb.shape[0], t))

    def _frame(self, i: int, k: int) -> np.ndarray:
        return decode_jpeg(self._slot(i)["raw"][f"f{k}.jpg"])  # (S, S, 3)

    def _frame_time(self, i: int, k: int) -> float:
        times = self._slot(i)["rec"].get("frame_times")
        if times is not None and len(times) == self.frames_per_clip:
            return float(times[k])
        return super()._frame_time(i, k)


class _Common:
    """Metadata shared by the two readers (labels, features, geometry checks)."""

    def _init_common(
        self,
        spec: str | os.PathLike[str] | ShardSource,
        feature_config: FeatureConfig | None,
        split_indices: Sequence[int] | np.ndarray | None,
    ) -> None:
        self.source = spec if isinstance(spec, ShardSource) else ShardSource(spec)
        m = self.source.manifest
        self.manifest = m
        stored = FeatureConfig.from_dict(m["feature_config"])
        self.stored_feature_config = stored
        self.feature_config = compatible_feature_config(stored, feature_config, self.source.spec)
        self.frames_per_clip = int(m["frames_per_clip"])
        self.feature_digest = str(m["feature_digest"])
        self.label_set = self.source.label_set
        self.label_names = list(self.label_set.names) if self.label_set is not None else []
        n_all = len(self.source.items)
        if split_indices is None:
            uids = np.arange(n_all, dtype=np.int64)
        else:
            uids = np.unique(np.asarray(split_indices, dtype=np.int64).reshape(-1))
            if uids.size and (uids.min() < 0 or uids.max() >= n_all):
                raise ConfigError(f"split indices must be in 0..{n_all - 1} for {self.source.spec}")
        self.uids = uids
        self.items = [self.source.items[int(u)] for u in uids]
        self.labels_matrix = multi_hot([it.get("labels", []) for it in self.items], len(self.label_names))
        if m.get("skipped"):
            logger.info("%s: %d source file(s) were skipped at preparation (see its manifest)",
                        self.source.spec, len(m["skipped"]))

    @property
    def num_classes(self) -> int:
        """Number of classes ``C`` (0 for an unlabelled dataset)."""
        return len(self.label_names)

    @property
    def multi_label(self) -> bool:
        """True if some clip has several classes."""
        return bool((self.labels_matrix.sum(axis=1) > 1).any())

    def _check_digest(self, record: dict[str, Any], url: str) -> None:
        if record.get("feature_digest") != self.feature_digest:
            raise ConfigError(
                f"shard {url} was written with another feature configuration (digest "
                f"{record.get('feature_digest')}, this dataset's manifest has "
                f"{self.feature_digest}); prepare it again with the same settings or remove it"
            )


def _iter_shard(url: str) -> Iterator[dict[str, Any]]:
    """Samples (``__key__`` plus member bytes) of one shard, via webdataset's tar iterators."""
    from webdataset.tariterators import group_by_keys, tar_file_expander

    stream = open_url(url)
    try:
        yield from group_by_keys(tar_file_expander([{"url": url, "stream": stream}]))
    finally:
        stream.close()


# --- the streaming training dataset -------------------------------------------------------------


class ShardedDataset(_Common, IterableDataset):
    """Streams a sharded dataset (see the module docstring for the epoch order).

    Args:
        spec: A sharded folder, shard pattern or manifest URL (see :class:`ShardSource`).
        split_indices: uids (positions in ``items.jsonl``) forming this dataset; ``None`` = all.
        train, augment, frame, feature_config, seed, return_all_frames: As
            :class:`training.data.datasets.PreparedDataset`.
        shuffle_buffer: Samples in each worker's shuffle buffer (training; 1 disables).
        mixup_pool: Recent samples a mixup partner is drawn from.
        num_replicas, rank: World size and rank; ``None`` reads the process group.
        batch_size: Per-process batch size of the loader (set by the trainer with
            :meth:`set_batch_size`); it fixes which worker serves which batch.
    """

    def __init__(
        self,
        spec: str | os.PathLike[str] | ShardSource,
        split_indices: Sequence[int] | np.ndarray | None = None,
        *,
        train: bool = False,
        augment: AugmentConfig | None = None,
        frame: FrameChoice | None = None,
        feature_config: FeatureConfig | None = None,
        seed: int = 0,
        return_all_frames: bool = False,
        shuffle_buffer: int = 500,
        mixup_pool: int = 64,
        num_replicas: int | None = None,
        rank: int | None = None,
        batch_size: int = 1,
    ) -> None:
        self._init_common(spec, feature_config, split_indices)
        if augment is not None and not train and not augment.is_identity:
            raise ConfigError("augmentations apply to training datasets only")
        self.train = train
        self.augment = augment if (augment is not None and not augment.is_identity) else None
        self.frame = ("random" if train else "middle") if frame is None else frame
        self.seed = int(seed)
        self.return_all_frames = return_all_frames
        self.shuffle_buffer = max(1, int(shuffle_buffer))
        self.mixup_pool = max(1, int(mixup_pool))
        self.num_replicas, self.rank = default_world(num_replicas, rank)
        self.batch_size = 1
        self.set_batch_size(batch_size)
        self.epoch = 0
        self._skip = 0
        self.weights: np.ndarray | None = None
        n_all = len(self.source.items)
        self._include = np.zeros(n_all, dtype=bool)
        self._include[self.uids] = True
        self._stats = torch.zeros((_MAX_WORKERS, 3), dtype=torch.int64).share_memory_()
        _Window(1, self.num_classes, self)  # validates frame and augment settings early

    # --- configuration ---------------------------------------------------------------------
    def set_batch_size(self, batch_size: int) -> None:
        """The loader's per-process batch size (the unit the workers take turns in)."""
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)

    def set_sample_weights(self, weights: np.ndarray | None) -> None:
        """Balanced sampling: per-clip weights (N,) in this dataset's order; ``None`` = off."""
        if weights is None:
            self.weights = None
            return
        w = np.asarray(weights, dtype=np.float64).reshape(-1)
        if w.shape[0] != len(self.uids) or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
            raise ConfigError(
                f"sample weights must be {len(self.uids)} finite, non-negative values, not all 0"
            )
        self.weights = w

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (call before iterating); resets the epoch's read statistics."""
        if epoch < 0:
            raise ConfigError(f"epoch must be >= 0, got {epoch}")
        if epoch != self.epoch:
            self._skip = 0
        self.epoch = int(epoch)
        self._stats.zero_()

    def state_dict(self, consumed: int = 0) -> dict[str, Any]:
        """``{"epoch", "seed", "consumed"}``: as the resumable samplers of training.samplers."""
        return {"epoch": self.epoch, "seed": self.seed, "consumed": int(consumed)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume inside ``state["epoch"]`` after ``state["consumed"]`` samples of this rank.

        Raises:
            ConfigError: On another seed, or a count that is not a whole number of batches.
        """
        if int(state["seed"]) != self.seed:
            raise ConfigError(f"state saved with seed {state['seed']}, this dataset uses {self.seed}")
        consumed = int(state.get("consumed", 0))
        if consumed % self.batch_size:
            raise ConfigError(
                f"cannot resume after {consumed} samples: not a multiple of the batch size "
                f"{self.batch_size}"
            )
        self.epoch = int(state["epoch"])
        self._skip = consumed

    def epoch_report(self) -> dict[str, int]:
        """This epoch so far: ``bad_shards``, ``replaced_samples`` and ``samples`` read."""
        tot = self._stats.sum(dim=0).tolist()
        return {"bad_shards": int(tot[0]), "replaced_samples": int(tot[1]), "samples": int(tot[2])}

    # --- the epoch plan --------------------------------------------------------------------
    def _occurrences(self, epoch: int) -> np.ndarray:
        """(N_all,) how often each uid appears this epoch."""
        if self.weights is None:
            return self._include.astype(np.int64)
        n = len(self.uids)
        expected = self.weights / self.weights.sum() * n  # (N,)
        u = np.random.default_rng([self.seed, epoch, 7]).random()
        cum = np.floor(np.cumsum(expected) + u)
        counts = np.diff(np.concatenate([[np.floor(u)], cum])).astype(np.int64)
        occ = np.zeros(len(self._include), dtype=np.int64)
        occ[self.uids] = counts
        return occ

    def _shard_order(self, epoch: int) -> np.ndarray:
        n = len(self.source.urls)
        if not self.train:
            return np.arange(n)
        return np.random.default_rng([self.seed, epoch, 3]).permutation(n)

    def _per_rank(self, total: int) -> int:
        return total // self.num_replicas if self.train else math.ceil(total / self.num_replicas)

    def __len__(self) -> int:
        """Samples per rank per epoch (before a resume offset)."""
        return self._per_rank(int(self._occurrences(self.epoch).sum()))

    def _roles(self, n_rank: int, workers: int) -> list[tuple[int, int]]:
        """``(offset, count)`` in the rank's order of each worker role's contiguous block."""
        b = self.batch_size
        nbt = math.ceil(n_rank / b)
        blocks, off = [], 0
        for r in range(workers):
            c = (nbt - r + workers - 1) // workers if nbt > r else 0
            size = c * b
            if nbt and r == (nbt - 1) % workers:
                size -= nbt * b - n_rank  # the last, partial batch
            blocks.append((off, max(size, 0)))
            off += max(size, 0)
        return blocks

    def plan(self, epoch: int, role: int, workers: int) -> list[tuple[int, int, int, int]]:
        """Segments ``(shard index, first occurrence, count, global position)`` of one role."""
        occ = self._occurrences(epoch)
        order = self._shard_order(epoch)
        per_shard = np.array(
            [int(occ[f: f + c].sum()) for f, c in zip(self.source.first_uid, self.source.counts, strict=True)],
            dtype=np.int64,
        )[order]
        total = int(per_shard.sum())
        n_rank = self._per_rank(total)
        off, size = self._roles(n_rank, workers)[role]
        start = self.rank * n_rank + off
        ends = np.cumsum(per_shard)  # (S,)
        segs: list[tuple[int, int, int, int]] = []
        pos, left = start, size
        while left > 0 and total > 0:
            p = pos % total
            j = int(np.searchsorted(ends, p, side="right"))
            begin = int(ends[j] - per_shard[j])
            take = min(left, int(ends[j]) - p)
            segs.append((int(order[j]), p - begin, take, p))
            pos += take
            left -= take
        return segs

    # --- iteration -------------------------------------------------------------------------
    def _raw_stream(
        self, segs: list[tuple[int, int, int, int]], occ: np.ndarray, wid: int
    ) -> Iterator[tuple[dict[str, Any], dict[str, Any], int]]:
        """``(members, record, epoch position)`` of every occurrence of the segments."""
        good: deque[tuple[dict[str, Any], dict[str, Any], int]] = deque(maxlen=self.mixup_pool)
        bad: list[str] = []
        for shard, first, count, gpos in segs:
            url = self.source.urls[shard]
            k = 0  # occurrence index inside this shard
            delivered = 0
            try:
                for sample in _iter_shard(url):
                    uid = int(sample["__key__"])
                    n = int(occ[uid]) if 0 <= uid < len(occ) else 0
                    if n == 0 or k + n <= first:
                        k += n
                        continue
                    rec = json.loads(sample["json"])
                    self._check_digest(rec, url)
                    for _ in range(n):
                        if first <= k < first + count:
                            item = (sample, rec, gpos + (k - first))
                            good.append(item)
                            delivered += 1
                            self._stats[wid, 2] += 1
                            yield item
                        k += 1
                    if k >= first + count:
                        break
            except ConfigError:
                raise
            except _READ_ERRORS as e:
                logger.warning("skipping the rest of shard %s (%s: %s)", url, type(e).__name__, e)
            missing = count - delivered
            if not missing:
                continue
            logger.warning(
                "shard %s gave %d of %d planned samples; %d replaced by repeats of recent ones",
                url, delivered, count, missing,
            )
            bad.append(url)
            self._stats[wid, 0] += 1
            for m in range(missing):
                if not good:
                    raise ConfigError(
                        f"no readable sample before the bad shard(s) {bad}; check the shards"
                    )
                sample, rec, _ = good[m % len(good)]
                self._stats[wid, 1] += 1
                yield sample, rec, gpos + delivered + m

    def __iter__(self) -> Iterator[dict[str, Any]]:
        import webdataset as wds

        info = get_worker_info()
        wid, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        epoch, b = self.epoch, self.batch_size
        s = self._skip // b
        role = (wid + s) % workers
        skip = max(0, -(-(s - role) // workers)) * b
        occ = self._occurrences(epoch)
        segs = self.plan(epoch, role, workers)
        stream: Iterator[Any] = self._raw_stream(segs, occ, min(wid, _MAX_WORKERS - 1))
        if self.train and self.shuffle_buffer > 1:
            seed = int(np.random.SeedSequence([self.seed, epoch, self.rank, role]).generate_state(1)[0])
            stream = wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, seed=seed)(stream)
        window = _Window(self.mixup_pool, self.num_classes, self)
        for n, (sample, rec, pos) in enumerate(stream):
            slot = n % self.mixup_pool
            window.put(slot, sample, rec, pos)  # skipped samples too: the same mixup partners
            if n >= skip:  # resume: the first ``skip`` samples are read, not decoded
                yield window[slot]


# --- a map-style reader for evaluation ------------------------------------------------------------


class ShardMapDataset(_Common, AVDataset):
    """A sharded dataset as a map-style dataset (evaluation loaders with a sampler).

    Reads forward through a shard while the requested uids increase (as an unshuffled
    ``DistributedSampler`` asks for them); going back re-opens the shard. Arguments as
    :class:`ShardedDataset` (no shuffling, streaming or resume options).
    """

    def __init__(
        self,
        spec: str | os.PathLike[str] | ShardSource,
        split_indices: Sequence[int] | np.ndarray | None = None,
        *,
        train: bool = False,
        augment: AugmentConfig | None = None,
        frame: FrameChoice | None = None,
        feature_config: FeatureConfig | None = None,
        seed: int = 0,
        return_all_frames: bool = False,
    ) -> None:
        self._init_common(spec, feature_config, split_indices)
        self._shard_of = np.searchsorted(self.source.first_uid + self.source.counts, self.uids, side="right")
        self._cursor: tuple[int, Iterator[dict[str, Any]]] | None = None
        self._last: dict[str, Any] | None = None
        self._setup(train=train, augment=augment, frame=frame, seed=seed,
                    return_all_frames=return_all_frames)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_cursor"] = state["_last"] = None  # generators do not pickle; reopened lazily
        return state

    def _raw(self, i: int) -> dict[str, Any]:
        uid = int(self.uids[i])
        if self._last is not None and int(self._last["__key__"]) == uid:
            return self._last
        shard = int(self._shard_of[i])
        if shard >= len(self.source.urls):
            raise ConfigError(f"uid {uid} is in no shard of {self.source.spec}")
        url = self.source.urls[shard]
        for attempt in range(2):
            if self._cursor is None or self._cursor[0] != shard or attempt:
                self._cursor = (shard, _iter_shard(url))
            for sample in self._cursor[1]:
                key = int(sample["__key__"])
                if key == uid:
                    self._check_digest(json.loads(sample["json"]), url)
                    self._last = sample
                    return sample
                if key > uid:
                    break
        raise ConfigError(f"shard {url} does not hold sample {uid:09d}; the shard is damaged")

    def _raw_fbank(self, i: int) -> tuple[torch.Tensor, int]:
        fb = sample_fbank(self._raw(i))  # (n, F) float16
        t = self.feature_config.target_length
        return pad_or_crop(torch.from_numpy(fb.astype(np.float32)), t), int(min(fb.shape[0], t))

    def _frame(self, i: int, k: int) -> np.ndarray:
        return decode_jpeg(self._raw(i)[f"f{k}.jpg"])  # (S, S, 3)

    def _frame_time(self, i: int, k: int) -> float:
        times = self.items[i].get("frame_times")
        return float(times[k]) if times and len(times) == self.frames_per_clip else super()._frame_time(i, k)

    def _sample_index(self, i: int) -> int:
        return i
