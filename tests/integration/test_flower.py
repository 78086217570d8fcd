"""`vidpipe flower` on Redis: the chain's tasks, states, workers and progress through Flower's authenticated API."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import select

from tests.conftest import DATA, make_settings, production_settings
from tests.helpers import wait_until
from tests.servers import free_port
from vidpipe_tasks.celery_app import create_app
from vidpipe_tasks.cli.flower import progress_as_result
from vidpipe_tasks.cli.workers import start_cv_launcher, start_worker, stop_workers, wait_ready
from vidpipe_tasks.db.models import Project, TaskRun
from vidpipe_tasks.db.session import session_scope
from vidpipe_tasks.settings import GENERATION_QUEUE, REGISTRY_QUEUE, Settings
from vidpipe_tasks.storyboard import load_storyboard
from vidpipe_tasks.workflow import create_project, enqueue_project

pytestmark = pytest.mark.integration

USER, PASSWORD = "ops", "s3cret-pw"
GEN, CV, REG, FIN = (
    "vidpipe.generate_clip",
    "vidpipe.analyze_clip",
    "vidpipe.register_entities",
    "vidpipe.finalize_project",
)
RUN_TIMEOUT_S = 300


def get(url: str, auth: tuple[str, str] | None = (USER, PASSWORD)) -> tuple[int, bytes]:
    """GET with optional basic auth; returns (status, body) for errors too."""
    request = urllib.request.Request(url)
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:  # not listening yet (URLError is an OSError)
        return 0, b""


def get_json(url: str) -> dict:
    status, body = get(url)
    assert status == 200, (url, status, body[:300])
    return json.loads(body)


@dataclass
class FlowerRun:
    settings: Settings
    base: str
    project_id: int
    #: The project's task-run log: task id -> (task name, worker, queue).
    runs: dict[str, tuple[str, str, str]]
    #: What /api/tasks?state=PROGRESS showed while the project ran: task id -> (name, result).
    seen_in_progress: dict[str, tuple[str, str]] = field(default_factory=dict)


def start_flower(settings: Settings, port: int, logfile: Path) -> subprocess.Popen:
    """`vidpipe flower` as an operator runs it, on a loopback port with basic auth."""
    argv = [sys.executable, "-m", "vidpipe_tasks.cli", "flower", "--port", str(port), "--address", "127.0.0.1"]
    argv += ["--basic-auth", f"{USER}:{PASSWORD}"]
    env = {**os.environ, **settings.as_env()}
    with logfile.open("w") as out:
        return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop_flower(process: subprocess.Popen) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return -9


def watch_progress(base: str, seen: dict[str, tuple[str, str]], stop: threading.Event) -> None:
    """Record every task Flower lists in state PROGRESS until `stop` is set (a running task is transient)."""
    while not stop.is_set():
        status, body = get(f"{base}/api/tasks?state=PROGRESS")
        if status == 200:
            for task_id, task in json.loads(body).items():
                seen[task_id] = (task["name"], task["result"])
        stop.wait(0.1)


def flower_workers_alive(base: str) -> bool:
    status, body = get(f"{base}/api/workers?status=1")
    alive = json.loads(body) if status == 200 else {}
    names = {name.split("@")[0] for name, up in alive.items() if up}
    return {"gen", "cv-cpu0"} <= names


@pytest.fixture(scope="module")
def flower_run(tmp_path_factory: pytest.TempPathFactory, redis_server, postgres_server) -> Iterator[FlowerRun]:
    """Flower first, then a gen+registry worker and the CV launcher; one two-scene manifest project."""
    home = tmp_path_factory.mktemp("flower") / "work"
    settings = production_settings(home, redis_server, postgres_server, "t_flower")
    logs = settings.home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    flower = start_flower(settings, port, logs / "flower.log")
    workers = []
    stop_watch = threading.Event()
    watcher = None
    try:
        wait_until(lambda: flower.poll() is not None or get(f"{base}/healthcheck", None)[0] == 200, "Flower")
        assert flower.poll() is None, (logs / "flower.log").read_text()
        workers = [
            start_worker(settings, "gen", [GENERATION_QUEUE, REGISTRY_QUEUE], logs),
            start_cv_launcher(settings, logs),
        ]
        wait_ready(workers)
        # Events are pub/sub: once Flower has seen both workers come online it is receiving, so no
        # task-sent event of the project below can be missed.
        wait_until(lambda: flower_workers_alive(base), "Flower to see both workers online")
        run = FlowerRun(settings, base, 0, {})
        watcher = threading.Thread(target=watch_progress, args=(base, run.seen_in_progress, stop_watch), daemon=True)
        watcher.start()
        path = DATA / "flower_duo.yaml"
        run.project_id = create_project(settings, path, load_storyboard(path))
        enqueue_project(create_app(settings), settings, run.project_id)

        def finished() -> bool:
            assert all(w.process.poll() is None for w in workers), "a worker died"
            with session_scope(settings.database_url) as s:
                return s.get(Project, run.project_id).status.value in ("COMPLETED", "FAILED", "CANCELLED")

        wait_until(finished, "the project to finish", RUN_TIMEOUT_S, 0.5)
        with session_scope(settings.database_url) as s:
            assert s.get(Project, run.project_id).status.value == "COMPLETED"
            rows = s.scalars(select(TaskRun).where(TaskRun.project_id == run.project_id))
            run.runs = {r.task_id: (r.task_name, r.worker, r.queue) for r in rows}
        yield run
    finally:
        stop_watch.set()
        if watcher is not None:
            watcher.join(5)
        stop_workers(workers)
        stop_flower(flower)


def flower_tasks(run: FlowerRun) -> dict[str, dict]:
    """Flower's task list once every task of the run has reached SUCCESS there (events arrive asynchronously)."""

    def all_succeeded() -> dict[str, dict] | None:
        tasks = get_json(f"{run.base}/api/tasks")
        done = all(tasks.get(task_id, {}).get("state") == "SUCCESS" for task_id in run.runs)
        return tasks if done else None

    return wait_until(all_succeeded, "Flower to show every task of the chain as SUCCESS", 30)


