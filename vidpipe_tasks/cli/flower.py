"""`vidpipe flower`: Flower for the vidpipe app on the Redis broker, behind basic auth, with task progress shown."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vidpipe_tasks.cli.common import settings_from
from vidpipe_tasks.settings import Settings

if TYPE_CHECKING:
    from celery import Celery

#: Tasks Flower keeps in memory. Flower 2's default (100000) grows without bound on a busy cluster; a few
#: thousand covers hundreds of projects (three tasks per scene) and keeps the process small.
MAX_TASKS = 5000

#: Autoscaled CV pods come and go under new node names; without a purge their series stay in /metrics forever.
PURGE_OFFLINE_WORKERS_S = 600

#: Fields every Celery event carries; whatever else a `task-progress` event has is the progress itself.
_EVENT_FIELDS = frozenset({"type", "uuid", "hostname", "timestamp", "utcoffset", "pid", "clock", "local_received"})


class FlowerRefused(ValueError):
    """Flower cannot be started with these settings (the message says why and what to set)."""


@dataclass(frozen=True)
class FlowerConfig:
    """What `run_flower` needs, already checked."""

    credentials: tuple[str, ...]
    port: int
    address: str
    max_tasks: int
    purge_offline_workers: int | None = None

    @property
    def users(self) -> list[str]:
        return [c.split(":", 1)[0] for c in self.credentials]


def add_flower_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `vidpipe flower` (kept here so the CLI module stays free of Flower's imports)."""
    parser.add_argument(
        "--basic-auth", help="user:password, comma-separated for several (default: VIDPIPE_FLOWER_BASIC_AUTH)"
    )
    parser.add_argument("--port", type=int, help="port to listen on (default: VIDPIPE_FLOWER_PORT, 5555)")
    parser.add_argument("--address", default="0.0.0.0", help="address to listen on (default: all interfaces)")
    parser.add_argument(
        "--max-tasks", type=int, default=MAX_TASKS, help=f"tasks kept in memory, oldest dropped (default {MAX_TASKS})"
    )
    parser.add_argument(
        "--purge-offline-workers",
        type=int,
        default=PURGE_OFFLINE_WORKERS_S,
        metavar="SECONDS",
        help=f"drop workers offline this long from the dashboard and /metrics (default {PURGE_OFFLINE_WORKERS_S}; "
        "0 keeps them)",
    )


def flower_config(
    settings: Settings,
    *,
    basic_auth: str | None = None,
    port: int | None = None,
    address: str = "0.0.0.0",
    max_tasks: int = MAX_TASKS,
    purge_offline_workers: int = PURGE_OFFLINE_WORKERS_S,
) -> FlowerConfig:
    """Check that Flower can run on these settings and resolve its options (arguments win over settings).

    Raises:
        FlowerRefused: on a broker other than Redis (Flower reads events and queue lengths from the broker;
            the embedded filesystem broker has neither pub/sub nor lists it understands), without basic auth
            (the API would be open, or with Flower's default refused), or on malformed values.

    """
    if not settings.is_redis_broker:
        scheme = settings.broker_url.split("://", 1)[0]
        raise FlowerRefused(
            f"Flower needs the Redis broker, and this installation uses {scheme}://. "
            "Set VIDPIPE_BROKER_URL=redis://HOST:6379/0 (and VIDPIPE_RESULT_BACKEND) on every process, "
            "workers included."
        )
    raw = settings.flower_basic_auth if basic_auth is None else basic_auth
    credentials = tuple(c.strip() for c in raw.split(",") if c.strip())
    if not credentials:
        raise FlowerRefused(
            "no basic auth configured: Flower can shut workers down and revoke tasks, so vidpipe never runs it "
            "open. Pass --basic-auth user:password or set VIDPIPE_FLOWER_BASIC_AUTH."
        )
    for credential in credentials:
        user, _, password = credential.partition(":")
        if not user or not password:
            raise FlowerRefused("basic auth must be user:password (both non-empty), comma-separated for several")
    port = settings.flower_port if port is None else port
    if not 0 <= port <= 65535:
        raise FlowerRefused(f"port {port} is out of range 0..65535")
    if max_tasks < 1:
        raise FlowerRefused("--max-tasks must be at least 1")
    if purge_offline_workers < 0:
        raise FlowerRefused("--purge-offline-workers must be 0 (keep) or more seconds")
    return FlowerConfig(credentials, port, address, max_tasks, purge_offline_workers or None)


