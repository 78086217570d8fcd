"""Time limits on CV workers (prefork: Celery enforces them): an analysis past its soft limit degrades its scene."""

from __future__ import annotations

from sqlalchemy import select

from gpu_worker.service import PYTHON_STALL_ENV
from tests.conftest import make_settings
from tests.helpers import run_projects_to_the_end
from tests.integration.conftest import example_path
from vidpipe_tasks.db.models import Project, Scene, TaskRun
from vidpipe_tasks.db.session import session_scope
from vidpipe_tasks.storyboard import load_storyboard
from vidpipe_tasks.workflow import create_project


def test_an_analysis_over_its_soft_limit_on_a_cv_worker_degrades_the_scene_and_the_project_completes(
    tmp_path, monkeypatch
) -> None:
    # 3 s hard limit, 2 s soft: every analysis first sleeps 30 s in Python (a test hook), which only the
    # soft limit interrupts, however fast the analysis itself is.
    monkeypatch.setenv(PYTHON_STALL_ENV, "30")
    settings = make_settings(tmp_path / "work", analysis_time_limit=3)
    board = example_path("lighthouse.yaml")
    project = create_project(settings, board, load_storyboard(board))
    run_projects_to_the_end(settings, [project])
    with session_scope(settings.database_url) as s:
        assert s.get(Project, project).status.value == "COMPLETED"
        scenes = list(s.scalars(select(Scene).where(Scene.project_id == project).order_by(Scene.scene_index)))
        assert all(sc.analysis_status.value == "DEGRADED" for sc in scenes)
        assert all("SoftTimeLimitExceeded" in sc.scene_manifest.degraded_reason for sc in scenes)
        analyses = list(s.scalars(select(TaskRun).where(TaskRun.task_name == "vidpipe.analyze_clip")))
        assert len(analyses) == 4 and all(r.worker.startswith("cv-cpu0@") for r in analyses)
        assert all(r.outcome == "degraded" for r in analyses)
