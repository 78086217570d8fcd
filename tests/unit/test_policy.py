"""The shared task policy: every run is logged; a cancelled project's chain stops without failing."""

from __future__ import annotations

import signal
import threading
import time

import pytest
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy import select

from tests.unit.test_registry import new_project
from vidpipe_tasks.celery_app import app
from vidpipe_tasks.db.models import Clip, Project, ProjectStatus, TaskRun
from vidpipe_tasks.db.session import session_scope
from vidpipe_tasks.policy import solo_soft_time_limit
from vidpipe_tasks.tasks import generate_clip


def test_a_cancelled_project_stops_its_chain_and_the_run_is_logged(settings, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(app, "vidpipe_settings", settings)
    pid = new_project(settings, tmp_path)
    with session_scope(settings.database_url) as s:
        s.get(Project, pid).status = ProjectStatus.CANCELLED
    # apply() runs the task body in-process: enough to exercise the policy, not a distributed run.
    result = generate_clip.apply(args=({"project_id": pid, "scene_index": 1},), task_id="run-1")
    assert result.state == "IGNORED"
    with session_scope(settings.database_url) as s:
        run = s.scalar(select(TaskRun).where(TaskRun.task_id == "run-1"))
        assert (run.outcome, run.project_id, run.scene_index) == ("cancelled", pid, 1)
        assert run.finished_at is not None and s.scalar(select(Clip)) is None


def test_the_solo_soft_time_limit_interrupts_a_task_on_the_main_thread_and_restores_the_handler() -> None:

    before = signal.getsignal(signal.SIGALRM)
    started = time.monotonic()
    with pytest.raises(SoftTimeLimitExceeded, match="soft time limit"), solo_soft_time_limit(0.2):
        while time.monotonic() - started < 5:
            time.sleep(0.01)
    assert time.monotonic() - started < 1.0
    assert signal.getsignal(signal.SIGALRM) is before
    with solo_soft_time_limit(0.2):  # finished in time: the timer is disarmed, nothing fires later
        pass
    time.sleep(0.3)


def test_the_solo_soft_time_limit_leaves_other_threads_to_celery() -> None:

    outcome = []

    def in_a_thread() -> None:
        with solo_soft_time_limit(0.1):
            time.sleep(0.3)
        outcome.append("not interrupted")

    worker = threading.Thread(target=in_a_thread)
    worker.start()
    worker.join()
    assert outcome == ["not interrupted"]
