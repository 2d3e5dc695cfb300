"""The sharded dataset format: webdataset tar shards of JPEG frames and float16 fbanks.

A sharded dataset (written by ``python -m training.prepare``, read by
:mod:`training.data.streaming`) is a folder (or any URL prefix) holding:

``shard-000000.tar``, ``shard-000001.tar``, ...
    webdataset shards of about ``shard_bytes`` (default 1 GB). Sample ``{uid:09d}`` has
    ``fbank.f16z`` (the raw Kaldi log-mel of :func:`training.data.prepare.raw_fbank` as float16,
    only its ``fbank_frames`` real rows: padding is re-added on load by ``pad_or_crop``, so it
    is bit-exact to the memory-mapped format; stored losslessly compressed, see
    :func:`encode_fbank`; version-1 shards hold it as ``fbank.npy``), ``f0.jpg`` .. ``f{K-1}.jpg`` (the K frames,
    JPEG quality 90 by default) and ``json`` (the item record below plus ``uid`` and
    ``feature_digest``). ``uid`` numbers the usable clips 0..N-1 in shard order.
``items.jsonl``
    One record per usable clip, in uid order: ``uid``, ``shard``, ``key``, ``path``,
    ``labels``, ``duration_s``, ``fbank_frames``, ``frame_times``, ``has_audio``,
    ``has_video`` (and ``synthetic`` ground truth for AV-Shapes).
``labels.csv``
    The class list (official ``index,mid,display_name``), absent without labels.
``manifest.json``
    ``format`` (``cavmae-shards``), ``version``, ``complete``, ``feature_config``,
    ``feature_digest``, ``frames_per_clip``, ``jpeg_quality``, ``count``, ``num_classes``,
    ``shards`` (``[{"name", "count", "first_uid", "bytes"}]``), ``skipped``
    (``[{"key", "path", "reason"}]``), ``bytes``, ``source``, ``plan_digest``, ``extra``.

Writing: the rows of a plan (:mod:`training.data.runner`) are decoded and JPEG-encoded in the
runner's worker pool; this process appends them in row order to the current shard with
webdataset's :class:`webdataset.TarWriter` (into ``shard-N.tar.tmp``, renamed when the shard is
full and flushed), then records the finished shard in ``_shards.jsonl``. After a kill, the next
run keeps every recorded shard and redoes the rest.

Why webdataset: tar shards are the format of OpenCLIP, video2dataset and the VideoMAE /
InternVideo pipelines; they stream from local disk, ``file://``, ``pipe:`` commands and
object stores, and any tar tool can inspect them.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cavmae.config import FeatureConfig
from cavmae.errors import ConfigError
from cavmae.labels import LabelSet
from training.data import formats as fmt
from training.data.runner import PrepareReport, Progress, RowResult, _run_pool, _start

__all__ = [
    "SHARD_FORMAT",
    "SHARD_VERSION",
    "DEFAULT_SHARD_BYTES",
    "DEFAULT_JPEG_QUALITY",
    "feature_digest",
    "encode_clip",
    "encode_fbank",
    "decode_fbank",
    "sample_fbank",
    "decode_jpeg",
    "encode_jpeg",
    "is_shard_dir",
    "read_shard_manifest",
    "shard_plan",
    "run_shards",
    "finish_shards",
    "existing_shard_report",
    "write_rows",
]

logger = logging.getLogger(__name__)

SHARD_FORMAT = "cavmae-shards"
SHARD_VERSION = 2
#: Versions this code reads: 1 stored the fbank as plain ``fbank.npy``.
READ_VERSIONS = (1, 2)
FBANK_MEMBER = "fbank.f16z"
_F16Z_MAGIC = b"F16Z"
SHARD_PATTERN = "shard-{:06d}.tar"
SHARD_PROGRESS = "_shards.jsonl"
DEFAULT_SHARD_BYTES = 1_000_000_000
#: JPEG quality of stored frames: 90 gives 36.6 dB PSNR, 17 kB per 224-px natural frame
#: (bench/bench_data.py); 85 gives 35.2 dB and 14 kB.
DEFAULT_JPEG_QUALITY = 90
#: Feature fields that fix what is stored (the fbank statistics and target length may change).
GEOMETRY_FIELDS = ("sample_rate", "num_mel_bins", "frame_length_ms", "frame_shift_ms", "img_size")


def feature_digest(feature_config: dict[str, Any], frames_per_clip: int) -> str:
    """Short digest of the stored geometry (``GEOMETRY_FIELDS`` and K) of a shard's samples."""
    body = {k: feature_config[k] for k in GEOMETRY_FIELDS}
    body["frames_per_clip"] = int(frames_per_clip)
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


