"""`vidpipe flower`: Flower for the vidpipe app on the Redis broker, options from the one Flower config file.

The config file is deploy/flower/flowerconfig.py (docs/operations.md "Flower"); flags given here override it.
Flower itself is imported only to run it (vidpipe_tasks.flower_app), so building the parser stays light.
"""

from __future__ import annotations

import argparse
import os
import sys

from vidpipe_tasks.cli.common import EXIT_USAGE, settings_from
from vidpipe_tasks.settings import Settings


def add_flower_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `vidpipe flower`; each one left out keeps the config file's value."""
    parser.add_argument(
        "--conf",
        metavar="PATH",
        help="Flower config file (default: FLOWER_CONF, else deploy/flower/flowerconfig.py of the checkout)",
    )
    parser.add_argument(
        "--basic-auth", help="admin logins, user:password comma-separated (config: VIDPIPE_FLOWER_BASIC_AUTH)"
    )
    parser.add_argument(
        "--viewer-auth",
        help="read-only logins, user:password comma-separated (config: VIDPIPE_FLOWER_VIEWER_AUTH)",
    )
    parser.add_argument("--port", type=int, help="port to listen on (config: VIDPIPE_FLOWER_PORT, 5555)")
    parser.add_argument("--address", help="address to listen on (config: VIDPIPE_FLOWER_ADDRESS, 127.0.0.1)")
    parser.add_argument("--max-tasks", type=int, help="tasks kept in memory, oldest dropped (config: 5000)")
    parser.add_argument(
        "--purge-offline-workers",
        type=int,
        metavar="SECONDS",
        help="drop workers offline this long from the dashboard and /metrics (config: 600; 0 keeps them)",
    )


def require_redis(settings: Settings) -> None:
    """Flower reads events and queue lengths from the broker; the embedded filesystem broker has neither."""
    from vidpipe_tasks.flower_app import FlowerRefused

    if not settings.is_redis_broker:
        scheme = settings.broker_url.split("://", 1)[0]
        raise FlowerRefused(
            f"Flower needs the Redis broker, and this installation uses {scheme}://. "
            "Set VIDPIPE_BROKER_URL=redis://HOST:6379/0 (and VIDPIPE_RESULT_BACKEND) on every process, "
            "workers included."
        )


def overrides_from(args: argparse.Namespace) -> dict[str, object]:
    """Flower option name -> value for each flag given (None: keep the config file's)."""
    return {
        "basic_auth": args.basic_auth.split(",") if args.basic_auth is not None else None,
        "viewer_auth": args.viewer_auth,
        "port": args.port,
        "address": args.address,
        "max_tasks": args.max_tasks,
        "purge_offline_workers": args.purge_offline_workers,
    }


def cmd_flower(args: argparse.Namespace) -> int:
    settings = settings_from(args)  # also exports the VIDPIPE_* settings the config file reads
    from vidpipe_tasks.flower_app import FlowerRefused, config_path, load_options, serve

    try:
        require_redis(settings)
        path = config_path(args.conf)
        if args.basic_auth is not None:  # the config file reads the logins from the settings; the flag wins
            os.environ["VIDPIPE_FLOWER_BASIC_AUTH"] = args.basic_auth
        roles = load_options(path, overrides_from(args))
    except FlowerRefused as exc:
        print(f"vidpipe flower: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from vidpipe_tasks.celery_app import app

    return serve(app, roles, path)


def add_parser(sub: argparse._SubParsersAction) -> None:
    flower = sub.add_parser(
        "flower", help="run Flower (tasks, workers, /metrics) on the Redis broker: admin and read-only logins"
    )
    add_flower_arguments(flower)
    flower.set_defaults(func=cmd_flower)
