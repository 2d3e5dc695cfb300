"""Resumable, parallel writing of a prepared dataset (layout: :mod:`training.data.formats`).

The callers (:func:`training.data.prepare.prepare_folder`,
:func:`training.data.prepare_synthetic.prepare_synthetic`) build a *plan*: a JSON-serialisable
dict that fixes the rows to produce and every setting; its SHA-256 digest identifies the
preparation. :func:`run_rows` then

1. checks the output folder: the same complete dataset returns at once, the same unfinished
   plan resumes, anything else is refused (or removed with ``resume=False``);
2. preallocates ``fbank.npy`` / ``frames.npy`` as memory maps with one row per planned item;
3. runs a worker function per unfinished row, in a process pool or in this process. The pool
   uses the forkserver start method with torch and the decoding modules preloaded, so workers
   start by a cheap fork of a clean server rather than by re-importing torch each (spawn is the
   fallback where forkserver does not exist); one torch thread per worker, at most
   ``2 * workers`` jobs in flight. As with any non-fork pool, call it from under
   ``if __name__ == "__main__":`` in scripts;
4. writes each result into its row, and every ``_FLUSH_EVERY`` rows (or 10 s) flushes the maps
   and only then appends the rows to ``_progress.jsonl``, so a hard kill loses at most that
   batch, which the next run redoes.

:func:`finish_dataset` writes ``items.jsonl``, ``labels.csv`` and ``manifest.json`` and
removes the run files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cavmae.config import FeatureConfig
from cavmae.errors import ConfigError
from cavmae.labels import LabelSet
from training.data import formats as fmt

__all__ = [
    "Progress",
    "PrepareReport",
    "RowResult",
    "plan_digest",
    "run_rows",
    "finish_dataset",
    "existing_report",
]

logger = logging.getLogger(__name__)

Progress = Callable[[float, str], None]
Records = dict[int, dict[str, Any]]

_FLUSH_EVERY = 32  # rows per durable flush of the memory maps and the progress log
_FLUSH_SECONDS = 10.0


@dataclass(frozen=True)
class PrepareReport:
    """Outcome of a preparation run.

    Attributes:
        out_dir: The prepared directory.
        total: Source items in the plan (usable or not).
        count: Usable clips in the finished dataset.
        processed: Items decoded by this run (the rest were done by an earlier, resumed run).
        resumed: Items already finished before this run started.
        skipped: ``(key, reason)`` of every item left out (this and earlier runs).
        seconds: Wall time of this run.
    """

    out_dir: Path
    total: int
    count: int
    processed: int
    resumed: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def clips_per_s(self) -> float:
        """Decoding throughput of this run (0 when nothing was processed)."""
        return self.processed / self.seconds if self.processed and self.seconds > 0 else 0.0

    def summary(self) -> str:
        """A few human-readable lines."""
        lines = [
            f"prepared {self.count} of {self.total} clips in {self.out_dir}",
            f"this run: {self.processed} decoded in {self.seconds:.1f} s "
            f"({self.clips_per_s:.2f} clips/s), {self.resumed} already done",
        ]
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)}:")
            lines += [f"  {key}: {reason}" for key, reason in self.skipped]
        return "\n".join(lines)


@dataclass
class RowResult:
    """What a worker returns for one row: arrays and metadata, or a skip reason."""

    row: int
    fbank: np.ndarray | None = None  # (T, F) float16 raw log-mel
    frames: np.ndarray | None = None  # (K, S, S, 3) uint8
    meta: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def plan_digest(plan: dict[str, Any]) -> str:
    """SHA-256 of the plan's canonical JSON (without a previous ``digest`` key)."""
    body = {k: v for k, v in plan.items() if k != "digest"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _remove_outputs(out: Path) -> None:
    for name in fmt.ALL_FILES:
        (out / name).unlink(missing_ok=True)


class _Writer:
    """Owns the memory maps and the progress log of one preparation."""

    def __init__(self, out: Path, plan: dict[str, Any], num_rows: int, fresh: bool) -> None:
        cfg = FeatureConfig.from_dict(plan["feature_config"])
        k, s = plan["frames_per_clip"], cfg.img_size
        fb_shape = (num_rows, cfg.target_length, cfg.num_mel_bins)
        fr_shape = (num_rows, k, s, s, 3)
        have = (out / fmt.FBANK_FILE).is_file() and (out / fmt.FRAMES_FILE).is_file()
        if fresh or not have:
            self.fbank = np.lib.format.open_memmap(out / fmt.FBANK_FILE, "w+", np.float16, fb_shape)
            self.frames = np.lib.format.open_memmap(out / fmt.FRAMES_FILE, "w+", np.uint8, fr_shape)
        else:
            self.fbank = np.load(out / fmt.FBANK_FILE, mmap_mode="r+")
            self.frames = np.load(out / fmt.FRAMES_FILE, mmap_mode="r+")
            if self.fbank.shape != fb_shape or self.frames.shape != fr_shape:
                raise ConfigError(
                    f"the arrays in {out} do not match its plan ({self.fbank.shape} vs "
                    f"{fb_shape}); prepare again with resume=False"
                )
        self._pending: list[dict[str, Any]] = []
        self._last_flush = time.monotonic()
        self._log = (out / fmt.PROGRESS_FILE).open("a", encoding="utf-8")

    def put(self, record: dict[str, Any], res: RowResult) -> None:
        """Store one finished row (arrays for a usable clip, or only a skip record)."""
        row = record["row"]
        if res.fbank is not None and res.frames is not None:
            for name, arr, mm in (
                ("fbank", res.fbank, self.fbank),
                ("frames", res.frames, self.frames),
            ):
                if arr.shape != mm.shape[1:]:
                    raise ConfigError(
                        f"{name} of {record.get('key')} has shape {arr.shape}, expected "
                        f"{mm.shape[1:]}; the decoder and the plan disagree"
                    )
            self.fbank[row] = res.fbank
            self.frames[row] = res.frames
        self._pending.append(record)
        due = time.monotonic() - self._last_flush > _FLUSH_SECONDS
        if len(self._pending) >= _FLUSH_EVERY or due:
            self.flush()

    def flush(self) -> None:
        """Make the stored rows durable, then record them as finished."""
        if not self._pending:
            return
        self.fbank.flush()
        self.frames.flush()
        for r in self._pending:
            self._log.write(json.dumps(r, separators=(",", ":")) + "\n")
        self._log.flush()
        os.fsync(self._log.fileno())
        self._pending.clear()
        self._last_flush = time.monotonic()

    def close(self) -> None:
        """Flush and release the maps."""
        self.flush()
        self._log.close()
        del self.fbank, self.frames


def _read_progress(out: Path) -> Records:
    p = out / fmt.PROGRESS_FILE
    if not p.is_file():
        return {}
    return {int(r["row"]): r for r in fmt.read_jsonl(p, tolerate_torn_tail=True)}


def _start(out: Path, plan: dict[str, Any], resume: bool) -> tuple[Records, bool] | None:
    """Check ``out`` against the plan: ``None`` if already complete, else (done rows, fresh)."""
    digest = plan["digest"]
    manifest_path = out / fmt.MANIFEST_FILE
    if manifest_path.is_file():
        m = json.loads(manifest_path.read_text(encoding="utf-8"))
        if resume and m.get("complete") and m.get("plan_digest") == digest:
            return None
        if resume:
            raise ConfigError(
                f"{out} already holds a prepared dataset from other sources or settings; "
                "choose another output folder, or pass resume=False (--no-resume) to overwrite it"
            )
        _remove_outputs(out)
    plan_path = out / fmt.PLAN_FILE
    if plan_path.is_file():
        old = json.loads(plan_path.read_text(encoding="utf-8"))
        if resume and old.get("digest") == digest:
            return _read_progress(out), False
        if resume:
            raise ConfigError(
                f"{out} holds an unfinished preparation of other files or settings (did the "
                "source files change since it started?); pass resume=False (--no-resume) to "
                "start over"
            )
        _remove_outputs(out)
    out.mkdir(parents=True, exist_ok=True)
    fmt.write_json_atomic(plan_path, plan)
    return {}, True


def _init_worker() -> None:
    """One torch thread per worker: the pool already uses every core."""
    import torch

    torch.set_num_threads(1)


def run_rows(
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
) -> tuple[Records, int, int] | None:
    """Produce every unfinished row of ``plan`` (see the module docstring).

    Args:
        out: Output directory.
        plan: The plan, with ``digest``, ``num_rows``, ``feature_config``, ``frames_per_clip``.
        make_job: Row -> picklable job for ``worker``.
        worker: Top-level function job -> :class:`RowResult` (runs in a worker process).
        record_of: Row -> base ``items.jsonl`` record (``row``, ``key``, ``path``, ...).
        workers: Processes; 0 runs in this process.
        resume: Resume or return a complete identical dataset; ``False`` starts over.
        progress: Optional ``callback(fraction_done, message)``.
        preload: Modules the workers need, imported once in the fork server.

    Returns:
        ``None`` if ``out`` already holds this complete dataset, else
        ``(records of all rows, processed now, done before)``.
    """
    state = _start(out, plan, resume)
    if state is None:
        return None
    done, fresh = state
    rows = int(plan["num_rows"])
    todo = [r for r in range(rows) if r not in done]
    resumed = len(done)
    if resumed:
        logger.info("resuming %s: %d of %d rows already done", out, resumed, rows)
    writer = _Writer(out, plan, rows, fresh)
    processed = 0

    def handle(res: RowResult) -> None:
        nonlocal processed
        rec = record_of(res.row)
        if res.error is not None:
            rec = {"row": res.row, "key": rec["key"], "path": rec["path"], "skipped": res.error}
            logger.warning("skipping %s: %s", rec["path"] or rec["key"], res.error)
        else:
            rec.update(res.meta)
        writer.put(rec, res)
        done[res.row] = rec
        processed += 1
        if progress is not None:
            progress(len(done) / rows, rec["key"])

    try:
        if workers <= 0:
            for r in todo:
                handle(worker(make_job(r)))
        else:
            _run_pool(todo, make_job, worker, handle, workers, preload)
    finally:
        writer.close()
    return done, processed, resumed


def _pool_context(preload: tuple[str, ...]) -> multiprocessing.context.BaseContext:
    """Forkserver (modules preloaded once, workers forked from a clean server) or spawn."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        # Takes effect when this process starts its fork server (first pool only).
        ctx.set_forkserver_preload(["torch", __name__, *preload])
        return ctx
    return multiprocessing.get_context("spawn")


def _run_pool(
    todo: list[int],
    make_job: Callable[[int], Any],
    worker: Callable[[Any], RowResult],
    handle: Callable[[RowResult], None],
    workers: int,
    preload: tuple[str, ...],
) -> None:
    """Process pool with at most ``2 * workers`` jobs in flight."""
    queue = iter(todo)
    ctx = _pool_context((worker.__module__, *preload))
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker) as pool:
        pending: dict[Future[RowResult], int] = {}

        def submit_next() -> None:
            r = next(queue, None)
            if r is not None:
                pending[pool.submit(worker, make_job(r))] = r

        for _ in range(2 * workers):
            submit_next()
        try:
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    row = pending.pop(fut)
                    try:
                        res = fut.result()
                    except Exception as e:
                        e.add_note(
                            f"while preparing row {row}; fix the cause and run again to resume"
                        )
                        raise
                    handle(res)
                    submit_next()
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise


def finish_dataset(
    out: Path,
    plan: dict[str, Any],
    done: Records,
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
    items = [done[r] for r in sorted(done) if "skipped" not in done[r]]
    skipped = pre_skipped + [
        {"key": done[r]["key"], "path": done[r]["path"], "reason": done[r]["skipped"]}
        for r in sorted(done)
        if "skipped" in done[r]
    ]
    if not items:
        raise ConfigError(
            f"none of the {len(done)} files could be decoded; first reasons: "
            + "; ".join(f"{s['key']}: {s['reason']}" for s in skipped[:3])
        )
    cfg = FeatureConfig.from_dict(plan["feature_config"])
    fmt.write_jsonl_atomic(out / fmt.ITEMS_FILE, items)
    if label_set is not None:
        label_set.to_csv(out / fmt.LABELS_FILE)
    manifest = {
        "format": fmt.FORMAT_NAME,
        "version": fmt.FORMAT_VERSION,
        "complete": True,
        "feature_config": cfg.to_dict(),
        "frames_per_clip": plan["frames_per_clip"],
        "image_size": cfg.img_size,
        "target_length": cfg.target_length,
        "num_mel_bins": cfg.num_mel_bins,
        "fbank_dtype": "float16",
        "fbank_domain": "raw",
        "num_rows": len(done),
        "count": len(items),
        "num_classes": len(label_set) if label_set is not None else 0,
        "label_from": plan["label_from"],
        "source": plan["source"],
        "skipped": skipped,
        "plan_digest": plan["digest"],
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "extra": extra,
    }
    fmt.write_json_atomic(out / fmt.MANIFEST_FILE, manifest)
    (out / fmt.PROGRESS_FILE).unlink(missing_ok=True)
    (out / fmt.PLAN_FILE).unlink(missing_ok=True)
    return len(items), [(s["key"], s["reason"]) for s in skipped]


def existing_report(out: Path, t0: float) -> PrepareReport:
    """Report for a dataset that was already complete (nothing processed)."""
    m = fmt.read_manifest(out)
    logger.info("%s is already prepared (%d clips); nothing to do", out, m["count"])
    skipped = [(s["key"], s["reason"]) for s in m["skipped"]]
    total = m["count"] + len(skipped)
    return PrepareReport(
        out, total, m["count"], 0, int(m["num_rows"]), skipped, time.perf_counter() - t0
    )
