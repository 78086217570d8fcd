"""The recovery sweep on the embedded broker: a lost chain is confirmed twice, then resumed once."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from tests.unit.test_registry import new_project
from vidpipe_tasks.celery_app import create_app
from vidpipe_tasks.db.models import Project, ProjectStatus, TaskRun
from vidpipe_tasks.db.session import session_scope
from vidpipe_tasks.queues import broker_messages
from vidpipe_tasks.recovery import ChainState, sweep, verdict
from vidpipe_tasks.workflow import enqueue_project

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def state(alive_for: float, suspected_ago: float | None = None, in_broker: bool = False) -> ChainState:
    suspected = None if suspected_ago is None else NOW - timedelta(seconds=suspected_ago)
    return ChainState(1, 1, NOW + timedelta(seconds=alive_for), suspected, in_broker)


def test_a_chain_with_a_live_lease_or_a_message_in_the_broker_is_alive(settings) -> None:
    assert verdict(state(alive_for=5), NOW, settings) == "alive"
    assert verdict(state(alive_for=-60, suspected_ago=30, in_broker=True), NOW, settings) == "alive"


def test_a_lost_chain_is_suspected_first_and_declared_lost_one_interval_later(settings) -> None:
    interval = settings.recovery_interval
    assert verdict(state(alive_for=-1), NOW, settings) == "suspect"
    assert verdict(state(alive_for=-30, suspected_ago=interval / 2), NOW, settings) == "confirming"
    assert verdict(state(alive_for=-30, suspected_ago=interval), NOW, settings) == "lost"


def test_a_heartbeat_after_the_suspicion_or_a_stale_suspicion_starts_over(settings) -> None:
    # The lease moved past the suspicion: a task ran meanwhile, so it must be seen lost afresh.
    assert verdict(state(alive_for=-1, suspected_ago=5), NOW, settings) == "suspect"
    assert verdict(state(alive_for=-600, suspected_ago=10 * settings.recovery_interval), NOW, settings) == "suspect"


def lose_chain(settings, app, pid: int) -> None:
    """Queue the project, then lose its message and its worker (a delivery taken by a worker that died)."""
    enqueue_project(app, settings, pid)
    for msg in (settings.broker_dir / "queue").glob("*.msg"):
        msg.unlink()
    with session_scope(settings.database_url) as s:
        s.add(TaskRun(task_id="dead", task_name="vidpipe.generate_clip", project_id=pid, scene_index=1,
                      outcome="running", worker="gen@dead", started_at=NOW, attempts=1))  # fmt: skip
        s.get(Project, pid).lease_until = NOW - timedelta(seconds=1)


def test_the_sweep_resumes_a_lost_chain_on_its_second_look_and_closes_the_dead_attempt(settings, tmp_path) -> None:
    app = create_app(settings)
    pid = new_project(settings, tmp_path)
    lose_chain(settings, app, pid)
    first = sweep(app, settings, now=NOW)
    assert first.suspected == [pid] and not first.recovered and broker_messages(app, settings) == []
    second = sweep(app, settings, now=NOW + timedelta(seconds=settings.recovery_interval))
    assert list(second.recovered) == [pid]
    (message,) = broker_messages(app, settings)
    assert (message.task, message.scene_index, message.epoch) == ("vidpipe.generate_clip", 1, 2)
    with session_scope(settings.database_url) as s:
        project = s.get(Project, pid)
        assert (project.recoveries, project.chain_epoch, project.status) == (1, 2, ProjectStatus.PENDING)
        assert "generate_clip scene 1 on gen@dead was running" in project.recovery_reason
        assert s.scalar(select(TaskRun.outcome).where(TaskRun.task_id == "dead")) == "abandoned"
    # The resumed chain is queued and its lease is fresh: later sweeps leave it alone.
    third = sweep(app, settings, now=NOW + timedelta(seconds=2 * settings.recovery_interval))
    assert not third.recovered and not third.suspected


def test_a_project_recovered_too_often_fails_with_the_reason(settings, tmp_path) -> None:
    settings = replace(settings, max_recoveries=1)
    app = create_app(settings)
    pid = new_project(settings, tmp_path)
    with session_scope(settings.database_url) as s:
        s.get(Project, pid).recoveries = 1
    lose_chain(settings, app, pid)
    sweep(app, settings, now=NOW)
    report = sweep(app, settings, now=NOW + timedelta(seconds=settings.recovery_interval))
    assert list(report.failed) == [pid] and broker_messages(app, settings) == []
    with session_scope(settings.database_url) as s:
        project = s.get(Project, pid)
        assert project.status == ProjectStatus.FAILED and project.recovery_reason.startswith("gave up after 1")


def test_a_submitted_project_whose_queueing_failed_is_queued_by_the_sweep(settings, tmp_path) -> None:
    app = create_app(settings)
    pid = new_project(settings, tmp_path)  # stored, never queued (PENDING, no chain root)
    created = NOW - timedelta(seconds=settings.lease_ttl + 1)
    with session_scope(settings.database_url) as s:
        s.get(Project, pid).created_at = created
    sweep(app, settings, now=NOW)
    report = sweep(app, settings, now=NOW + timedelta(seconds=settings.recovery_interval))
    assert list(report.recovered) == [pid] and "no task ever started" in report.recovered[pid]
    assert [m.task for m in broker_messages(app, settings)] == ["vidpipe.generate_clip"]