# --- sample encoding ---------------------------------------------------------------------------


def encode_jpeg(frame: np.ndarray, quality: int) -> bytes:
    """(S, S, 3) uint8 RGB -> JPEG bytes (4:2:0, as libjpeg's default)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(frame)).save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()


def decode_jpeg(data: bytes) -> np.ndarray:
    """JPEG bytes -> (S, S, 3) uint8 RGB."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return np.array(img.convert("RGB"), dtype=np.uint8)  # writable


def encode_fbank(fbank: np.ndarray) -> bytes:
    """(n, F) float16 -> ``fbank.f16z`` bytes, lossless.

    Layout: ``b"F16Z"``, n and F as little-endian uint32, then zlib (level 1) of the array's
    bytes split into two planes, all low bytes then all high bytes. The high bytes (sign,
    exponent and top mantissa bits of a smooth log-mel) compress about 4x, the low bytes hardly
    at all; together 25-30 % smaller than ``.npy`` on natural audio (bench/bench_data.py), at
    about 4 ms to encode and 1-1.5 ms to decode a 10 s clip.
    """
    fb = np.ascontiguousarray(fbank, dtype="<f2")  # (n, F)
    planes = np.ascontiguousarray(fb.view(np.uint8).reshape(-1, 2).T)  # (2, n * F): low, high
    header = _F16Z_MAGIC + np.array(fb.shape, dtype="<u4").tobytes()
    return header + zlib.compress(planes.tobytes(), 1)


def decode_fbank(data: bytes) -> np.ndarray:
    """``fbank.f16z`` (or version-1 ``fbank.npy``) bytes -> (n, F) float16 raw log-mel."""
    if not data.startswith(_F16Z_MAGIC):
        return np.load(io.BytesIO(data), allow_pickle=False)  # version 1: plain .npy
    n, f = (int(v) for v in np.frombuffer(data, dtype="<u4", count=2, offset=4))
    try:
        planes = np.frombuffer(zlib.decompress(data[12:]), dtype=np.uint8)
    except zlib.error as e:
        raise ValueError(f"fbank.f16z is damaged: {e}") from e
    if planes.size != 2 * n * f:
        raise ValueError(f"fbank.f16z holds {planes.size} bytes, expected {2 * n * f} for ({n}, {f})")
    return np.ascontiguousarray(planes.reshape(2, -1).T).view("<f2").reshape(n, f).astype(np.float16)


def sample_fbank(members: dict[str, bytes]) -> np.ndarray:
    """A sample's (n, F) float16 fbank from its tar members (either shard version)."""
    data = members.get(FBANK_MEMBER)
    return decode_fbank(data if data is not None else members["fbank.npy"])


def encode_clip(fbank: np.ndarray, n_real: int, frames: np.ndarray, quality: int) -> dict[str, bytes]:
    """The tar members of one clip, without the ``json`` record.

    Args:
        fbank: (T, F) float16 raw log-mel after ``pad_or_crop``.
        n_real: Real (unpadded) rows; only these are stored.
        frames: (K, S, S, 3) uint8.
        quality: JPEG quality.
    """
    out = {FBANK_MEMBER: encode_fbank(fbank[:n_real])}  # (n, F) real rows
    for k, frame in enumerate(frames):
        out[f"f{k}.jpg"] = encode_jpeg(frame, quality)
    return out