def test_the_chain_has_three_tasks_per_scene_and_a_finalize(flower_run: FlowerRun) -> None:
    names = sorted(name for name, _, _ in flower_run.runs.values())
    assert names == sorted([GEN, CV, REG] * 2 + [FIN])


def test_flower_lists_every_task_of_the_chain_as_succeeded_under_its_name(flower_run: FlowerRun) -> None:
    tasks = flower_tasks(flower_run)
    for task_id, (name, _, _) in flower_run.runs.items():
        assert tasks[task_id]["name"] == name
        assert tasks[task_id]["state"] == "SUCCESS"


def test_flower_task_info_names_the_worker_and_queue_the_task_run_log_recorded(flower_run: FlowerRun) -> None:
    flower_tasks(flower_run)
    for task_id, (name, worker, queue) in flower_run.runs.items():
        info = get_json(f"{flower_run.base}/api/task/info/{task_id}")
        assert (info["name"], info["state"], info["worker"]) == (name, "SUCCESS", worker)
        # routing_key comes from the task-sent event: the client and the workers publishing the chain send it.
        assert info["routing_key"] == queue
    analyses = [worker for name, worker, _ in flower_run.runs.values() if name == CV]
    assert analyses and all(w.startswith("cv-cpu0@") for w in analyses)


def test_flower_workers_api_shows_each_worker_with_the_queues_it_consumes(flower_run: FlowerRun) -> None:
    workers = get_json(f"{flower_run.base}/api/workers?refresh=1")
    queues = {name.split("@")[0]: sorted(q["name"] for q in info["active_queues"]) for name, info in workers.items()}
    assert queues["gen"] == sorted([GENERATION_QUEUE, REGISTRY_QUEUE])
    assert queues["cv-cpu0"] == ["cv"]


