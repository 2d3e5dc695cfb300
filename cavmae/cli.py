"""The ``cavmae`` command line: classify, reconstruct, embed, index, evaluate, zoo, convert.

Every command works out of the box on the bundled demo model and takes ``--model NAME_OR_PATH``
(a zoo name, an official ``.pth``, our ``.safetensors``, or a training run folder). Bad input
gives one line on stderr and exit code 2; never a traceback (``--debug`` shows it).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cavmae.config import PRECISIONS
from cavmae.errors import CavmaeError
from cavmae.wav import write_wav

log = logging.getLogger("cavmae.cli")

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cavmae`` console script; returns the exit code."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.func(args) or 0)
    except CavmaeError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


# --- parser ------------------------------------------------------------------------------


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cavmae", description=__doc__.splitlines()[0])
    p.add_argument("--debug", action="store_true", help="verbose logging and full tracebacks")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def model_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--model", default="demo", help="zoo name, .pth/.safetensors file or run folder (default: demo)")
        sp.add_argument("--pretrain", default=None, help="optional pretraining checkpoint used next to a classifier")
        sp.add_argument("--labels", default=None, help="label CSV (index,mid,display_name) for a checkpoint without labels")
        sp.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
        sp.add_argument("--threads", type=int, default=None, help="CPU threads")
        sp.add_argument(
            "--precision", choices=PRECISIONS, default="auto",
            help="auto: bf16 on CUDA, exact float32 on CPU; bfloat16 on CPU is 2-3.3x faster on "
            "CPUs with AVX512-BF16/AMX (probabilities within ~5e-3)",
        )
        sp.add_argument("--num-heads", type=int, default=None, help="encoder heads (not stored in official .pth files)")
        sp.add_argument("--decoder-num-heads", type=int, default=None)
        sp.add_argument("--json", action="store_true", help="machine-readable JSON on stdout")
        sp.add_argument("--no-progress", action="store_true", help="no progress bars")

    sp = sub.add_parser("classify", help="top-k labels of media files")
    model_args(sp)
    sp.add_argument("files", nargs="+")
    sp.add_argument("--top-k", type=int, default=5)
    sp.add_argument("--mode", default="auto", choices=["auto", "multimodal", "audioonly", "videoonly", "missingaudioonly", "missingvideoonly"])
    sp.add_argument("--single-frame", action="store_true", help="middle frame only (no 10-frame ensemble)")
    sp.add_argument("--timeline", action="store_true", help="per-window predictions over the whole file")
    sp.add_argument("--window", type=float, default=10.0, help="timeline window (s)")
    sp.add_argument("--hop", type=float, default=10.0, help="timeline hop (s)")
    sp.set_defaults(func=_cmd_classify)

    sp = sub.add_parser("reconstruct", help="mask and reconstruct a clip; writes images, audio and a summary")
    model_args(sp)
    sp.add_argument("file")
    sp.add_argument("--out", required=True, help="output folder")
    sp.add_argument("--ratio-a", type=float, default=0.75)
    sp.add_argument("--ratio-v", type=float, default=0.75)
    sp.add_argument("--mode-a", default="unstructured", choices=["unstructured", "time", "freq", "tf"])
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--no-audio", action="store_true", help="skip the Griffin-Lim audio rendering")
    sp.set_defaults(func=_cmd_reconstruct)

    sp = sub.add_parser("embed", help="L2-normalised audio/visual embeddings of media files")
    model_args(sp)
    sp.add_argument("files", nargs="+")
    sp.add_argument("--out", default=None, help="write an .npz (keys, audio, visual)")
    sp.set_defaults(func=_cmd_embed)

    sp = sub.add_parser("index", help="build or search a retrieval index over a folder")
    isub = sp.add_subparsers(dest="index_command", metavar="ACTION")
    b = isub.add_parser("build", help="index a folder (incremental)")
    model_args(b)
    b.add_argument("folder")
    b.add_argument("--index", default=None, help="index folder (default: FOLDER/.cavmae-index)")
    b.set_defaults(func=_cmd_index_build)
    s = isub.add_parser("search", help="query an index with a media file")
    model_args(s)
    s.add_argument("query")
    s.add_argument("--index", required=True)
    s.add_argument("--direction", default="auto", choices=["auto", "audio->visual", "visual->audio", "audio->audio", "visual->visual"])
    s.add_argument("-k", type=int, default=10)
    s.set_defaults(func=_cmd_index_search)

    sp = sub.add_parser("evaluate", help="evaluation protocols")
    esub = sp.add_subparsers(dest="eval_command", metavar="WHAT")
    r = esub.add_parser("retrieval", help="R@1/5/10 and median rank, both directions, on a folder of clips")
    model_args(r)
    r.add_argument("folder")
    r.set_defaults(func=_cmd_eval_retrieval)

    sp = sub.add_parser("zoo", help="published checkpoints")
    zsub = sp.add_subparsers(dest="zoo_command", metavar="ACTION")
    zl = zsub.add_parser("list", help="list registered models")
    zl.add_argument("--json", action="store_true")
    zl.set_defaults(func=_cmd_zoo_list)
    zd = zsub.add_parser("download", help="download a checkpoint (and its labels) into the cache")
    zd.add_argument("name")
    zd.add_argument("--no-progress", action="store_true")
    zd.set_defaults(func=_cmd_zoo_download)

    sp = sub.add_parser("convert", help="convert an official .pth into our .safetensors format")
    sp.add_argument("src")
    sp.add_argument("dst")
    sp.add_argument("--labels", default=None, help="label CSV to embed")
    sp.add_argument("--num-heads", type=int, default=None)
    sp.add_argument("--decoder-num-heads", type=int, default=None)
    sp.add_argument("--norm-pix-loss", action="store_true")
    sp.set_defaults(func=_cmd_convert)

    sp = sub.add_parser("info", help="describe a model")
    model_args(sp)
    sp.set_defaults(func=_cmd_info)
    return p


# --- helpers -----------------------------------------------------------------------------


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if getattr(args, "num_heads", None):
        out["num_heads"] = args.num_heads
    if getattr(args, "decoder_num_heads", None):
        out["decoder_num_heads"] = args.decoder_num_heads
    return out


def _download_bar(args: argparse.Namespace):  # -> Callable[[int, int | None], None] | None
    if getattr(args, "no_progress", False) or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    bar: dict[str, Any] = {}

    def cb(done: int, total: int | None) -> None:
        if "t" not in bar:
            bar["t"] = tqdm(total=total, unit="B", unit_scale=True, desc="download", file=sys.stderr)
        bar["t"].n = done
        bar["t"].refresh()

    return cb


def _predictor(args: argparse.Namespace):  # -> Predictor
    from cavmae.inference import Predictor

    return Predictor.from_checkpoint(
        args.model,
        pretrain=args.pretrain,
        labels=args.labels,
        device=args.device,
        threads=args.threads,
        progress=_download_bar(args),
        precision=args.precision,
        **_overrides(args),
    )


def _files_bar(args: argparse.Namespace, items: Iterable[Any], desc: str, total: int | None = None):
    n = total if total is not None else len(items)  # type: ignore[arg-type]
    if args.no_progress or args.json or n < 2 or not sys.stderr.isatty():
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, file=sys.stderr, total=n)


def _emit(args: argparse.Namespace, payload: Any, text: str) -> None:
    if getattr(args, "json", False):
        json.dump(payload, sys.stdout, indent=2, default=_json_default)
        sys.stdout.write("\n")
    else:
        print(text)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o).__name__)


def _write_png(path: Path, img: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(img).save(path)


# --- commands ----------------------------------------------------------------------------


def _cmd_classify(args: argparse.Namespace) -> int:
    pred = _predictor(args)
    results: list[dict[str, Any]] = []
    failures = 0
    lines: list[str] = []
    for f in _files_bar(args, args.files, "classify"):
        try:
            if args.timeline:
                tl = pred.classify_timeline(f, window_s=args.window, hop_s=args.hop, mode=args.mode, top_k=args.top_k)
                top = tl.top_classes(args.top_k)
                results.append({
                    "file": f, "mode": tl.clip.mode, "note": tl.clip.note,
                    "starts": tl.starts, "labels": [tl.labels[i] for i in top],
                    "probabilities": tl.probabilities[:, top],
                    "clip": [p.__dict__ for p in tl.clip.predictions],
                })
                lines.append(f"{f}  ({tl.clip.mode}, {len(tl.starts)} windows)")
                for s, row in zip(tl.starts, tl.probabilities, strict=True):
                    best = int(np.argmax(row))
                    lines.append(f"  {s:8.1f}s  {tl.labels[best]}  {row[best]:.3f}")
            else:
                clip = pred.prepare(f)
                c = pred.classify(clip, top_k=args.top_k, mode=args.mode, ensemble=not args.single_frame)
                results.append({
                    "file": f, "mode": c.mode, "note": c.note, "frames": c.frames_used,
                    "multi_label": c.multi_label,
                    "predictions": [p.__dict__ for p in c.predictions],
                })
                lines.append(f"{f}  ({c.mode}{', ' + c.note if c.note else ''})")
                lines.extend(f"  {p.score:.3f}  {p.label}" for p in c.predictions)
        except CavmaeError as e:
            failures += 1
            print(f"error: {f}: {e}", file=sys.stderr)
            results.append({"file": f, "error": str(e)})
    _emit(args, results, "\n".join(lines))
    return EXIT_USAGE if failures else 0


def _cmd_reconstruct(args: argparse.Namespace) -> int:
    from cavmae import viz
    from cavmae.inference import MaskSpec

    pred = _predictor(args)
    clip = pred.prepare(args.file)
    spec = MaskSpec(ratio_a=args.ratio_a, ratio_v=args.ratio_v, mode_a=args.mode_a, seed=args.seed)
    rec = pred.reconstruct(clip, spec)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    spec_masked = viz.overlay_mask(viz.spectrogram_image(rec.spec_original), rec.pixel_mask_a[::-1])
    images = {
        "spec_original.png": viz.spectrogram_image(rec.spec_original),
        "spec_masked.png": spec_masked,
        "spec_reconstruction.png": viz.spectrogram_image(rec.spec_reconstruction),
        "spec_composite.png": viz.spectrogram_image(rec.spec_composite),
        "frame_original.png": rec.frame_original,
        "frame_masked.png": viz.overlay_mask(rec.frame_original, rec.pixel_mask_v),
        "frame_reconstruction.png": rec.frame_reconstruction,
        "frame_composite.png": rec.frame_composite,
    }
    for name, img in images.items():
        _write_png(out / name, img)
    written = sorted(images)
    if not args.no_audio:
        from cavmae.inversion import fbank_to_waveform

        n_valid = None
        if clip.waveform is not None:
            from cavmae.features import num_fbank_frames

            n_valid = min(num_fbank_frames(len(clip.waveform), pred.features.sample_rate, pred.features), pred.features.target_length)
        for name, arr in (("audio_original.wav", rec.spec_original), ("audio_composite.wav", rec.spec_composite)):
            write_wav(out / name, fbank_to_waveform(arr, pred.features, num_valid_frames=n_valid), pred.features.sample_rate)
            written.append(name)
    summary = {
        "file": args.file, "loss_a": rec.loss_a, "loss_v": rec.loss_v,
        "masked_a": int(rec.mask_a.sum()), "masked_v": int(rec.mask_v.sum()),
        "tokens_a": int(rec.mask_a.size), "tokens_v": int(rec.mask_v.size),
        "norm_pix_denormalised": rec.norm_pix_denormalised, "note": rec.note, "files": written,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=_json_default))
    _emit(args, summary, f"wrote {len(written)} files to {out}  (loss_a={rec.loss_a:.4f}, loss_v={rec.loss_v:.4f})")
    return 0


def _cmd_embed(args: argparse.Namespace) -> int:
    pred = _predictor(args)
    keys, audio, visual, failures = [], [], [], 0
    results = pred.embed_files(args.files)  # decodes the next files while the model runs
    for path, e in _files_bar(args, results, "embed", total=len(args.files)):
        f = str(path)
        if isinstance(e, CavmaeError):
            failures += 1
            print(f"error: {f}: {e}", file=sys.stderr)
            continue
        keys.append(f)
        audio.append(e.audio)
        visual.append(e.visual)
    dim = next((x.shape[0] for x in audio + visual if x is not None), 0)

    def stack(xs: list[np.ndarray | None]) -> np.ndarray:
        return np.stack([x if x is not None else np.full(dim, np.nan, np.float32) for x in xs]) if xs else np.zeros((0, dim), np.float32)

    if args.out:
        np.savez(args.out, keys=np.asarray(keys), audio=stack(audio), visual=stack(visual))
    payload = [{"file": k, "audio": a, "visual": v} for k, a, v in zip(keys, audio, visual, strict=True)]
    _emit(args, payload, f"embedded {len(keys)} files (dim {dim})" + (f" -> {args.out}" if args.out else ""))
    return EXIT_USAGE if failures else 0


def _model_id(pred: Any) -> str:
    c = pred.pretrain or pred.classifier
    return f"{Path(str(c.source)).name}:{c.config.embed_dim}" if getattr(c, "source", None) else "in-memory"


def _cmd_index_build(args: argparse.Namespace) -> int:
    from cavmae.retrieval import EmbeddingIndex, FolderIndexer

    pred = _predictor(args)
    folder = Path(args.folder)
    idx_dir = Path(args.index) if args.index else folder / ".cavmae-index"
    model_id = _model_id(pred)
    dim = (pred.pretrain or pred.classifier).config.embed_dim
    index = EmbeddingIndex.load(idx_dir, expected_model_id=model_id) if (idx_dir / "manifest.json").is_file() else EmbeddingIndex(dim, model_id)
    bar = None
    if not (args.no_progress or args.json) and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=100, desc="index", file=sys.stderr)

    def progress(frac: float, msg: str) -> None:
        if bar is not None:
            bar.n = int(frac * 100)
            bar.set_postfix_str(msg[-40:])
            bar.refresh()

    indexer = FolderIndexer(index, pred.embed_file, embed_many=pred.embed_files)
    report = indexer.update(folder, progress=progress)
    index.save(idx_dir)
    payload = {"index": str(idx_dir), "items": len(index), **_as_dict(report)}
    counts = ", ".join(
        f"{len(v)} {k}" for k, v in _as_dict(report).items() if isinstance(v, (list, tuple, dict))
    )
    lines = [f"index {idx_dir}: {len(index)} items ({counts})"]
    lines += [f"  skipped {path}: {why}" for path, why in dict(payload.get("skipped") or {}).items()]
    _emit(args, payload, "\n".join(lines))
    return 0


def _as_dict(report: Any) -> dict[str, Any]:
    if hasattr(report, "__dataclass_fields__"):
        import dataclasses

        return dataclasses.asdict(report)
    return dict(report)


def _cmd_index_search(args: argparse.Namespace) -> int:
    from cavmae.retrieval import EmbeddingIndex

    pred = _predictor(args)
    index = EmbeddingIndex.load(Path(args.index), expected_model_id=_model_id(pred))
    emb = pred.embed_file(args.query)
    direction = args.direction
    if direction == "auto":
        direction = "audio->visual" if emb.audio is not None else "visual->audio"
    src, dst = direction.split("->")
    q = getattr(emb, src)
    if q is None:
        raise CavmaeError(f"the query has no {src} stream, so direction {direction} is impossible")
    hits = index.search(q, target=dst, k=args.k)[0]
    payload = {"query": args.query, "direction": direction, "hits": [{"key": h.key, "score": h.score, "rank": h.rank} for h in hits]}
    text = "\n".join(f"{h.rank:3d}  {h.score:.4f}  {h.key}" for h in hits)  # rank is 1-based
    _emit(args, payload, f"{direction}\n{text}")
    return 0


def _cmd_eval_retrieval(args: argparse.Namespace) -> int:
    from cavmae.retrieval import DEFAULT_MEDIA_EXTENSIONS, evaluate_pairs

    pred = _predictor(args)
    files = sorted(p for p in Path(args.folder).rglob("*") if p.is_file() and p.suffix.lower() in DEFAULT_MEDIA_EXTENSIONS)
    audio, visual, used = [], [], []
    for f, e in _files_bar(args, pred.embed_files(files), "embed", total=len(files)):
        if isinstance(e, CavmaeError):
            print(f"skipped {f}: {e}", file=sys.stderr)
            continue
        if e.audio is None or e.visual is None:
            print(f"skipped {f}: needs both audio and video", file=sys.stderr)
            continue
        audio.append(e.audio)
        visual.append(e.visual)
        used.append(str(f))
    if len(used) < 2:
        raise CavmaeError(f"{args.folder}: need at least 2 clips with audio and video, found {len(used)}")
    metrics = evaluate_pairs(np.stack(audio), np.stack(visual))
    lines = [f"{len(used)} clips"]
    for direction, m in metrics.items():
        lines.append(f"{direction:15s} " + "  ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in m.items()))
    _emit(args, {"clips": len(used), "metrics": metrics}, "\n".join(lines))
    return 0


def _cmd_zoo_list(args: argparse.Namespace) -> int:
    from cavmae import zoo

    entries = zoo.list_models()
    payload = [{"name": e.name, "kind": e.kind, "metric": e.metric, "purpose": e.purpose, "url": e.url} for e in entries]
    width = max((len(e.name) for e in entries), default=10)
    text = "\n".join(f"{e.name:{width}s}  {e.kind:9s}  {e.metric or '':28s}  {e.purpose}" for e in entries)
    _emit(args, payload, text)
    return 0


def _cmd_zoo_download(args: argparse.Namespace) -> int:
    from cavmae import zoo

    path = zoo.resolve(args.name, progress=_download_bar(args))
    print(path)
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from cavmae.checkpoint import convert_checkpoint

    kw = _overrides(args)
    if args.norm_pix_loss:
        kw["norm_pix_loss"] = True
    out = convert_checkpoint(args.src, args.dst, labels=args.labels, **kw)
    print(out)
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    pred = _predictor(args)
    d = pred.describe()
    _emit(args, d, json.dumps(d, indent=2, default=_json_default))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
