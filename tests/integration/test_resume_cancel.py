"""Operations on real workers: resume after a worker died mid-task, cancel, and wait's exit code."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from tests.conftest import make_settings
from tests.helpers import run_vidpipe as vidpipe
from tests.integration.conftest import example_path
from vidpipe_tasks.celery_app import create_app
from vidpipe_tasks.cli.workers import start_worker, stop_workers, wait_ready
from vidpipe_tasks.db.models import Asset, Clip, Project, TaskRun
from vidpipe_tasks.db.session import session_scope
from vidpipe_tasks.settings import CV_QUEUE, GENERATION_QUEUE, REGISTRY_QUEUE
from vidpipe_tasks.storyboard import load_storyboard
from vidpipe_tasks.workflow import create_project, enqueue_project


@pytest.fixture
def settings(tmp_path: Path):
    return make_settings(tmp_path / "work")


def running_generation(settings, project_id: int) -> TaskRun | None:
    with session_scope(settings.database_url) as s:
        stmt = select(TaskRun).where(
            TaskRun.project_id == project_id,
            TaskRun.task_name == "vidpipe.generate_clip",
            TaskRun.outcome == "running",
            TaskRun.scene_index >= 2,
        )
        return s.scalar(stmt)


def kill_while_rendering_a_later_scene(settings, project_id: int, gen) -> TaskRun:
    """SIGKILL the generation worker's whole group once it renders scene 2 or later; returns that run."""
    deadline = time.monotonic() + 180
    while (run := running_generation(settings, project_id)) is None:
        assert time.monotonic() < deadline, "no later scene started"
        time.sleep(0.02)
    os.killpg(gen.process.pid, signal.SIGKILL)
    gen.process.wait()
    return run


def test_with_beat_running_a_project_whose_worker_died_mid_task_completes_by_itself(tmp_path) -> None:
    from vidpipe_tasks.cli.workers import start_beat

    settings = make_settings(tmp_path / "auto", heartbeat_interval=1.0, lease_ttl=3.0, recovery_interval=1.5)
    board = example_path("lighthouse.yaml")
    project = create_project(settings, board, load_storyboard(board))
    logs = settings.home / "logs"
    gen = start_worker(settings, "gen", [GENERATION_QUEUE, REGISTRY_QUEUE], logs)
    workers = [gen, start_worker(settings, "cv", [CV_QUEUE], logs), start_beat(settings, logs)]
    try:
        wait_ready(workers)
        enqueue_project(create_app(settings), settings, project)
        # Given the generation worker killed whole while it renders a later scene (the embedded broker
        # handed the message over: it is gone with the worker), and a new worker started in its place
        run = kill_while_rendering_a_later_scene(settings, project, gen)
        workers[0] = start_worker(settings, "gen2", [GENERATION_QUEUE, REGISTRY_QUEUE], logs)
        # Then, with nobody calling resume, the sweep finds the chain lost and the project completes
        waited = vidpipe(settings, "wait", str(project), "--timeout", "300")
    finally:
        stop_workers(workers)
    assert waited.returncode == 0, waited.stdout + waited.stderr
    assert f"project {project}: resumed automatically (1x): chain lost" in waited.stdout
    with session_scope(settings.database_url) as s:
        assert s.scalar(select(func.count()).select_from(Clip)) == 4
        assert s.scalars(select(Asset.tag).where(Asset.tag.like("wren%"))).all() == ["wren"]
        assert s.scalar(select(TaskRun.outcome).where(TaskRun.task_id == run.task_id)) == "abandoned"
        reason = s.get(Project, project).recovery_reason
        assert f"last task generate_clip scene {run.scene_index} on gen@" in reason and "was running" in reason


