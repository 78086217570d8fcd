"""`vidpipe exporter`: Prometheus metrics of vidpipe itself (queues, scenes, tasks, scores, jobs, GPUs) on /metrics."""

from __future__ import annotations

import argparse
import sys

from vidpipe_tasks.cli.common import EXIT_USAGE, settings_from

SOURCES = ("database", "broker", "gpu")


def cmd_exporter(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    sources = tuple(s.strip() for s in args.sources.split(",") if s.strip())
    unknown = sorted(set(sources) - set(SOURCES))
    if unknown or not sources:
        print(f"vidpipe exporter: unknown source(s) {unknown}; choose from {', '.join(SOURCES)}", file=sys.stderr)
        return EXIT_USAGE
    port = settings.exporter_port if args.port is None else args.port
    if not 0 <= port <= 65535:
        print(f"vidpipe exporter: port {port} is out of range 0..65535", file=sys.stderr)
        return EXIT_USAGE
    from vidpipe_tasks.metrics import run_exporter

    try:
        return run_exporter(settings, args.address or settings.exporter_address, port, sources)
    except OSError as exc:  # the address is taken or not ours
        print(
            f"vidpipe exporter: cannot listen on {args.address or settings.exporter_address}:{port}: {exc}",
            file=sys.stderr,
        )
        return EXIT_USAGE


def add_parser(sub: argparse._SubParsersAction) -> None:
    exporter = sub.add_parser(
        "exporter", help="serve Prometheus metrics of vidpipe (queues, scenes, tasks) on /metrics"
    )
    exporter.add_argument("--address", help="address to listen on (default: VIDPIPE_EXPORTER_ADDRESS, 127.0.0.1)")
    exporter.add_argument("--port", type=int, help="port to listen on (default: VIDPIPE_EXPORTER_PORT, 9808)")
    exporter.add_argument(
        "--sources",
        default=",".join(SOURCES),
        help="what to read, comma-separated: database, broker, gpu (default: all; a GPU node's sidecar: gpu)",
    )
    exporter.set_defaults(func=cmd_exporter)
