"""Crafted register_entities messages sent to a real registry worker: refused, logged, the project unharmed."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import func, select

from tests.helpers import wait_until
from tests.unit.test_message_trust import in_analysis, new_project, payload
from vidpipe_tasks.celery_app import create_app
from vidpipe_tasks.cli.workers import start_worker, stop_workers, wait_ready
from vidpipe_tasks.db.models import Asset, AssetAppearance, Project, Scene, TaskRun
from vidpipe_tasks.db.session import session_scope
from vidpipe_tasks.settings import REGISTRY_QUEUE


def finished_run(settings, task_id: str) -> TaskRun | None:
    with session_scope(settings.database_url) as s:
        run = s.scalar(select(TaskRun).where(TaskRun.task_id == task_id))
        return run if run is not None and run.finished_at is not None else None


def test_crafted_messages_store_nothing_and_never_fail_the_project(settings, tmp_path: Path) -> None:
    # Given a project whose first scene is being analysed, and one not started
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
    running = new_project(settings, tmp_path / "a")
    in_analysis(settings, running)
    idle = new_project(settings, tmp_path / "b")
    worker = start_worker(settings, "registry", [REGISTRY_QUEUE], tmp_path / "logs")
    try:
        wait_ready([worker])
        app = create_app(settings)
        # When a message asks to register a face whose crop is a file outside the media root
        evil = app.send_task("vidpipe.register_entities", args=(payload(running, "/etc/passwd"),), queue=REGISTRY_QUEUE)
        # and another one names a scene that has no clip yet
        stale = app.send_task("vidpipe.register_entities", args=(payload(idle, "x"),), queue=REGISTRY_QUEUE)
        evil_run = wait_until(lambda: finished_run(settings, evil.id), "the crafted message to be handled")
        stale_run = wait_until(lambda: finished_run(settings, stale.id), "the stale message to be handled")
    finally:
        stop_workers([worker])
    # Then the first is registered as a degraded scene with the reason, and nothing of it is stored
    assert evil_run.outcome == "success"
    with session_scope(settings.database_url) as s:
        scene = s.scalar(select(Scene).where(Scene.project_id == running, Scene.scene_index == 1))
        assert scene.analysis_status.value == "DEGRADED"
        assert "analysis payload rejected: candidates.0.crop_path" in scene.scene_manifest.degraded_reason
        assert s.scalar(select(func.count()).select_from(Asset).where(Asset.reference_image == "/etc/passwd")) == 0
        assert s.scalar(select(func.count()).select_from(AssetAppearance)) == 0
        # and the second is dropped without failing its project
        assert stale_run.outcome == "ignored" and "no clip yet" in stale_run.detail
        assert [s.get(Project, p).status.value for p in (running, idle)] == ["PENDING", "PENDING"]
    assert "analysis payload rejected" in worker.logfile.read_text()