@dataclass
class _EncodeJob:
    """A runner job whose result is encoded to tar members in the worker."""

    fn: Callable[[Any], RowResult]
    job: Any
    quality: int


def _encode_row(ej: _EncodeJob) -> RowResult:
    """Run the inner job, then JPEG-encode its frames (in the worker process)."""
    res = ej.fn(ej.job)
    if res.error is not None or res.fbank is None or res.frames is None:
        return res
    n_real = int(res.meta.get("fbank_frames", res.fbank.shape[0]))
    members = encode_clip(res.fbank, n_real, res.frames, ej.quality)
    meta = dict(res.meta, _members=members, _frames_per_clip=int(res.frames.shape[0]))
    return RowResult(res.row, meta=meta)


def frame_times_of(duration_s: float | None, frames_per_clip: int) -> list[float]:
    """Frame times of the official grid scaled to a clip's duration (as PreparedDataset)."""
    if frames_per_clip == 1:
        return [5.0 if duration_s is None else min(5.0, float(duration_s) / 2)]
    scale = min(float(duration_s or 10.0), 10.0) / 10.0
    return [round(k * 10.0 / frames_per_clip * scale, 6) for k in range(frames_per_clip)]


# --- reading the manifest ------------------------------------------------------------------------


def is_shard_dir(path: str | os.PathLike[str]) -> bool:
    """True if ``path`` is a local folder with a sharded-dataset manifest."""
    p = Path(path) / fmt.MANIFEST_FILE
    if not p.is_file():
        return False
    try:
        return json.loads(p.read_text(encoding="utf-8")).get("format") == SHARD_FORMAT
    except (OSError, json.JSONDecodeError):
        return False


def check_shard_manifest(m: dict[str, Any], where: str) -> dict[str, Any]:
    """Validate a parsed sharded-dataset manifest.

    Raises:
        ConfigError: On another format or version, or an unfinished preparation.
    """
    if m.get("format") != SHARD_FORMAT:
        raise ConfigError(f"{where} is not a {SHARD_FORMAT} manifest (format={m.get('format')!r})")
    if m.get("version") not in READ_VERSIONS:
        raise ConfigError(
            f"{where} uses shard-format version {m.get('version')}, this code reads versions "
            f"{', '.join(map(str, READ_VERSIONS))}; prepare the data again or upgrade cavmae-studio"
        )
    if not m.get("complete"):
        raise ConfigError(
            f"the preparation behind {where} has not finished; run the same prepare command "
            "again to resume it"
        )
    return m