def progress_as_result(event: dict[str, Any]) -> dict[str, Any]:
    """Show a `task-progress` event's fields as the task's `result` in Flower.

    Celery's event state turns the custom event into state PROGRESS but keeps its fields only in attributes
    that Flower's task page and `/api/task/info` never list (they show the standard fields). `result` is a
    standard field, and the task's `task-succeeded` event replaces it with the real result afterwards.
    """
    if event.get("type") != "task-progress":
        return event
    progress = {k: v for k, v in event.items() if k not in _EVENT_FIELDS}
    return {**event, "result": json.dumps(progress)}


def run_flower(app: Celery, config: FlowerConfig) -> int:
    """Serve Flower for `app` until SIGTERM or Ctrl-C; returns the exit status."""
    import asyncio

    from flower.app import Flower
    from flower.events import Events
    from flower.options import options
    from flower.urls import settings as web_settings
    from kombu.utils.url import maybe_sanitize_url
    from tornado.ioloop import IOLoop

    class ProgressEvents(Events):
        """Flower's event capture, with progress events made visible (see `progress_as_result`)."""

        def on_event(self, event: dict[str, Any]) -> None:
            super().on_event(progress_as_result(event))

    # Flower reads its options from tornado's global option set; fill it as `celery flower` would.
    options.port, options.address = config.port, config.address
    options.basic_auth = list(config.credentials)
    options.max_tasks = config.max_tasks
    options.purge_offline_workers = config.purge_offline_workers
    app.set_current()  # Flower's /api/task/result builds AsyncResult on the current app
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    io_loop = IOLoop.current()
    for signum in (signal.SIGTERM, signal.SIGINT):
        # Stop the loop from inside it: raising in a handler could land in any thread's join at exit.
        loop.add_signal_handler(signum, io_loop.stop)
    events = ProgressEvents(
        app,
        io_loop=io_loop,
        enable_events=options.enable_events,
        max_workers_in_memory=options.max_workers,
        max_tasks_in_memory=options.max_tasks,
    )
    flower_app = Flower(capp=app, options=options, events=events, io_loop=io_loop, **web_settings)
    port = flower_app.start_http_server()
    broker = maybe_sanitize_url(app.conf.broker_url)
    print(
        f"Flower for vidpipe on http://{config.address or '0.0.0.0'}:{port} (broker {broker}; "
        f"basic auth for {', '.join(config.users)}; last {config.max_tasks} tasks kept)",
        flush=True,
    )
    try:
        flower_app.start()  # returns when a signal stops the loop
    finally:
        flower_app.stop()
    return 0


def cmd_flower(args: argparse.Namespace) -> int:
    settings = settings_from(args)

    try:
        config = flower_config(
            settings,
            basic_auth=args.basic_auth,
            port=args.port,
            address=args.address,
            max_tasks=args.max_tasks,
            purge_offline_workers=args.purge_offline_workers,
        )
    except FlowerRefused as exc:
        print(f"vidpipe flower: {exc}", file=sys.stderr)
        return 2
    from vidpipe_tasks.celery_app import app

    return run_flower(app, config)


def add_parser(sub: argparse._SubParsersAction) -> None:
    flower = sub.add_parser("flower", help="run Flower (tasks, workers, /metrics) on the Redis broker, basic auth")
    add_flower_arguments(flower)
    flower.set_defaults(func=cmd_flower)
