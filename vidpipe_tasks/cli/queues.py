"""`vidpipe queues`: messages waiting per queue (priority sub-lists too) and what each worker holds."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from celery import Celery

from vidpipe_tasks.cli.common import settings_from
from vidpipe_tasks.queues import queue_depths
from vidpipe_tasks.settings import Settings


def _task_info(request: dict) -> dict[str, Any]:
    args = request.get("args") or []
    ref = args[0] if args and isinstance(args[0], dict) else {}
    delivery = request.get("delivery_info") or {}
    return {
        "task_id": request.get("id"),
        "task": request.get("name"),
        "queue": delivery.get("routing_key"),
        "priority": delivery.get("priority"),
        "project_id": ref.get("project_id"),
        "scene_index": ref.get("scene_index"),
    }


def worker_load(app: Celery, timeout: float = 1.0) -> list[dict[str, Any]]:
    """What each worker that answers within `timeout` has running (active) and prefetched (reserved).

    A solo-pool worker answers control messages only between tasks, so a busy one may be missing here;
    the Redis `unacked` count in queue_depths covers it.
    """
    inspect = app.control.inspect(timeout=timeout)
    active = inspect.active() or {}
    reserved = inspect.reserved() or {}
    return [
        {
            "worker": name,
            "active": [_task_info(r) for r in active.get(name, [])],
            "reserved": [_task_info(r) for r in reserved.get(name, [])],
        }
        for name in sorted(set(active) | set(reserved))
    ]


def queues_report(app: Celery, settings: Settings, timeout: float = 1.0, workers: bool = True) -> dict[str, Any]:
    """`vidpipe queues --json`: queue depths and, unless `workers` is False, per-worker load."""
    broker = "redis" if settings.is_redis_broker else "filesystem" if settings.is_filesystem_broker else "other"
    return {
        "broker": broker,
        "priorities": broker == "redis",
        "queues": queue_depths(app, settings),
        "workers": worker_load(app, timeout) if workers else None,
    }


def _printable_key(key: str) -> str:
    return key.encode("unicode_escape").decode()


def _task_text(t: dict) -> str:
    where = f"project {t['project_id']} scene {t['scene_index']}" if t["scene_index"] else f"project {t['project_id']}"
    return f"{t['task'].removeprefix('vidpipe.')} ({where}) on {t['queue']}"


def render_queues(report: dict[str, Any]) -> str:
    """Human-readable `vidpipe queues`."""
    lines = [f"{'QUEUE':<12} {'WAITING':>7} {'UNACKED':>7}  BY PRIORITY"]
    for row in report["queues"]:
        by_pri = "  ".join(f"{x['priorities']}: {x['depth']} ({_printable_key(x['key'])})" for x in row["lists"])
        unacked = "-" if row["unacked"] is None else str(row["unacked"])
        lines.append(f"{row['queue']:<12} {row['depth']:>7} {unacked:>7}  {by_pri or '(no priorities: filesystem)'}")
    if report["workers"] is None:
        return "\n".join(lines)
    lines.append("")
    if not report["workers"]:
        lines.append("no worker answered (none running, or all busy in a solo pool)")
    for w in report["workers"]:
        lines.append(f"{w['worker']}: {len(w['active'])} active, {len(w['reserved'])} reserved")
        lines += [f"  active   {_task_text(t)}" for t in w["active"]]
        lines += [f"  reserved {_task_text(t)}" for t in w["reserved"]]
    return "\n".join(lines)


def cmd_queues(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    from vidpipe_tasks.celery_app import app

    try:
        report = queues_report(app, settings, timeout=args.timeout, workers=not args.no_workers)
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2) if args.json else render_queues(report))
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    queues = sub.add_parser("queues", help="messages waiting per queue (priority sub-lists too) and per-worker load")
    queues.add_argument("--json", action="store_true", help="machine-readable")
    queues.add_argument("--timeout", type=float, default=1.0, help="seconds to wait for workers to answer")
    queues.add_argument("--no-workers", action="store_true", help="only the queue depths (no broadcast)")
    queues.set_defaults(func=cmd_queues)
