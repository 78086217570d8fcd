"""`vidpipe exporter` scraped over HTTP: after a real run its series match the database; on Redis, each list."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from tests.conftest import DATA, production_settings
from tests.helpers import wait_until
from tests.integration.conftest import PipelineRun
from tests.servers import free_port
from vidpipe_tasks.celery_app import create_app
from vidpipe_tasks.db.models import Project, Scene, SceneManifest, TaskRun
from vidpipe_tasks.db.session import session_scope
from vidpipe_tasks.queues import _redis_client, redis_layout
from vidpipe_tasks.settings import ALL_QUEUES, GENERATION_QUEUE, Settings
from vidpipe_tasks.storyboard import load_storyboard
from vidpipe_tasks.workflow import create_project, enqueue_project

pytestmark = pytest.mark.integration

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@contextmanager
def exporter(settings: Settings, logfile: Path, *extra: str) -> Iterator[str]:
    """`vidpipe exporter` as an operator starts it, on a free loopback port; yields its /metrics URL."""
    port = free_port()
    argv = [sys.executable, "-m", "vidpipe_tasks.cli", "exporter", "--port", str(port), *extra]
    env = {**os.environ, **settings.as_env()}
    with logfile.open("w") as out:
        process = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        wait_until(lambda: process.poll() is not None or fetch(url) is not None, "the exporter to listen", 60)
        assert process.poll() is None, logfile.read_text()
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            assert process.wait(15) == 0, logfile.read_text()
        finally:
            if process.poll() is None:
                process.kill()


def fetch(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.read().decode()
    except (urllib.error.URLError, OSError):
        return None


def scrape(url: str) -> Samples:
    text = fetch(url)
    assert text is not None
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def series(found: Samples, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: value for (n, labels), value in found.items() if n == name}


def test_after_a_run_the_exporter_reports_what_the_database_holds(pipeline_run: PipelineRun) -> None:
    settings = pipeline_run.settings
    with exporter(settings, settings.home / "logs" / "exporter.log") as url:
        found = scrape(url)
    with session_scope(settings.database_url) as s:
        projects = Counter(p.value.lower() for p in s.scalars(select(Project.status)))
        analysis = Counter(v.value.lower() for v in s.scalars(select(Scene.analysis_status)))
        runs = Counter(
            (n.removeprefix("vidpipe."), o) for n, o in s.execute(select(TaskRun.task_name, TaskRun.outcome))
        )
        attempts = dict(
            s.execute(select(TaskRun.task_name, func.sum(TaskRun.attempts)).group_by(TaskRun.task_name)).all()
        )
        scores = list(
            s.scalars(select(SceneManifest.continuity_score).where(SceneManifest.continuity_score.isnot(None)))
        )
        scene_count = s.scalar(select(func.count()).select_from(Scene))

    assert series(found, "vidpipe_exporter_source_up") == {
        (("source", "database"),): 1,
        (("source", "broker"),): 1,
        (("source", "gpu"),): 0,  # no NVML on this host: reported absent, no GPU series
    }
    assert not series(found, "vidpipe_gpu_memory_used_bytes")
    assert {dict(k)["status"]: v for k, v in series(found, "vidpipe_projects").items() if v} == projects
    assert projects == {"completed": 3}
    stages = series(found, "vidpipe_scene_stages")
    assert {dict(k)["status"]: v for k, v in stages.items() if dict(k)["stage"] == "analysis" and v} == analysis
    # The corrupted clip of the quay project degraded its analysis: one degraded scene, the rest done.
    outcomes = {dict(k)["outcome"]: v for k, v in series(found, "vidpipe_scenes").items() if v}
    assert outcomes == {"done": scene_count - analysis["degraded"], "degraded": analysis["degraded"]}
    assert analysis["degraded"] >= 1
    assert {(dict(k)["task"], dict(k)["outcome"]): v for k, v in series(found, "vidpipe_task_runs").items()} == runs
    exported_attempts = series(found, "vidpipe_task_attempts_total")
    assert {dict(k)["task"]: v for k, v in exported_attempts.items()} == {
        name.removeprefix("vidpipe."): total for name, total in attempts.items()
    }
    # One duration observation per finished run, per task and outcome.
    counts = series(found, "vidpipe_task_duration_seconds_count")
    assert {(dict(k)["task"], dict(k)["outcome"]): v for k, v in counts.items()} == runs
    for labels, count in counts.items():
        assert found[("vidpipe_task_duration_seconds_bucket", tuple(sorted((*labels, ("le", "+Inf")))))] == count
    assert found[("vidpipe_continuity_score_count", ())] == len(scores) > 0
    assert found[("vidpipe_continuity_score_sum", ())] == pytest.approx(sum(scores))
    assert found[("vidpipe_continuity_score_bucket", (("le", "0.5"),))] == sum(1 for v in scores if v <= 0.5)
    # Embedded broker, after the run: every queue present and empty.
    assert series(found, "vidpipe_queue_depth") == {(("queue", q),): 0 for q in ALL_QUEUES}


def test_on_redis_every_priority_list_is_exported_with_its_length(
    tmp_path: Path, redis_server, postgres_server
) -> None:
    # Given three projects queued with priorities 0, 4 and 9 and no worker to take them
    settings = production_settings(tmp_path / "work", redis_server, postgres_server, "t_exporter_redis")
    app = create_app(settings)
    path = DATA / "flower_duo.yaml"
    for priority in (0, 4, 9):
        project = create_project(settings, path, load_storyboard(path))
        enqueue_project(app, settings, project, priority=priority)
    layout, client = redis_layout(app), _redis_client(settings)
    lengths = {
        layout.step_range(i): client.llen(layout.key(GENERATION_QUEUE, step)) for i, step in enumerate(layout.steps)
    }
    assert sum(lengths.values()) == 3 and sum(1 for n in lengths.values() if n) == 3
    (settings.home / "logs").mkdir(parents=True, exist_ok=True)
    with exporter(settings, settings.home / "logs" / "exporter.log", "--sources", "broker,database") as url:
        found = scrape(url)
    # Then each list's series is its LLEN, the queue's depth their sum, and nothing is reported unacked
    lists = series(found, "vidpipe_queue_list_depth")
    assert {dict(k)["priorities"]: v for k, v in lists.items() if dict(k)["queue"] == GENERATION_QUEUE} == lengths
    assert found[("vidpipe_queue_depth", (("queue", GENERATION_QUEUE),))] == 3
    assert found[("vidpipe_queue_unacked", (("queue", GENERATION_QUEUE),))] == 0
    assert {dict(k)["queue"] for k in lists} == set(ALL_QUEUES)
    assert found[("vidpipe_projects", (("status", "pending"),))] == 3
    assert found[("vidpipe_scenes", (("outcome", "pending"),))] == 6
    assert ("vidpipe_exporter_source_up", (("source", "gpu"),)) not in found  # not asked for
