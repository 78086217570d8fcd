"""The shared task policy: every run is logged; a cancelled project's chain stops without failing."""

from __future__ import annotations

from sqlalchemy import select

from tests.unit.test_registry import new_project
from vidpipe_tasks.celery_app import app
from vidpipe_tasks.db.models import Clip, Project, ProjectStatus, TaskRun
from vidpipe_tasks.db.session import session_scope
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