def test_resume_completes_a_project_whose_worker_died_mid_task_without_duplicates(settings) -> None:
    board = example_path("lighthouse.yaml")
    project = create_project(settings, board, load_storyboard(board))
    logs = settings.home / "logs"
    gen = start_worker(settings, "gen", [GENERATION_QUEUE, REGISTRY_QUEUE], logs)
    cv = start_worker(settings, "cv", [CV_QUEUE], logs)
    workers = [gen, cv]
    try:
        wait_ready(workers)
        enqueue_project(create_app(settings), settings, project)
        # Given a worker killed while it renders a later scene (its message is gone with it)
        run = kill_while_rendering_a_later_scene(settings, project, gen)
        gen = start_worker(settings, "gen2", [GENERATION_QUEUE, REGISTRY_QUEUE], logs)
        workers = [gen, cv]
        wait_ready(workers)
        # Then the project stalls: nothing is left in any queue for it
        assert vidpipe(settings, "wait", str(project), "--timeout", "4").returncode == 124
        # When it is resumed, it completes from the scene that was lost
        resumed = vidpipe(settings, "resume", str(project))
        assert resumed.returncode == 0, resumed.stderr
        waited = vidpipe(settings, "wait", str(project), "--timeout", "300")
        assert waited.returncode == 0, waited.stdout + waited.stderr
        assert "4/4 COMPLETED" in waited.stdout
    finally:
        stop_workers(workers)
    with session_scope(settings.database_url) as s:
        assert s.get(Project, project).status.value == "COMPLETED"
        assert s.scalar(select(func.count()).select_from(Clip)) == 4
        assert s.scalars(select(Asset.tag).where(Asset.tag.like("wren%"))).all() == ["wren"]
        lost = s.scalar(select(TaskRun).where(TaskRun.task_id == run.task_id))
        redo = s.scalars(
            select(TaskRun.outcome).where(
                TaskRun.task_name == "vidpipe.generate_clip", TaskRun.scene_index == run.scene_index
            )
        ).all()
    # The killed run never finished: resume closed it as abandoned; the resumed one succeeded.
    assert lost.outcome == "abandoned" and "success" in redo
    assert vidpipe(settings, "resume", str(project)).returncode == 1  # nothing left to run


def test_a_cancelled_project_runs_nothing_and_wait_exits_non_zero(settings) -> None:
    board = example_path("market.yaml")
    project = create_project(settings, board, load_storyboard(board))
    enqueue_project(create_app(settings), settings, project)
    assert vidpipe(settings, "cancel", str(project)).returncode == 0
    workers = [start_worker(settings, "gen", [GENERATION_QUEUE, REGISTRY_QUEUE], settings.home / "logs")]
    try:
        wait_ready(workers)
        waited = vidpipe(settings, "wait", str(project), "--timeout", "60")
        deadline = time.monotonic() + 60
        while True:  # the queued first task is taken and stops itself
            with session_scope(settings.database_url) as s:
                outcomes = s.scalars(select(TaskRun.outcome).where(TaskRun.project_id == project)).all()
            if outcomes or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        stop_workers(workers)
    assert waited.returncode == 1 and "CANCELLED" in waited.stdout
    assert outcomes == ["cancelled"]
    with session_scope(settings.database_url) as s:
        assert s.scalar(select(func.count()).select_from(Clip)) == 0


def test_a_task_that_fails_for_good_marks_the_project_failed_and_resume_recovers_it(settings) -> None:
    from vidpipe_tasks.db.models import Scene

    board = example_path("market.yaml")
    project = create_project(settings, board, load_storyboard(board))
    # The project names a generator the worker has no configuration for (no Veo key): it fails for good.
    # (A worker whose own VIDPIPE_GENERATOR is unknown refuses to start, so that cannot stand in any more.)
    with session_scope(settings.database_url) as s:
        stored = s.get(Project, project)
        stored.storyboard_json = {**stored.storyboard_json, "generator": "veo"}
    logs = settings.home / "logs"
    broken = start_worker(settings, "broken", [GENERATION_QUEUE], logs)
    try:
        wait_ready([broken])
        enqueue_project(create_app(settings), settings, project)
        waited = vidpipe(settings, "wait", str(project), "--timeout", "120")
    finally:
        stop_workers([broken])
    assert waited.returncode == 1, waited.stdout + waited.stderr
    with session_scope(settings.database_url) as s:
        assert s.get(Project, project).status.value == "FAILED"
        first = s.scalar(select(Scene).where(Scene.project_id == project, Scene.scene_index == 1))
        assert first.generation_status.value == "FAILED"
        failure = s.scalar(select(TaskRun).where(TaskRun.project_id == project, TaskRun.outcome == "failure"))
        assert "VIDPIPE_VEO_API_KEY" in failure.detail
        stored = s.get(Project, project)
        stored.storyboard_json = {k: v for k, v in stored.storyboard_json.items() if k != "generator"}
    good = start_worker(settings, "gen", [GENERATION_QUEUE, REGISTRY_QUEUE], logs)
    try:
        wait_ready([good])
        resumed = vidpipe(settings, "resume", str(project))
        assert resumed.returncode == 0, resumed.stderr
        assert vidpipe(settings, "wait", str(project), "--timeout", "120").returncode == 0
    finally:
        stop_workers([good])
