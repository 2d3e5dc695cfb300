"""Command line: prepare a training dataset once, from a folder of videos or from AV-Shapes.

Usage::

    python -m training.prepare SRC_DIR OUT_DIR [--labels CSV] [--workers N] [--format mmap]
    python -m training.prepare --synthetic 2000 OUT_DIR [--seed 0] [--workers N]
    python -m training.prepare --from-mmap PREPARED_DIR OUT_DIR
    python -m training.prepare --from-official DATA.json OUT_DIR [--label-csv CSV]

Output: webdataset tar shards of about ``--shard-size`` MB (default 1000) with JPEG frames
(``--jpeg-quality``, default 90) and float16 fbanks (:mod:`training.data.shards`), streamable
from local disk or any URL; ``--format mmap`` writes the memory-mapped folder of
:mod:`training.data.formats` instead (small local sets). ``--from-mmap`` / ``--from-official``
convert an existing memory-mapped preparation or an official data list into shards.

Labels: class sub-folders of ``SRC_DIR`` (``SRC_DIR/dog/a.mp4`` has class ``dog``), or
``--labels`` with a CSV ``file,labels`` (``dog/a.mp4,dog;bark``: paths relative to ``SRC_DIR``,
labels separated by ``;``), or none (pretraining). ``--class-index`` fixes the class order with
an official ``index,mid,display_name`` CSV. Feature settings default to the full-size model
(1024 x 128 fbank, 224 x 224 frames); ``--model`` takes them from a model preset. Running the
same command again resumes an interrupted preparation; ``--no-resume`` starts over.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from cavmae.config import MODEL_PRESETS, FeatureConfig
from cavmae.errors import CavmaeError

logger = logging.getLogger("training.prepare")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training.prepare",
        description="Decode videos once into a training dataset (tar shards by default).",
    )
    p.add_argument(
        "paths",
        nargs="+",
        metavar="SRC_DIR OUT_DIR",
        help="source folder and output folder (only OUT_DIR with --synthetic)",
    )
    p.add_argument("--labels", help="CSV 'file,labels' assigning labels to files")
    p.add_argument(
        "--label-from",
        choices=["auto", "folders", "csv", "none"],
        default="auto",
        help="where labels come from (default: auto)",
    )
    p.add_argument("--class-index", help="official index,mid,display_name CSV fixing the classes")
    p.add_argument("--workers", type=int, default=2, help="decoding processes (0: in-process)")
    p.add_argument(
        "--frames",
        type=int,
        choices=[10, 1],
        default=10,
        help="frames per clip: the official 10, or only the evaluation frame",
    )
    p.add_argument(
        "--model",
        choices=sorted(MODEL_PRESETS),
        help="take the input geometry (mel bins, fbank length, image size) from a preset",
    )
    p.add_argument("--img-size", type=int, help="frame side in pixels")
    p.add_argument("--target-length", type=int, help="fbank frames per clip")
    p.add_argument("--num-mel-bins", type=int, help="mel bins")
    p.add_argument(
        "--jpeg-roundtrip",
        action="store_true",
        help="pass frames through JPEG q75 like the official stored frames",
    )
    p.add_argument("--timeout", type=float, default=120.0, help="per-file decoding limit (s)")
    p.add_argument("--no-resume", action="store_true", help="start over instead of resuming")
    p.add_argument(
        "--synthetic",
        type=int,
        metavar="N",
        help="write N AV-Shapes clips instead of decoding a folder",
    )
    p.add_argument("--seed", type=int, default=0, help="AV-Shapes dataset seed")
    p.add_argument("--synthetic-classes", type=int, help="AV-Shapes number of classes")
    p.add_argument("--mix-prob", type=float, help="AV-Shapes two-class mixture probability")
    p.add_argument(
        "--format",
        choices=["shards", "mmap"],
        default="shards",
        help="tar shards (default; streamable) or one folder of memory-mapped arrays",
    )
    p.add_argument("--jpeg-quality", type=int, default=90, help="JPEG quality of shard frames")
    p.add_argument("--shard-size", type=float, default=1000.0, help="shard size in MB")
    p.add_argument("--from-mmap", action="store_true", help="convert PREPARED_DIR to shards")
    p.add_argument(
        "--from-official", action="store_true", help="convert an official DATA.json to shards"
    )
    p.add_argument("--label-csv", help="label CSV of --from-official (default: beside the JSON)")
    p.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    return p


def _feature_config(args: argparse.Namespace) -> FeatureConfig:
    base = FeatureConfig.for_model(MODEL_PRESETS[args.model]()) if args.model else FeatureConfig()
    changes = {
        k: v
        for k, v in (
            ("img_size", args.img_size),
            ("target_length", args.target_length),
            ("num_mel_bins", args.num_mel_bins),
        )
        if v is not None
    }
    return FeatureConfig.from_dict({**base.to_dict(), **changes})


class _Bar:
    """Progress callback: a tqdm bar on a terminal, log lines every 10 % otherwise."""

    def __init__(self, quiet: bool) -> None:
        from tqdm import tqdm

        self._bar = None if quiet else tqdm(total=100, unit="%", disable=None, leave=True)
        self._next_log = 0.1

    def __call__(self, fraction: float, message: str) -> None:
        if self._bar is not None and not self._bar.disable:
            self._bar.n = round(100 * fraction, 1)
            self._bar.set_postfix_str(message[-40:], refresh=True)
        elif fraction >= self._next_log:
            logger.info("%3.0f%% done (%s)", 100 * fraction, message)
            self._next_log = (int(fraction * 10) + 1) / 10

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 bad input)."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    bar = _Bar(args.quiet)
    try:
        feat = _feature_config(args)
        shard_kw = dict(jpeg_quality=args.jpeg_quality, shard_bytes=int(args.shard_size * 1e6))
        if args.from_mmap or args.from_official:
            if len(args.paths) != 2:
                raise CavmaeError("give SOURCE and OUT_DIR")
            from training.data import convert

            if args.from_mmap:
                report = convert.mmap_to_shards(
                    args.paths[0], args.paths[1], workers=args.workers, progress=bar,
                    resume=not args.no_resume, **shard_kw,
                )
            else:
                from training.data.datasets import _find_label_csv

                csv = args.label_csv or _find_label_csv(Path(args.paths[0]))
                report = convert.official_to_shards(
                    args.paths[0], args.paths[1], csv, feature_config=feat,
                    total_frames=args.frames, workers=args.workers, progress=bar,
                    resume=not args.no_resume, **shard_kw,
                )
        elif args.synthetic is not None:
            if len(args.paths) != 1:
                raise CavmaeError("with --synthetic give only OUT_DIR")
            from training.data.prepare_synthetic import prepare_synthetic
            from training.synthetic import AVShapesConfig

            syn_kw = {
                k: v
                for k, v in (("num_classes", args.synthetic_classes), ("mix_prob", args.mix_prob))
                if v is not None
            }
            syn = AVShapesConfig(size=feat.img_size, sample_rate=feat.sample_rate, **syn_kw)
            report = prepare_synthetic(
                args.paths[0],
                args.synthetic,
                args.seed,
                syn,
                args.workers,
                feature_config=feat,
                frames_per_clip=args.frames,
                progress=bar,
                resume=not args.no_resume,
                output=args.format,
                **shard_kw,
            )
        else:
            if len(args.paths) != 2:
                raise CavmaeError("give SRC_DIR and OUT_DIR (or --synthetic N OUT_DIR)")
            from training.data.prepare import prepare_folder

            report = prepare_folder(
                args.paths[0],
                args.paths[1],
                labels_csv=args.labels,
                label_from=args.label_from,
                class_index_csv=args.class_index,
                feature_config=feat,
                frames_per_clip=args.frames,
                workers=args.workers,
                progress=bar,
                resume=not args.no_resume,
                jpeg_roundtrip=args.jpeg_roundtrip,
                timeout_s=args.timeout,
                output=args.format,
                **shard_kw,
            )
    except CavmaeError as e:
        bar.close()
        logger.error("%s", e)
        return 2
    bar.close()
    del report  # every entry point logs its own summary
    return 0


if __name__ == "__main__":
    sys.exit(main())
