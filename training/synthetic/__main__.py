"""Command line: write an AV-Shapes folder of mp4 videos, or only its label CSV.

Examples::

    python -m training.synthetic out/avshapes --per-class 20 --workers 2
    python -m training.synthetic --labels-only assets/labels/av_shapes.csv
"""

from __future__ import annotations

import argparse
import logging

from training.synthetic.classes import write_label_csv
from training.synthetic.config import AVShapesConfig
from training.synthetic.export import generate_folder


def main(argv: list[str] | None = None) -> None:
    """Parses arguments and writes the dataset folder (or the label CSV)."""
    defaults = AVShapesConfig()
    ap = argparse.ArgumentParser(prog="python -m training.synthetic", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir", nargs="?", help="output folder")
    ap.add_argument("--labels-only", metavar="CSV", help="only write the label CSV to this path")
    ap.add_argument("--per-class", type=int, default=10, help="clips per class")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--start-index", type=int, default=0)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--flat", action="store_true", help="no class sub-folders")
    ap.add_argument("--num-classes", type=int, default=defaults.num_classes)
    ap.add_argument("--duration", type=float, default=defaults.duration_s, help="seconds")
    ap.add_argument("--fps", type=int, default=defaults.fps)
    ap.add_argument("--size", type=int, default=defaults.size, help="frame side in pixels")
    ap.add_argument("--mix-prob", type=float, default=defaults.mix_prob)
    ap.add_argument("--distractor-prob", type=float, default=defaults.distractor_prob)
    ap.add_argument("--mismatch-prob", type=float, default=defaults.mismatch_prob)
    ap.add_argument("--noise-level", type=float, default=defaults.noise_level)
    ap.add_argument("--no-distractor-glow", action="store_true",
                    help="silent distractors never glow (a glow then tells the source)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.labels_only:
        write_label_csv(args.labels_only, args.num_classes)
        return
    if not args.out_dir:
        ap.error("give an output folder, or --labels-only CSV")
    cfg = AVShapesConfig(
        num_classes=args.num_classes, duration_s=args.duration, fps=args.fps, size=args.size,
        mix_prob=args.mix_prob, distractor_prob=args.distractor_prob,
        mismatch_prob=args.mismatch_prob, noise_level=args.noise_level,
        distractor_glow=not args.no_distractor_glow,
    )
    out = generate_folder(args.out_dir, args.per_class, args.seed, cfg,
                          layout="flat" if args.flat else "class_folders",
                          workers=args.workers, start_index=args.start_index)
    logging.getLogger(__name__).info("wrote %s", out)


if __name__ == "__main__":
    main()
