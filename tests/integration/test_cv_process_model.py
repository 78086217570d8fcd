"""The prefork CV worker: online with its active task while it analyses, and a hung native call ended by the hard limit.

Both tests make every analysis stall in a native call that ignores the soft limit (the
VIDPIPE_TEST_NATIVE_STALL_S hook), started through the CV launcher as production starts it.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
import yaml
from celery import Celery
from celery.result import AsyncResult
from sqlalchemy import select

from gpu_worker.service import NATIVE_STALL_ENV
from tests.conftest import make_settings, production_settings
from tests.helpers import wait_until
from tests.integration.test_launcher import child_pids
from vidpipe_tasks.celery_app import create_app
from vidpipe_tasks.cli.workers import WorkerProcess, start_cv_launcher, start_worker, stop_workers, wait_ready
from vidpipe_tasks.db.models import Project, Scene, TaskRun
from vidpipe_tasks.db.session import session_scope
from vidpipe_tasks.settings import GENERATION_QUEUE, REGISTRY_QUEUE, Settings
from vidpipe_tasks.storyboard import load_storyboard
from vidpipe_tasks.workflow import create_project, enqueue_project

pytestmark = pytest.mark.integration

ANALYZE = "vidpipe.analyze_clip"
BOARD = {
    "title": "process model",
    "manifest": {
        "name": "process-model",
        "assets": [{"type": "character", "tag": "ines", "name": "Ines", "reference_image": "stock:face/t1-2"}],
    },
    "defaults": {"duration_s": 2, "fps": 12, "size": "320x180"},
    "scenes": [
        {"description": "Ines waits.", "location": "quay", "characters": ["ines"]},
        {"description": "Ines leaves.", "location": "quay", "characters": ["ines"]},
    ],
}


def submit(settings: Settings, home: Path) -> int:
    path = home / "board.yaml"
    path.write_text(yaml.safe_dump(BOARD))
    project = create_project(settings, path, load_storyboard(path))
    enqueue_project(create_app(settings), settings, project)
    return project


def running_analysis(settings: Settings) -> TaskRun | None:
    with session_scope(settings.database_url) as s:
        return s.scalar(select(TaskRun).where(TaskRun.task_name == ANALYZE, TaskRun.outcome == "running"))


def start_stack(settings: Settings, monkeypatch: pytest.MonkeyPatch, stall_s: float) -> list[WorkerProcess]:
    monkeypatch.setenv(NATIVE_STALL_ENV, str(stall_s))  # inherited by the launcher and its workers
    logs = settings.home / "logs"
    gen = start_worker(settings, "gen", [GENERATION_QUEUE, REGISTRY_QUEUE], logs)
    workers = [gen, start_cv_launcher(settings, logs)]
    wait_ready(workers)
    return workers


def kill_stack(workers: list[WorkerProcess]) -> None:
    """No warm wait for a stalled analysis: the launcher's whole process group goes at once."""
    for w in workers:
        if w.name == "cv-launcher" and w.process.poll() is None:
            os.killpg(w.process.pid, signal.SIGKILL)
            w.process.wait()
    stop_workers([w for w in workers if w.name != "cv-launcher"])


class Heartbeats:
    """Worker heartbeats and task-started events of one node, captured from the broker in a thread."""

    def __init__(self, app: Celery, node_prefix: str) -> None:
        self.app, self.prefix = app, node_prefix
        self.heartbeats: list[dict] = []
        self.started: list[dict] = []
        self.receiver = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with self.app.connection_for_read() as conn:
            self.receiver = self.app.events.Receiver(
                conn,
                handlers={"worker-heartbeat": self._on_heartbeat, "task-started": self._on_started},
            )
            self.receiver.capture(limit=None, timeout=None, wakeup=False)

    def _on_heartbeat(self, event: dict) -> None:
        if event["hostname"].startswith(self.prefix):
            self.heartbeats.append(event)

    def _on_started(self, event: dict) -> None:
        if event["hostname"].startswith(self.prefix):
            self.started.append(event)

    def stop(self) -> None:
        if self.receiver is not None:
            self.receiver.should_stop = True
        self.thread.join(10)


