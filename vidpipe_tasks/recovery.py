"""Automatic recovery: find projects whose chain was lost and resume them (the sweep Celery beat sends)."""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from celery import Celery
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from vidpipe_tasks.db.models import Project, ProjectStatus, TaskRun
from vidpipe_tasks.db.session import session_scope
from vidpipe_tasks.queues import BrokerMessage, broker_messages, drop_unacked, serve_next
from vidpipe_tasks.settings import Settings

log = logging.getLogger(__name__)

ACTIVE = (ProjectStatus.PENDING, ProjectStatus.RUNNING)


def _utc(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; every stored time is UTC.
    return value if value is None or value.tzinfo else value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class ChainState:
    """What the sweep knows about one unfinished project's chain."""

    project_id: int
    epoch: int
    #: Until when a task's heartbeat (or a scheduled retry) vouches for the chain.
    alive_until: datetime
    suspected_at: datetime | None
    #: A message of the current chain waits in a queue, or a worker took one within the lease.
    in_broker: bool


def verdict(state: ChainState, now: datetime, settings: Settings) -> str:
    """Classify a chain: alive, suspect (first sighting), confirming (wait for the next sweep) or lost.

    A chain is lost when its lease has run out and no message of it is in the broker, on two sweeps at
    least one interval apart with no heartbeat in between (a message in flight between a queue and a
    worker is invisible for an instant; a second look rules that out).
    """
    if state.in_broker or state.alive_until > now:
        return "alive"
    suspected = state.suspected_at
    interval = timedelta(seconds=settings.recovery_interval)
    if suspected is None or suspected <= state.alive_until or now - suspected > 3 * interval:
        return "suspect"
    return "lost" if now - suspected >= 0.9 * interval else "confirming"


def _alive_in_broker(messages: list[BrokerMessage], epoch: int, now: float, ttl: float) -> bool:
    for m in messages:
        if m.epoch is not None and m.epoch != epoch:
            continue  # a superseded chain's message stops itself when delivered
        if m.state == "queued" or m.delivered_at is None or now - m.delivered_at < ttl:
            return True
    return False


@dataclass
class SweepReport:
    """What one sweep did."""

    checked: int = 0
    suspected: list[int] = field(default_factory=list)
    recovered: dict[int, str] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)
    dropped_deliveries: int = 0

    def as_dict(self) -> dict:
        return {
            "checked": self.checked,
            "suspected": self.suspected,
            "recovered": {str(k): v for k, v in self.recovered.items()},
            "failed": {str(k): v for k, v in self.failed.items()},
            "dropped_deliveries": self.dropped_deliveries,
        }


def _candidates(session: Session, now: datetime, ttl: float) -> list[Project]:
    """Unfinished projects whose lease has run out (cheap: no broker access)."""
    alive_until = func.coalesce(Project.lease_until, Project.created_at + timedelta(seconds=ttl))
    query = select(Project).where(Project.status.in_(ACTIVE))
    # SQLite cannot add an interval to a column; filter those in Python (few unfinished projects).
    if session.bind.dialect.name == "postgresql":
        query = query.where(alive_until < now)
    return [p for p in session.scalars(query) if _alive_until(p, ttl) <= now]


def _alive_until(project: Project, ttl: float) -> datetime:
    return _utc(project.lease_until) or _utc(project.created_at) + timedelta(seconds=ttl)


def sweep(app: Celery, settings: Settings, now: datetime | None = None) -> SweepReport:
    """Look at every unfinished project once; resume those whose chain is lost (see `verdict`)."""
    now = now or datetime.now(UTC)
    report = SweepReport()
    with session_scope(settings.database_url) as s:
        projects = _candidates(s, now, settings.lease_ttl)
        report.checked = len(projects)
        if not projects:
            return report
        by_project: dict[int, list[BrokerMessage]] = defaultdict(list)
        for m in broker_messages(app, settings):
            if m.project_id is not None:
                by_project[m.project_id].append(m)
        lost: list[tuple[int, int]] = []
        for project in projects:
            state = ChainState(
                project.id,
                project.chain_epoch,
                _alive_until(project, settings.lease_ttl),
                _utc(project.stall_suspected_at),
                _alive_in_broker(by_project[project.id], project.chain_epoch, now.timestamp(), settings.lease_ttl),
            )
            seen = verdict(state, now, settings)
            if seen == "suspect":
                project.stall_suspected_at = now
                report.suspected.append(project.id)
            elif seen == "lost":
                lost.append((project.id, project.chain_epoch))
    for project_id, epoch in lost:
        recover(app, settings, project_id, epoch, by_project[project_id], report)
    return report


def loss_reason(session: Session, project: Project, now: datetime) -> str:
    """Why the sweep thinks the chain is lost, naming the last task the run log saw."""
    last = session.scalar(
        select(TaskRun).where(TaskRun.project_id == project.id).order_by(TaskRun.started_at.desc()).limit(1)
    )
    quiet = (now - _alive_until(project, 0)).total_seconds()
    if last is None:
        return f"chain lost: no task ever started and none is queued ({quiet:.0f} s after submit)"
    where = f"scene {last.scene_index} " if last.scene_index is not None else ""
    return (
        f"chain lost: nothing running or queued for {quiet:.0f} s; last task {last.task_name.removeprefix('vidpipe.')} "
        f"{where}on {last.worker or 'unknown worker'} was {last.outcome}"
    )


def recover(
    app: Celery, settings: Settings, project_id: int, epoch: int, messages: list[BrokerMessage], report: SweepReport
) -> None:
    """Resume one lost chain (or fail the project once it was recovered `max_recoveries` times)."""
    from vidpipe_tasks.stages import finalize_project
    from vidpipe_tasks.workflow import NothingToRun, Superseded, close_open_runs, enqueue_project

    now = datetime.now(UTC)
    with session_scope(settings.database_url) as s:
        project = s.get(Project, project_id)
        if project is None or project.status not in ACTIVE or project.chain_epoch != epoch:
            return  # finished, cancelled or re-queued since the sweep looked
        reason = loss_reason(s, project, now)
        project.recoveries = (project.recoveries or 0) + 1
        project.recovery_reason = reason
        if project.recoveries > settings.max_recoveries:
            project.status, project.finished_at = ProjectStatus.FAILED, now
            project.recovery_reason = f"gave up after {settings.max_recoveries} automatic recoveries; {reason}"
            close_open_runs(s, project_id, "abandoned: project failed after repeated chain losses")
            report.failed[project_id] = project.recovery_reason
            log.error("project %s: %s", project_id, project.recovery_reason)
            return
    try:
        root = enqueue_project(app, settings, project_id, expected_epoch=epoch, closing="abandoned: closed by recovery")
        serve_next(app, settings, root)  # the scene already waited its turn once
    except Superseded:
        return
    except NothingToRun:
        # Every scene is done: only the chain's last link was lost.
        finalize_project(settings, project_id)
    report.recovered[project_id] = reason
    report.dropped_deliveries += drop_unacked(app, settings, [m for m in messages if m.state == "unacked"])
    log.warning("project %s: %s; resumed automatically", project_id, reason)
