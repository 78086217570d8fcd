"""VIDPIPE_EXPORT_ON_FINISH: the chain's last link exports the completed project, on a real worker."""

from __future__ import annotations

import av
from sqlalchemy import select

from tests.conftest import make_settings
from tests.helpers import wait_projects_finished
from tests.integration.conftest import example_path
from vidpipe_tasks import media
from vidpipe_tasks.celery_app import create_app
from vidpipe_tasks.cli.workers import start_worker, stop_workers, wait_ready
from vidpipe_tasks.db.models import Clip, Scene, TaskRun
from vidpipe_tasks.db.session import session_scope
from vidpipe_tasks.settings import GENERATION_QUEUE, REGISTRY_QUEUE
from vidpipe_tasks.storyboard import load_storyboard
from vidpipe_tasks.workflow import create_project, enqueue_project


def test_with_export_on_finish_the_last_link_writes_the_whole_project_as_one_video(tmp_path) -> None:
    settings = make_settings(tmp_path / "work", export_on_finish=True)
    app = create_app(settings)
    board = example_path("market.yaml")  # no manifest: generation only, so no CV worker is needed
    project = create_project(settings, board, load_storyboard(board))
    workers = [start_worker(settings, "gen", [GENERATION_QUEUE, REGISTRY_QUEUE], settings.home / "logs")]
    try:
        wait_ready(workers)
        enqueue_project(app, settings, project)
        assert wait_projects_finished(settings, [project], workers, 180) == ["COMPLETED"]
    finally:
        stop_workers(workers)
    with session_scope(settings.database_url) as s:
        frames = sum(s.scalars(select(Clip.frame_count).join(Scene).where(Scene.project_id == project)))
        finalize = s.scalar(select(TaskRun).where(TaskRun.task_name == "vidpipe.finalize_project"))
        assert finalize.outcome == "success"
        result = app.AsyncResult(finalize.task_id).get(timeout=30, interval=0.1)
    assert result["export"] == {"path": media.final_path(project), "frames": frames} and frames == 2 * 36
    with av.open(str(settings.media_root / media.final_path(project))) as container:
        assert sum(1 for _ in container.decode(video=0)) == frames