def test_a_busy_cv_worker_answers_ping_and_inspect_and_heartbeats_its_active_task(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_server, postgres_server
) -> None:
    # Given a CV worker on Redis whose analyses stall 15 s in native code
    settings = production_settings(tmp_path / "work", redis_server, postgres_server, "process_model_busy")
    workers = start_stack(settings, monkeypatch, stall_s=15)
    app = create_app(settings)
    events = Heartbeats(app, "cv-cpu0@")
    events.thread.start()
    try:
        # When it is in the middle of an analysis
        submit(settings, tmp_path)
        run = wait_until(lambda: running_analysis(settings), "an analysis to start", 120, step=0.1)
        time.sleep(1)  # well inside the stall
        # Then it answers ping and lists the analysis as active
        inspect = app.control.inspect(timeout=3.0)
        pings = inspect.ping() or {}
        node = next((n for n in pings if n.startswith("cv-cpu0@")), None)
        assert node is not None, f"cv-cpu0 did not answer ping while busy: {pings}"
        assert node == run.worker
        active = (app.control.inspect(destination=[node], timeout=3.0).active() or {}).get(node, [])
        assert [(t["id"], t["name"]) for t in active] == [(run.task_id, ANALYZE)]
        # And its heartbeats keep coming, counting the active task (Flower shows it online and busy)
        wait_until(lambda: any(h["active"] >= 1 for h in events.heartbeats), "a heartbeat with the active task", 10)
        assert running_analysis(settings).task_id == run.task_id, "the analysis was still running throughout"
        assert any(e["uuid"] == run.task_id for e in events.started)
    finally:
        events.stop()
        kill_stack(workers)


def pool_children(worker_pid: int) -> list[int]:
    """Live pool children of a worker (a killed child lingers as a zombie until billiard reaps it)."""
    live = []
    for pid in child_pids(worker_pid):
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            continue
        if state != "Z":
            live.append(pid)
    return live


def test_a_hung_native_call_is_ended_by_the_hard_time_limit_and_the_worker_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given analyses that hang for 120 s in native code, under a 4 s hard limit (soft 3 s)
    settings = make_settings(tmp_path / "work", analysis_time_limit=4)
    workers = start_stack(settings, monkeypatch, stall_s=120)
    launcher = workers[1]
    try:
        (worker_pid,) = child_pids(launcher.process.pid)
        (first_child,) = wait_until(lambda: pool_children(worker_pid), "the pool child")
        project = submit(settings, tmp_path)
        run = wait_until(lambda: running_analysis(settings), "an analysis to start", 120, step=0.1)
        # When the hard limit passes, the stalled child is killed and the task fails with TimeLimitExceeded
        result = AsyncResult(run.task_id, app=create_app(settings))
        wait_until(lambda: result.state == "FAILURE", "the hard limit to end the analysis", 30, step=0.1)
        assert type(result.result).__name__ == "TimeLimitExceeded"
        ended_after = time.time() - run.started_at.timestamp()
        assert ended_after < 4 + 20, f"ended {ended_after:.0f}s after the start, not by the 4 s hard limit"
        # Then the same worker carries on with a fresh pool child in place of the killed one, and answers ping
        new_children = wait_until(
            lambda: (c := pool_children(worker_pid)) and first_child not in c, "a fresh pool child", 30
        )
        assert new_children
        assert launcher.process.poll() is None and child_pids(launcher.process.pid) == [worker_pid]
        pings = create_app(settings).control.inspect(timeout=3.0).ping() or {}
        assert any(n.startswith("cv-cpu0@") for n in pings), pings

        # And the scene degrades (its next attempt does not run the hung analysis again) and the chain goes on
        def final_state():
            with session_scope(settings.database_url) as s:
                proj = s.get(Project, project)
                scene = s.scalar(select(Scene).where(Scene.project_id == project, Scene.scene_index == 1))
                if proj.status.value in ("COMPLETED", "FAILED"):
                    return proj.status.value, scene.analysis_status.value
                return None

        status, analysis = wait_until(final_state, "the project to end", 120)
        assert (status, analysis) == ("COMPLETED", "DEGRADED")
        with session_scope(settings.database_url) as s:
            runs = select(TaskRun.outcome).where(TaskRun.task_name == "vidpipe.analyze_clip", TaskRun.scene_index == 1)
            outcomes = s.scalars(runs).all()
        assert sorted(outcomes) == ["degraded", "timeout"]  # one run ended by the limit, then no second try
    finally:
        kill_stack(workers)
