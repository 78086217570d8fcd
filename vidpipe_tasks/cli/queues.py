"""`vidpipe queues`: messages waiting per queue (priority sub-lists too) and what each worker holds."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
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


def running_in_database(settings: Settings) -> list[dict[str, Any]] | None:
    """Tasks the run log shows running whose project lease is fresh (a heartbeat is keeping it), or None.

    A busy solo-pool worker does not answer `inspect`; the heartbeat thread of the task it runs still
    renews its project's lease, so a fresh lease with a running run-log row means busy, not down.
    None when the database cannot be read (then the report says nothing either way).
    """
    from sqlalchemy import select
    from sqlalchemy.exc import SQLAlchemyError

    from vidpipe_tasks.db.models import Project, TaskRun
    from vidpipe_tasks.db.session import session_scope

    now = datetime.now(UTC)
    try:
        with session_scope(settings.database_url) as session:
            rows = session.execute(
                select(TaskRun, Project.lease_until)
                .join(Project, Project.id == TaskRun.project_id)
                .where(TaskRun.outcome == "running")
                .order_by(TaskRun.started_at)
            ).all()
            return [
                {
                    "worker": run.worker,
                    "task": run.task_name,
                    "queue": run.queue,
                    "project_id": run.project_id,
                    "scene_index": run.scene_index,
                    "running_s": round((now - _aware(run.started_at)).total_seconds(), 1),
                }
                for run, lease in rows
                if lease is not None and _aware(lease) > now
            ]
    except SQLAlchemyError:
        return None


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def workers_state(answered: list[dict[str, Any]], running: list[dict[str, Any]] | None) -> dict[str, Any]:
    """Busy vs down: which running tasks belong to workers that did not answer, and the verdict."""
    names = {w["worker"] for w in answered}
    silent = [r for r in running or [] if r["worker"] not in names]
    if answered:
        verdict = "answering"
    elif silent:
        verdict = "busy"
    elif running is None:
        verdict = "unknown"
    else:
        verdict = "down"
    return {"verdict": verdict, "busy_not_answering": silent}


def queues_report(app: Celery, settings: Settings, timeout: float = 1.0, workers: bool = True) -> dict[str, Any]:
    """`vidpipe queues --json`: queue depths and, unless `workers` is False, per-worker load and busy vs down."""
    broker = "redis" if settings.is_redis_broker else "filesystem" if settings.is_filesystem_broker else "other"
    report: dict[str, Any] = {
        "broker": broker,
        "priorities": broker == "redis",
        "queues": queue_depths(app, settings),
        "workers": worker_load(app, timeout) if workers else None,
        "timeout_s": timeout,
    }
    if workers:
        report["workers_state"] = workers_state(report["workers"], running_in_database(settings))
    return report


def _printable_key(key: str) -> str:
    return key.encode("unicode_escape").decode()


def _task_text(t: dict) -> str:
    where = f"project {t['project_id']} scene {t['scene_index']}" if t["scene_index"] else f"project {t['project_id']}"
    return f"{(t['task'] or '?').removeprefix('vidpipe.')} ({where}) on {t['queue']}"


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
    for w in report["workers"]:
        lines.append(f"{w['worker']}: {len(w['active'])} active, {len(w['reserved'])} reserved")
        lines += [f"  active   {_task_text(t)}" for t in w["active"]]
        lines += [f"  reserved {_task_text(t)}" for t in w["reserved"]]
    lines += _state_lines(report)
    return "\n".join(lines)


def _state_lines(report: dict[str, Any]) -> list[str]:
    state = report.get("workers_state") or {"verdict": "unknown", "busy_not_answering": []}
    waited = f"{report.get('timeout_s', 1.0):g} s"
    busy = [
        f"{r['worker'] or '(unknown worker)'}: busy, running {_task_text(r)} for {r['running_s']:g} s"
        for r in state["busy_not_answering"]
    ]
    if state["verdict"] == "busy":
        return [
            f"no worker answered within {waited}, but workers are BUSY, not down (a solo-pool worker answers "
            "only between tasks; the run log and fresh project leases show these running):",
            *(f"  {line}" for line in busy),
        ]
    if state["verdict"] == "down":
        return [f"no worker answered within {waited} and nothing is running: workers are DOWN (or none was started)"]
    if state["verdict"] == "unknown" and not report["workers"]:
        return [f"no worker answered within {waited} (the database could not be read to tell busy from down)"]
    return [*(f"{line} (did not answer: solo pool)" for line in busy)]


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