def read_shard_manifest(root: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check the manifest of a local sharded dataset (see :func:`check_shard_manifest`)."""
    p = Path(root) / fmt.MANIFEST_FILE
    if not p.is_file():
        raise ConfigError(f"{root} has no {fmt.MANIFEST_FILE}; it is not a sharded dataset")
    try:
        m = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot read {p}: {e}") from e
    return check_shard_manifest(m, str(p))


# --- writing -------------------------------------------------------------------------------------


class _ShardSink:
    """Appends encoded rows, in row order, to size-limited shards; records finished shards."""

    def __init__(self, out: Path, plan: dict[str, Any], done: list[dict[str, Any]], shard_bytes: int,
                 record_of: Callable[[int], dict[str, Any]]) -> None:
        self.out, self.plan, self.shard_bytes, self.record_of = out, plan, shard_bytes, record_of
        self.digest = feature_digest(plan["feature_config"], plan["frames_per_clip"])
        self.k = int(plan["frames_per_clip"])
        self.shard_index = len(done)
        self.next_uid = sum(int(s["count"]) for s in done)
        self.next_row = max((int(s["rows"][1]) for s in done), default=0)
        self._log = (out / SHARD_PROGRESS).open("a", encoding="utf-8")
        self._writer: Any = None
        self._file: Any = None
        self._reset()

    def _reset(self) -> None:
        self.items: list[dict[str, Any]] = []
        self.skipped: list[dict[str, Any]] = []
        self.first_row = self.next_row
        self.first_uid = self.next_uid
        self.size = 0

    @property
    def _name(self) -> str:
        return SHARD_PATTERN.format(self.shard_index)

    def put(self, res: RowResult) -> None:
        """Store the result of the next row (``res.row == self.next_row``)."""
        import webdataset as wds

        rec = self.record_of(res.row)
        if res.error is not None:
            logger.warning("skipping %s: %s", rec.get("path") or rec["key"], res.error)
            self.skipped.append({"key": rec["key"], "path": rec.get("path", ""), "reason": res.error})
        else:
            meta = dict(res.meta)
            members = meta.pop("_members")
            meta.pop("_frames_per_clip", None)
            rec = {k: v for k, v in rec.items() if k not in ("row", "size", "mtime_ns")}
            rec.update(meta)
            syn_times = (rec.get("synthetic") or {}).get("frame_times")
            rec["frame_times"] = syn_times or frame_times_of(rec.get("duration_s"), self.k)
            rec.update(uid=self.next_uid, shard=self._name)
            if self._writer is None:
                self._file = (self.out / (self._name + ".tmp")).open("wb")
                self._writer = wds.TarWriter(self._file, encoder=False, mtime=0.0)
            sample = {"__key__": f"{self.next_uid:09d}", **members}
            sample["json"] = json.dumps({**rec, "feature_digest": self.digest}).encode()
            self.size += self._writer.write(sample)
            self.items.append(rec)
            self.next_uid += 1
        self.next_row += 1
        if self.size >= self.shard_bytes:
            self.close_shard()

    def close_shard(self) -> None:
        """Finish the current shard: flush, rename into place, record it as done."""
        if self.next_row == self.first_row:
            return
        nbytes = 0
        if self._writer is not None:
            self._writer.close()
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self.out / (self._name + ".tmp"), self.out / self._name)
            nbytes = (self.out / self._name).stat().st_size
        entry = {
            "shard": self._name if self.items else None,
            "rows": [self.first_row, self.next_row],
            "count": len(self.items),
            "first_uid": self.first_uid,
            "bytes": nbytes,
            "items": self.items,
            "skipped": self.skipped,
        }
        self._log.write(json.dumps(entry, separators=(",", ":")) + "\n")
        self._log.flush()
        os.fsync(self._log.fileno())
        self._writer = self._file = None
        if self.items:
            self.shard_index += 1
        self._reset()

    def close(self, finished: bool) -> None:
        """Close the last shard when every row is done; else drop the unfinished one."""
        if finished:
            self.close_shard()
        elif self._writer is not None:
            self._writer.close()
            self._file.close()
            (self.out / (self._name + ".tmp")).unlink(missing_ok=True)
        self._log.close()


def _read_shard_progress(out: Path) -> list[dict[str, Any]]:
    p = out / SHARD_PROGRESS
    return list(fmt.read_jsonl(p, tolerate_torn_tail=True)) if p.is_file() else []


def shard_plan(
    plan: dict[str, Any],
    jpeg_quality: int = DEFAULT_JPEG_QUALITY,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
) -> dict[str, Any]:
    """``plan`` with the shard options added and its digest renewed.

    Args:
        plan: A runner plan (``feature_config``, ``frames_per_clip``, ``num_rows``, ...).
        jpeg_quality: JPEG quality of the frames (1..95).
        shard_bytes: A shard is closed once it holds at least this many bytes.

    Raises:
        ConfigError: On a quality or size out of range.
    """
    from training.data.runner import plan_digest

    if not 1 <= jpeg_quality <= 95:
        raise ConfigError(f"jpeg_quality must be in 1..95, got {jpeg_quality}")
    if shard_bytes < 1:
        raise ConfigError(f"shard_bytes must be positive, got {shard_bytes}")
    out = {**plan, "output": "shards", "jpeg_quality": int(jpeg_quality)}
    out["shard_bytes"] = int(shard_bytes)
    out["digest"] = plan_digest(out)
    return out


def run_shards(
    out: Path,
    plan: dict[str, Any],
    make_job: Callable[[int], Any],
    worker: Callable[[Any], RowResult],
    record_of: Callable[[int], dict[str, Any]],
    *,
    workers: int,
    resume: bool,
    progress: Progress | None,
    preload: tuple[str, ...] = (),
) -> tuple[list[dict[str, Any]], int, int] | None:
    """Produce the shards of ``plan`` (arguments as :func:`training.data.runner.run_rows`).

    ``plan`` must come from :func:`shard_plan` (it fixes the JPEG quality and shard size).

    Returns:
        ``None`` if ``out`` already holds this complete dataset, else ``(finished shard
        records, rows processed now, rows done before)``.
    """
    shard_bytes, jpeg_quality = int(plan["shard_bytes"]), int(plan["jpeg_quality"])
    state = _start(out, plan, resume)
    if state is None:
        return None
    _, fresh = state
    if fresh:
        (out / SHARD_PROGRESS).unlink(missing_ok=True)
        for p in out.glob("shard-*.tar*"):
            p.unlink()
    done = _read_shard_progress(out)
    for p in out.glob("shard-*.tar.tmp"):
        p.unlink()  # an unfinished shard of a killed run: redone below
    rows = int(plan["num_rows"])
    sink = _ShardSink(out, plan, done, shard_bytes, record_of)
    resumed = sink.next_row
    if resumed:
        logger.info("resuming %s: %d shard(s), %d of %d rows already done", out, len(done), resumed, rows)
    todo = list(range(resumed, rows))
    pending: dict[int, RowResult] = {}
    processed = 0

    def handle(res: RowResult) -> None:
        nonlocal processed
        pending[res.row] = res
        while sink.next_row in pending:
            sink.put(pending.pop(sink.next_row))
        processed += 1
        if progress is not None:
            progress((resumed + processed) / rows, record_of(res.row)["key"])

    def job(r: int) -> _EncodeJob:
        return _EncodeJob(worker, make_job(r), jpeg_quality)

    finished = False
    try:
        if workers <= 0:
            for r in todo:
                handle(_encode_row(job(r)))
        else:
            _run_pool(todo, job, _encode_row, handle, workers, (worker.__module__, *preload))
        finished = True
    finally:
        sink.close(finished)
    return _read_shard_progress(out), processed, resumed


def finish_shards(
    out: Path,
    plan: dict[str, Any],
    shards: list[dict[str, Any]],
    label_set: LabelSet | None,
    pre_skipped: list[dict[str, str]],
    extra: dict[str, Any],
) -> tuple[int, list[tuple[str, str]]]:
    """Write ``items.jsonl``, ``labels.csv`` and ``manifest.json``; drop the run files.

    Returns:
        ``(usable clip count, [(key, reason) of skipped items])``.

    Raises:
        ConfigError: If no item at all could be used.
    """
    items = [it for s in shards for it in s["items"]]
    skipped = pre_skipped + [sk for s in shards for sk in s["skipped"]]
    if not items:
        raise ConfigError(
            f"none of the {len(skipped)} files could be decoded; first reasons: "
            + "; ".join(f"{s['key']}: {s['reason']}" for s in skipped[:3])
        )
    cfg = FeatureConfig.from_dict(plan["feature_config"])
    fmt.write_jsonl_atomic(out / fmt.ITEMS_FILE, items)
    if label_set is not None:
        label_set.to_csv(out / fmt.LABELS_FILE)
    listed = [
        {"name": s["shard"], "count": s["count"], "first_uid": s["first_uid"], "bytes": s["bytes"]}
        for s in shards
        if s["count"]
    ]
    plan_path = out / fmt.PLAN_FILE
    manifest = {
        "format": SHARD_FORMAT,
        "version": SHARD_VERSION,
        "complete": True,
        "feature_config": cfg.to_dict(),
        "feature_digest": feature_digest(plan["feature_config"], plan["frames_per_clip"]),
        "frames_per_clip": plan["frames_per_clip"],
        "image_size": cfg.img_size,
        "target_length": cfg.target_length,
        "num_mel_bins": cfg.num_mel_bins,
        "fbank_dtype": "float16",
        "fbank_domain": "raw",
        "jpeg_quality": plan["jpeg_quality"],
        "count": len(items),
        "num_classes": len(label_set) if label_set is not None else 0,
        "label_from": plan["label_from"],
        "source": plan["source"],
        "shards": listed,
        "bytes": sum(s["bytes"] for s in listed),
        "skipped": skipped,
        "plan_digest": plan["digest"],
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "extra": extra,
    }
    fmt.write_json_atomic(out / fmt.MANIFEST_FILE, manifest)
    (out / SHARD_PROGRESS).unlink(missing_ok=True)
    plan_path.unlink(missing_ok=True)
    return len(items), [(s["key"], s["reason"]) for s in skipped]


def existing_shard_report(out: Path, t0: float) -> PrepareReport:
    """Report for a sharded dataset that was already complete (nothing processed)."""
    m = read_shard_manifest(out)
    logger.info("%s is already prepared (%d clips in %d shards); nothing to do", out, m["count"],
                len(m["shards"]))
    skipped = [(s["key"], s["reason"]) for s in m["skipped"]]
    total = m["count"] + len(skipped)
    return PrepareReport(out, total, m["count"], 0, total, skipped, time.perf_counter() - t0)


def write_rows(
    out: Path,
    plan: dict[str, Any],
    make_job: Callable[[int], Any],
    worker: Callable[[Any], RowResult],
    record_of: Callable[[int], dict[str, Any]],
    *,
    output: str,
    label_set: LabelSet | None,
    pre_skipped: list[dict[str, str]],
    extra: dict[str, Any],
    workers: int,
    resume: bool,
    progress: Progress | None,
    preload: tuple[str, ...] = (),
    jpeg_quality: int = DEFAULT_JPEG_QUALITY,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
) -> PrepareReport:
    """Run a plan into either output format and finish it (shared by the prepare entry points).

    Args:
        output: ``"shards"`` (this module's format) or ``"mmap"`` (:mod:`training.data.formats`).
        Others: as :func:`training.data.runner.run_rows`, :func:`finish_shards` and
            :func:`shard_plan`.

    Returns:
        The :class:`training.data.runner.PrepareReport`.
    """
    from training.data.runner import existing_report, finish_dataset, run_rows

    t0 = time.perf_counter()
    total = int(plan["num_rows"]) + len(pre_skipped)
    kw = dict(workers=workers, resume=resume, progress=progress, preload=preload)
    if output == "mmap":
        result = run_rows(out, plan, make_job, worker, record_of, **kw)
        if result is None:
            return existing_report(out, t0)
        done, processed, resumed = result
        count, skipped = finish_dataset(out, plan, done, label_set, pre_skipped, extra)
    elif output == "shards":
        plan = shard_plan(plan, jpeg_quality, shard_bytes)
        res = run_shards(out, plan, make_job, worker, record_of, **kw)
        if res is None:
            return existing_shard_report(out, t0)
        shards, processed, resumed = res
        count, skipped = finish_shards(out, plan, shards, label_set, pre_skipped, extra)
    else:
        raise ConfigError(f"output must be 'shards' or 'mmap', got {output!r}")
    report = PrepareReport(out, total, count, processed, resumed, skipped, time.perf_counter() - t0)
    logger.info("%s", report.summary())
    return report
