"""`python -m gpu_worker` (also the `vidpipe-gpu-worker` command): run the CV workers of this host."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from gpu_worker.launcher import DEFAULT_CHILDREN_PER_GPU, Launcher, discover_gpus, plan_slots
from vidpipe_tasks.db.migrate import prepare_installation
from vidpipe_tasks.errors import SchemaNotReady
from vidpipe_tasks.settings import load_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vidpipe-gpu-worker", description=__doc__)
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    parser.add_argument("--processes", type=int, help="cpu: how many processes; cuda: use at most this many GPUs")
    parser.add_argument(
        "--per-gpu",
        type=int,
        default=DEFAULT_CHILDREN_PER_GPU,
        help="cuda: pool children per GPU, i.e. scenes in flight on one GPU (decode overlaps inference)",
    )
    parser.add_argument(
        "--logdir", help="one log file per worker (default: $VIDPIPE_HOME/logs); '-' logs to stdout (containers)"
    )
    parser.add_argument("--loglevel", default="info")
    parser.add_argument(
        "--disable-prefetch",
        action="store_true",
        help="Redis only: take a task only when idle, so the queue length is the whole backlog (KEDA)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = load_settings()
    if settings.log_format == "json":
        from vidpipe_tasks.logs import use_json_lines

        use_json_lines(logging.getLogger())
    # Files only: the parent never imports onnxruntime or torch, so no CUDA state exists before the fork.
    from gpu_worker.choice import configuration_problems

    problems = configuration_problems(settings)
    if problems:
        print("vidpipe-gpu-worker: cannot start:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 2
    try:
        prepare_installation(settings)
    except SchemaNotReady as exc:
        print(f"vidpipe-gpu-worker: {exc}", file=sys.stderr)
        return 2
    try:
        slots = plan_slots(args.device, args.processes, discover_gpus(), children_per_gpu=args.per_gpu)
    except (RuntimeError, ValueError) as exc:
        print(f"vidpipe-gpu-worker: {exc}", file=sys.stderr)
        return 2
    if args.disable_prefetch and not settings.is_redis_broker:
        print("vidpipe-gpu-worker: --disable-prefetch needs the Redis broker", file=sys.stderr)
        return 2
    launcher = Launcher(
        settings,
        slots,
        None if args.logdir == "-" else Path(args.logdir) if args.logdir else settings.home / "logs",
        loglevel=args.loglevel,
        disable_prefetch=args.disable_prefetch,
    )
    return launcher.run()


if __name__ == "__main__":
    raise SystemExit(main())