def test_flower_showed_a_running_analysis_as_progress_with_its_stage(flower_run: FlowerRun) -> None:
    shown = {name: json.loads(result) for name, result in flower_run.seen_in_progress.values()}
    assert CV in shown, f"no analysis seen in PROGRESS: {flower_run.seen_in_progress}"
    from gpu_worker.analysis import PROGRESS_STEPS

    assert shown[CV]["stage"] == "analyze" and shown[CV]["total"] == len(PROGRESS_STEPS)
    assert shown[CV]["step"] in ("start", *PROGRESS_STEPS) and 0 <= shown[CV]["done"] <= len(PROGRESS_STEPS)


def test_the_api_refuses_requests_without_valid_credentials(flower_run: FlowerRun) -> None:
    task_id = next(iter(flower_run.runs))
    for path in ("/api/tasks", "/api/workers", f"/api/task/info/{task_id}"):
        assert get(flower_run.base + path, auth=None)[0] == 401, path
        assert get(flower_run.base + path, auth=(USER, "wrong"))[0] == 401, path


def event_counts(base: str) -> dict[tuple[str, str, str], float]:
    """flower_events_total from /metrics (no credentials): (worker, event type, task name) -> count."""
    from prometheus_client.parser import text_string_to_metric_families

    status, body = get(f"{base}/metrics", auth=None)
    assert status == 200
    counts = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == "flower_events_total":
                counts[(sample.labels["worker"], sample.labels["type"], sample.labels["task"])] = sample.value
    return counts


def test_metrics_answer_without_credentials_and_count_each_tasks_events(flower_run: FlowerRun) -> None:
    flower_tasks(flower_run)
    counts = event_counts(flower_run.base)
    for name, worker, _ in flower_run.runs.values():
        runs_here = sum(1 for n, w, _ in flower_run.runs.values() if (n, w) == (name, worker))
        assert counts[(worker, "task-succeeded", name)] == runs_here
    # Each analysis reported its start and every step (policy.PipelineTask.progress) and Flower received them.
    from gpu_worker.analysis import PROGRESS_STEPS

    cv_worker = next(worker for name, worker, _ in flower_run.runs.values() if name == CV)
    assert counts[(cv_worker, "task-progress", CV)] == 2 * (1 + len(PROGRESS_STEPS))


def test_a_progress_event_shows_as_state_progress_with_its_fields_as_result_until_success() -> None:
    from flower.events import EventsState

    state = EventsState(max_tasks_in_memory=10)
    common = {"uuid": "t-1", "hostname": "cv-cpu0@host", "clock": 1, "utcoffset": 0, "pid": 1}
    state.event({**common, "type": "task-received", "name": CV, "timestamp": 1.0, "local_received": 1.0})
    state.event({**common, "type": "task-started", "timestamp": 2.0, "local_received": 2.0})
    progress = {"type": "task-progress", "stage": "analyze", "done": 0, "total": 1}
    state.event(progress_as_result({**common, **progress, "timestamp": 3.0, "local_received": 3.0}))
    shown = state.tasks["t-1"].as_dict()
    assert shown["state"] == "PROGRESS"
    assert json.loads(shown["result"]) == {"stage": "analyze", "done": 0, "total": 1}
    succeeded = {"type": "task-succeeded", "result": "{'ok': True}", "runtime": 1.5, "timestamp": 4.0}
    state.event({**common, **succeeded, "local_received": 4.0})
    assert (state.tasks["t-1"].state, state.tasks["t-1"].result) == ("SUCCESS", "{'ok': True}")


def test_flower_refuses_the_embedded_broker_and_a_missing_password(tmp_path: Path) -> None:
    embedded = make_settings(tmp_path / "embedded")
    # Refused before any connection is made, so no Redis needs to listen at this address.
    nowhere = "redis://127.0.0.1:9/0"
    on_redis = make_settings(tmp_path / "redis", broker_url=nowhere, result_backend=nowhere)
    for settings, extra, expected in (
        (embedded, ["--basic-auth", "ops:pw"], "Flower needs the Redis broker"),
        (on_redis, [], "no basic auth configured"),
        (on_redis, ["--basic-auth", "ops"], "user:password"),
    ):
        env = {**os.environ, **settings.as_env()}
        argv = [sys.executable, "-m", "vidpipe_tasks.cli", "flower", "--port", str(free_port()), *extra]
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, done.stderr
        assert expected in done.stderr
