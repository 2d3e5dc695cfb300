"""Start the CAV-MAE Studio web app: ``python launch.py [--model NAME_OR_PATH] [--port N] ...``.

Binds 127.0.0.1 by default (only this machine can open it) and turns Gradio's analytics off
before Gradio is imported, so nothing leaves the machine unless ``--share`` is given.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

# Must happen before gradio is imported (it reads these at import time).
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# Must happen before torch is imported (OpenMP reads it when it loads). Idle OpenMP threads
# sleep instead of spinning, so the web server and image encoding keep a core, and a CPU shared
# with other work does not stall the model: a demo-model reconstruction on 2 busy cores took a
# median 0.87 s with spinning threads and 0.12 s with passive ones (bench/bench_app.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

logger = logging.getLogger("cavmae.app")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(prog="python launch.py", description="CAV-MAE Studio web app")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="interface to bind (default 127.0.0.1: this machine only; 0.0.0.0: all)",
    )
    p.add_argument(
        "--port", type=int, default=None, help="port (default: 7860 or the next free one)"
    )
    p.add_argument(
        "--share",
        action="store_true",
        help="create a public gradio.live link (traffic goes through Gradio's servers)",
    )
    p.add_argument(
        "--auth", default=None, metavar="USER:PASS", help="require this user name and password"
    )
    p.add_argument(
        "--model",
        default="demo",
        help="start model: demo, a zoo name, a checkpoint file or a run folder",
    )
    p.add_argument(
        "--pretrain", default=None, help="pretrained checkpoint next to a classifier --model"
    )
    p.add_argument("--labels", default=None, help="label CSV for a classifier without labels")
    p.add_argument(
        "--device",
        default=None,
        help="torch device: cpu, cuda, cuda:1 (default: CUDA when available)",
    )
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    from cavmae.config import PRECISIONS  # torch-free

    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="auto: bf16 on CUDA, exact float32 on CPU; bfloat16 on CPU is 2-3.3x faster on "
        "CPUs with AVX512-BF16/AMX",
    )
    p.add_argument(
        "--max-upload-mb",
        type=int,
        default=1024,
        help="largest accepted upload in MB (official checkpoints are 0.7 GB)",
    )
    p.add_argument(
        "--queue-size", type=int, default=32, help="requests waiting before new ones are refused"
    )
    p.add_argument(
        "--concurrency", type=int, default=1, help="model calls running at once (all visitors)"
    )
    p.add_argument(
        "--samples", type=Path, default=None, help="folder of sample clips (default assets/samples)"
    )
    p.add_argument(
        "--runs", type=Path, default=None, help="folder of training runs (default runs/)"
    )
    p.add_argument(
        "--allow-path",
        type=Path,
        action="append",
        default=[],
        help="extra folder the app may serve files from (repeatable)",
    )
    p.add_argument(
        "--no-preload",
        action="store_true",
        help="load the model at the first visit instead of at start",
    )
    p.add_argument("--debug", action="store_true", help="verbose logging")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, build the app and serve it until interrupted."""
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    from app.services import Services
    from app.settings import AppSettings
    from app.ui import build_demo, launch_kwargs
    from cavmae.errors import CavmaeError

    try:
        extra = {
            k: v
            for k, v in (("samples_dir", args.samples), ("runs_dir", args.runs))
            if v is not None
        }
        settings = AppSettings(
            host=args.host,
            port=args.port,
            share=args.share,
            auth=AppSettings.parse_auth(args.auth),
            model=args.model,
            pretrain=args.pretrain,
            labels=args.labels,
            device=args.device,
            threads=args.threads,
            precision=args.precision,
            max_upload_mb=args.max_upload_mb,
            queue_size=args.queue_size,
            concurrency_limit=args.concurrency,
            allowed_paths=tuple(args.allow_path),
            preload=not args.no_preload,
            **extra,
        )
    except CavmaeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    services = Services.create(settings)
    if settings.preload:
        services.preload()
        if services.startup_error:
            logger.warning("the app starts without a model: %s", services.startup_error)
    demo = build_demo(services, settings)
    demo.queue(max_size=settings.queue_size)
    if settings.host not in ("127.0.0.1", "localhost", "::1") and settings.auth is None:
        logger.warning(
            "listening on %s without --auth: anyone on the network can use the app", settings.host
        )
    try:
        demo.launch(**launch_kwargs(settings))
    except KeyboardInterrupt:
        pass
    finally:
        if services.jobs is not None:
            services.jobs.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
