"""`vidpipe flower` on Redis: tasks with project, scene and progress, viewer logins, metrics, persistent state."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from flower.urls import handlers as flower_routes
from sqlalchemy import select

from gpu_worker.service import NATIVE_STALL_ENV
from tests.conftest import DATA, make_settings, production_settings
from tests.helpers import wait_until
from tests.servers import free_port
from vidpipe_tasks.celery_app import create_app
from vidpipe_tasks.cli.workers import start_cv_launcher, start_worker, stop_workers, wait_ready
from vidpipe_tasks.db.models import Project, TaskRun
from vidpipe_tasks.db.session import session_scope
from vidpipe_tasks.settings import GENERATION_QUEUE, REGISTRY_QUEUE, Settings
from vidpipe_tasks.storyboard import load_storyboard
from vidpipe_tasks.workflow import create_project, enqueue_project

pytestmark = pytest.mark.integration

ADMIN = ("ops", "s3cret-pw")
VIEWER = ("watcher", "look-only-pw")
USER, PASSWORD = ADMIN
GEN, CV, REG, FIN = (
    "vidpipe.generate_clip",
    "vidpipe.analyze_clip",
    "vidpipe.register_entities",
    "vidpipe.finalize_project",
)
RUN_TIMEOUT_S = 300
#: Seconds each analysis spends in a native call, so Flower can be watched with the CV worker busy.
ANALYSIS_STALL_S = 3


def request(
    url: str, auth: tuple[str, str] | None = ADMIN, method: str = "GET", data: bytes | None = None
) -> tuple[int, bytes]:
    """An HTTP request with optional basic auth; returns (status, body) for errors too."""
    req = urllib.request.Request(url, method=method, data=data)
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(req, timeout=15) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:  # not listening yet (URLError is an OSError)
        return 0, b""


def get(url: str, auth: tuple[str, str] | None = ADMIN) -> tuple[int, bytes]:
    return request(url, auth)


def post(url: str, auth: tuple[str, str] | None, data: bytes = b"") -> tuple[int, bytes]:
    return request(url, auth, "POST", data)


def get_json(url: str, auth: tuple[str, str] = ADMIN) -> dict:
    status, body = get(url, auth)
    assert status == 200, (url, status, body[:300])
    return json.loads(body)


@dataclass
class FlowerRun:
    settings: Settings
    base: str
    project_id: int
    logs: Path
    #: The project's task-run log: task id -> (task name, worker, queue, scene index).
    runs: dict[str, tuple[str, str, str, int | None]]
    #: What /api/tasks?state=STARTED showed while the project ran: task id -> the task as Flower listed it.
    seen_started: dict[str, dict] = field(default_factory=dict)
    #: Active task ids of the CV worker, as Flower's workers API listed them while it analysed.
    seen_cv_active: set[str] = field(default_factory=set)
    #: What the result backend held for those STARTED tasks meanwhile: task id -> (state, meta).
    seen_in_backend: dict[str, tuple[str, object]] = field(default_factory=dict)
    flower_db: Path | None = None
    #: The Flower process serving `base` (a test may restart it).
    process: subprocess.Popen | None = None


def start_flower(settings: Settings, port: int, logfile: Path, flower_db: Path) -> subprocess.Popen:
    """`vidpipe flower` as an operator runs it: the repository's config file, persistent, admin and viewer."""
    argv = [sys.executable, "-m", "vidpipe_tasks.cli", "flower", "--port", str(port)]
    argv += ["--basic-auth", ":".join(ADMIN), "--viewer-auth", ":".join(VIEWER)]
    # Options of the config file (deploy/flower/flowerconfig.py) that the environment drives.
    env = {**os.environ, **settings.as_env(), "FLOWER_PERSISTENT": "true", "FLOWER_DB": str(flower_db)}
    env.pop("FLOWER_CONF", None)
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


def wait_flower_up(process: subprocess.Popen, base: str, logfile: Path) -> None:
    wait_until(lambda: process.poll() is not None or get(f"{base}/healthcheck", None)[0] == 200, "Flower")
    assert process.poll() is None, logfile.read_text()


def watch(base: str, run: FlowerRun, stop: threading.Event) -> None:
    """Until `stop`: the tasks Flower lists as STARTED, what the result backend holds for them, CV's active tasks."""
    from celery.result import AsyncResult

    app = create_app(run.settings)
    while not stop.is_set():
        status, body = get(f"{base}/api/tasks?state=STARTED", VIEWER)
        if status == 200:
            started = json.loads(body)
            run.seen_started.update(started)
            for task_id in started:
                result = AsyncResult(task_id, app=app)
                state, meta = result.state, result.info
                if state == "STARTED":
                    run.seen_in_backend[task_id] = (state, meta)
        # Flower inspects a worker's active tasks only when asked for that worker by name.
        cv = flower_workers_alive(base).get("cv-cpu0")
        status, body = get(f"{base}/api/workers?refresh=1&workername={urllib.parse.quote(cv or '-')}", VIEWER)
        if cv and status == 200:
            run.seen_cv_active.update(t["id"] for t in json.loads(body)[cv].get("active") or [])
        stop.wait(0.2)


def flower_workers_alive(base: str) -> dict[str, str]:
    """Node prefix -> full name of each worker Flower has online."""
    status, body = get(f"{base}/api/workers?status=1")
    alive = json.loads(body) if status == 200 else {}
    return {name.split("@")[0]: name for name, up in alive.items() if up}


@pytest.fixture(scope="module")
def flower_run(tmp_path_factory: pytest.TempPathFactory, redis_server, postgres_server) -> Iterator[FlowerRun]:
    """Flower first, then a gen+registry worker and the CV launcher (analyses stall 3 s); a two-scene project."""
    home = tmp_path_factory.mktemp("flower") / "work"
    settings = production_settings(home, redis_server, postgres_server, "t_flower")
    logs = settings.home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    flower_db = settings.home / "flower-state"
    flower = start_flower(settings, port, logs / "flower.log", flower_db)
    workers = []
    stop_watch = threading.Event()
    watcher = None
    run = None
    previous_stall = os.environ.get(NATIVE_STALL_ENV)
    try:
        wait_flower_up(flower, base, logs / "flower.log")
        workers = [start_worker(settings, "gen", [GENERATION_QUEUE, REGISTRY_QUEUE], logs)]
        os.environ[NATIVE_STALL_ENV] = str(ANALYSIS_STALL_S)  # inherited by the launcher and its workers only
        workers.append(start_cv_launcher(settings, logs))
        wait_ready(workers)
        # Events are pub/sub: once Flower has seen both workers come online it is receiving, so no
        # task-sent event of the project below can be missed.
        wait_until(lambda: {"gen", "cv-cpu0"} <= set(flower_workers_alive(base)), "Flower to see both workers")
        run = FlowerRun(settings, base, 0, logs, {}, flower_db=flower_db, process=flower)
        watcher = threading.Thread(target=watch, args=(base, run, stop_watch), daemon=True)
        watcher.start()
        path = DATA / "flower_duo.yaml"
        run.project_id = create_project(settings, path, load_storyboard(path))
        enqueue_project(create_app(settings), settings, run.project_id)

        def finished() -> bool:
            assert all(w.process.poll() is None for w in workers), "a worker died"
            with session_scope(settings.database_url) as s:
                return s.get(Project, run.project_id).status.value in ("COMPLETED", "FAILED", "CANCELLED")

        wait_until(finished, "the project to finish", RUN_TIMEOUT_S, 0.5)
        stop_watch.set()
        watcher.join(20)
        with session_scope(settings.database_url) as s:
            assert s.get(Project, run.project_id).status.value == "COMPLETED"
            rows = s.scalars(select(TaskRun).where(TaskRun.project_id == run.project_id))
            run.runs = {r.task_id: (r.task_name, r.worker, r.queue, r.scene_index) for r in rows}
        yield run
    finally:
        if previous_stall is None:
            os.environ.pop(NATIVE_STALL_ENV, None)
        else:
            os.environ[NATIVE_STALL_ENV] = previous_stall
        stop_watch.set()
        if watcher is not None:
            watcher.join(20)
        stop_workers(workers)
        stop_flower(run.process if run is not None and run.process is not None else flower)


def flower_tasks(run: FlowerRun) -> dict[str, dict]:
    """Flower's task list once every task of the run has reached SUCCESS there (events arrive asynchronously)."""

    def all_succeeded() -> dict[str, dict] | None:
        tasks = get_json(f"{run.base}/api/tasks")
        done = all(tasks.get(task_id, {}).get("state") == "SUCCESS" for task_id in run.runs)
        return tasks if done else None

    return wait_until(all_succeeded, "Flower to show every task of the chain as SUCCESS", 30)


def test_the_chain_has_three_tasks_per_scene_and_a_finalize(flower_run: FlowerRun) -> None:
    names = sorted(name for name, *_ in flower_run.runs.values())
    assert names == sorted([GEN, CV, REG] * 2 + [FIN])


def test_flower_lists_every_task_of_the_chain_with_its_project_scene_and_stage(flower_run: FlowerRun) -> None:
    tasks = flower_tasks(flower_run)
    stages = {GEN: "generation", CV: "analysis", REG: "registry", FIN: "finalize"}
    for task_id, (name, _, _, scene) in flower_run.runs.items():
        shown = tasks[task_id]
        assert (shown["name"], shown["state"]) == (name, "SUCCESS")
        assert (shown["project"], shown["scene"], shown["stage"]) == (flower_run.project_id, scene, stages[name])
        assert shown["progress"] is None  # a finished task shows its result, not its last progress
    assert sorted(scene for name, *_, scene in flower_run.runs.values() if name == CV) == [1, 2]


def test_flower_task_info_names_the_worker_and_queue_the_task_run_log_recorded(flower_run: FlowerRun) -> None:
    flower_tasks(flower_run)
    for task_id, (name, worker, queue, scene) in flower_run.runs.items():
        info = get_json(f"{flower_run.base}/api/task/info/{task_id}", VIEWER)
        assert (info["name"], info["state"], info["worker"]) == (name, "SUCCESS", worker)
        assert (info["project"], info["scene"]) == (flower_run.project_id, scene)
        # routing_key comes from the task-sent event: the client and the workers publishing the chain send it.
        assert info["routing_key"] == queue
    analyses = [worker for name, worker, *_ in flower_run.runs.values() if name == CV]
    assert analyses and all(w.startswith("cv-cpu0@") for w in analyses)


def test_flower_workers_api_shows_each_worker_with_the_queues_it_consumes(flower_run: FlowerRun) -> None:
    workers = get_json(f"{flower_run.base}/api/workers?refresh=1")
    queues = {name.split("@")[0]: sorted(q["name"] for q in info["active_queues"]) for name, info in workers.items()}
    assert queues["gen"] == sorted([GENERATION_QUEUE, REGISTRY_QUEUE])
    assert queues["cv-cpu0"] == ["cv"]


def test_a_running_analysis_is_listed_as_started_with_its_progress(flower_run: FlowerRun) -> None:
    analyses = {i for i, (name, *_) in flower_run.runs.items() if name == CV}
    seen = {i: t for i, t in flower_run.seen_started.items() if i in analyses}
    assert seen, f"no analysis seen as STARTED: {sorted(flower_run.seen_started)}"
    from gpu_worker.analysis import PROGRESS_STEPS

    for task_id, task in seen.items():
        assert (task["state"], task["project"], task["scene"]) == (
            "STARTED",
            flower_run.project_id,
            flower_run.runs[task_id][3],
        )
        progress = task["progress"]
        assert progress["stage"] == "analyze" and progress["total"] == len(PROGRESS_STEPS)
        assert progress["step"] in ("start", *PROGRESS_STEPS) and 0 <= progress["done"] <= len(PROGRESS_STEPS)


def test_the_busy_cv_worker_was_online_with_its_analysis_active(flower_run: FlowerRun) -> None:
    analyses = {i for i, (name, *_) in flower_run.runs.items() if name == CV}
    assert flower_run.seen_cv_active & analyses, (
        f"Flower never listed an analysis as active: {flower_run.seen_cv_active}"
    )
    assert "cv-cpu0" in flower_workers_alive(flower_run.base)


def test_the_tasks_page_has_project_scene_stage_and_progress_columns(flower_run: FlowerRun) -> None:
    status, body = get(f"{flower_run.base}/tasks", VIEWER)
    assert status == 200
    headers = re.findall(r'<th data-column="(\w+)">', body.decode())
    assert headers[:6] == ["name", "project", "scene", "stage", "state", "progress"]
    # The table's rows come from a POST the page sends; a viewer may send it (it only reads).
    flower_tasks(flower_run)
    form = {"draw": 1, "start": 0, "length": 50, "order[0][column]": 0, "order[0][dir]": "desc"}
    form.update({f"columns[{i}][data]": name for i, name in enumerate(headers)})
    status, body = post(f"{flower_run.base}/tasks/datatable", VIEWER, urllib.parse.urlencode(form).encode())
    assert status == 200, body[:300]
    rows = {row["uuid"]: row for row in json.loads(body)["data"]}
    for task_id, (_name, _, _, scene) in flower_run.runs.items():
        assert (rows[task_id]["project"], rows[task_id]["scene"]) == (flower_run.project_id, scene)


def _control_routes() -> list[str]:
    """Every route of Flower with a POST handler, but the tasks table's query and the login: the control actions."""
    from flower.views.tasks import TasksDataTable
    from tornado.web import RequestHandler

    found = []
    for route in flower_routes:
        pattern, handler = (route.regex.pattern, route.handler_class) if hasattr(route, "regex") else route[:2]
        if handler.post is RequestHandler.post or handler is TasksDataTable:
            continue
        if pattern.startswith("/api/"):
            found.append(pattern.rstrip("$"))
    return found


def test_every_control_route_of_flower_is_covered_below() -> None:
    expected = {
        "/api/worker/shutdown/(.+)",
        "/api/worker/pool/restart/(.+)",
        "/api/worker/pool/grow/(.+)",
        "/api/worker/pool/shrink/(.+)",
        "/api/worker/pool/autoscale/(.+)",
        "/api/worker/queue/add-consumer/(.+)",
        "/api/worker/queue/cancel-consumer/(.+)",
        "/api/task/apply/(.+)",
        "/api/task/async-apply/(.+)",
        "/api/task/send-task/(.+)",
        "/api/task/abort/(.+)",
        "/api/task/timeout/(.+)",
        "/api/task/rate-limit/(.+)",
        "/api/task/revoke/(.+)",
    }
    assert set(_control_routes()) == expected


def test_a_viewer_is_refused_every_control_action_and_the_workers_stay(flower_run: FlowerRun) -> None:
    alive = flower_workers_alive(flower_run.base)
    some_task = next(iter(flower_run.runs))
    targets = {"worker": alive["cv-cpu0"], "task": some_task}
    for pattern in _control_routes():
        target = targets["worker"] if pattern.startswith("/api/worker") else some_task
        if pattern.startswith(("/api/task/apply", "/api/task/async-apply", "/api/task/send-task")):
            target = FIN
        url = flower_run.base + pattern.replace("(.+)", urllib.parse.quote(target))
        query = "?n=1&max=2&min=1&queue=cv&taskname=vidpipe.analyze_clip&ratelimit=1&soft=1&hard=2&terminate=true"
        status, body = post(url + query, VIEWER, b"{}")
        assert status == 403, (pattern, status, body[:200])
        assert b"read-only" in body
    # Nothing happened: both workers are still online and the task is not revoked.
    wait_until(lambda: {"gen", "cv-cpu0"} <= set(flower_workers_alive(flower_run.base)), "the workers online", 10)
    assert get_json(f"{flower_run.base}/api/task/info/{some_task}", VIEWER)["revoked"] is None


def test_an_admin_may_revoke_and_grow_where_a_viewer_may_not(flower_run: FlowerRun) -> None:
    alive = flower_workers_alive(flower_run.base)
    finished = next(iter(flower_run.runs))
    url = f"{flower_run.base}/api/task/revoke/{finished}"
    assert post(url, VIEWER)[0] == 403
    status, body = post(url, ADMIN)
    assert status == 200 and finished in json.loads(body)["message"]
    # The CV worker's prefork pool grows by one child for the admin, and shrinks back; never for the viewer.
    cv = urllib.parse.quote(alive["cv-cpu0"])
    for action in ("grow", "shrink"):
        url = f"{flower_run.base}/api/worker/pool/{action}/{cv}?n=1"
        assert post(url, VIEWER)[0] == 403
        status, body = post(url, ADMIN)
        assert status == 200, (action, body[:200])
        assert json.loads(body)["message"].lower().startswith(action[:4])


def test_the_worker_page_offers_controls_to_the_admin_only(flower_run: FlowerRun) -> None:
    page = f"{flower_run.base}/worker/{urllib.parse.quote(flower_workers_alive(flower_run.base)['cv-cpu0'])}"
    admin, viewer = get(page, ADMIN), get(page, VIEWER)
    assert admin[0] == viewer[0] == 200
    assert b'id="worker-shutdown"' in admin[1] and b'id="worker-pool-grow"' in admin[1]
    assert b'id="worker-shutdown"' not in viewer[1] and b'id="worker-pool-grow"' not in viewer[1]


def test_the_api_refuses_requests_without_valid_credentials(flower_run: FlowerRun) -> None:
    task_id = next(iter(flower_run.runs))
    for path in ("/api/tasks", "/api/workers", f"/api/task/info/{task_id}", "/metrics"):
        assert get(flower_run.base + path, auth=None)[0] == 401, path
        assert get(flower_run.base + path, auth=(USER, "wrong"))[0] == 401, path
        assert get(flower_run.base + path, auth=(VIEWER[0], PASSWORD))[0] == 401, path


def event_counts(base: str) -> dict[tuple[str, str, str], float]:
    """flower_events_total from /metrics, scraped with a viewer's login: (worker, event type, task) -> count."""
    from prometheus_client.parser import text_string_to_metric_families

    status, body = get(f"{base}/metrics", VIEWER)
    assert status == 200
    counts = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == "flower_events_total":
                counts[(sample.labels["worker"], sample.labels["type"], sample.labels["task"])] = sample.value
    return counts


def test_metrics_need_a_login_and_count_each_tasks_events(flower_run: FlowerRun) -> None:
    flower_tasks(flower_run)
    counts = event_counts(flower_run.base)
    for name, worker, *_ in flower_run.runs.values():
        runs_here = sum(1 for n, w, *_ in flower_run.runs.values() if (n, w) == (name, worker))
        assert counts[(worker, "task-succeeded", name)] == runs_here
    # Each analysis reported its start and every step (policy.PipelineTask.progress) and Flower received them.
    from gpu_worker.analysis import PROGRESS_STEPS

    cv_worker = next(worker for name, worker, *_ in flower_run.runs.values() if name == CV)
    assert counts[(cv_worker, "task-progress", CV)] == 2 * (1 + len(PROGRESS_STEPS))


def test_the_result_backend_held_a_running_analysis_as_started_with_its_progress(flower_run: FlowerRun) -> None:
    analyses = {i for i, (name, *_) in flower_run.runs.items() if name == CV}
    held = {i: meta for i, (state, meta) in flower_run.seen_in_backend.items() if i in analyses}
    assert held, "the backend never held a running analysis as STARTED"
    for meta in held.values():
        assert meta["stage"] == "analyze" and meta["hostname"].startswith("cv-cpu0@") and meta["pid"] > 0


def test_the_exporter_on_postgresql_times_every_finished_run_of_the_chain(flower_run: FlowerRun) -> None:
    from tests.integration.test_exporter import exporter, scrape, series

    with exporter(flower_run.settings, flower_run.logs / "exporter.log", "--sources", "database,broker") as url:
        found = scrape(url)
    counts = {
        (dict(k)["task"], dict(k)["outcome"]): v
        for k, v in series(found, "vidpipe_task_duration_seconds_count").items()
    }
    with session_scope(flower_run.settings.database_url) as s:
        rows = s.execute(select(TaskRun.task_name, TaskRun.outcome).where(TaskRun.project_id == flower_run.project_id))
        expected = Counter((name.removeprefix("vidpipe."), outcome) for name, outcome in rows)
    assert counts == expected and sum(expected.values()) == len(flower_run.runs)
    # Each analysis was held 3 s in a native call: PostgreSQL's interval arithmetic sees it.
    for (task, outcome), count in expected.items():
        if task == "analyze_clip":
            labels = (("le", "2.5"), ("outcome", outcome), ("task", task))
            assert found[("vidpipe_task_duration_seconds_bucket", labels)] == 0
            assert found[("vidpipe_task_duration_seconds_sum", labels[1:])] >= ANALYSIS_STALL_S * count


def test_a_restarted_flower_lists_the_chain_from_the_state_it_saved(flower_run: FlowerRun) -> None:
    # Last of this module's tests on `flower_run` (pytest keeps file order): it restarts the module's Flower.
    # `persistent` comes from the config file (FLOWER_PERSISTENT=true), so the state is saved at stop and loaded.
    flower_tasks(flower_run)
    assert stop_flower(flower_run.process) == 0
    assert list(flower_run.flower_db.parent.glob(flower_run.flower_db.name + "*")), "no state saved at stop"
    port = int(flower_run.base.rsplit(":", 1)[1])
    log = flower_run.logs / "flower-restarted.log"
    flower_run.process = start_flower(flower_run.settings, port, log, flower_run.flower_db)
    wait_flower_up(flower_run.process, flower_run.base, log)
    tasks = get_json(f"{flower_run.base}/api/tasks", VIEWER)
    for task_id, (name, _, _, scene) in flower_run.runs.items():
        assert (tasks[task_id]["name"], tasks[task_id]["state"]) == (name, "SUCCESS")
        assert (tasks[task_id]["project"], tasks[task_id]["scene"]) == (flower_run.project_id, scene)


def test_a_progress_event_keeps_the_task_started_with_its_ids_until_success() -> None:
    from vidpipe_tasks.flower_app import VidpipeEventsState

    state = VidpipeEventsState(max_tasks_in_memory=10)
    common = {"uuid": "t-1", "hostname": "cv-cpu0@host", "clock": 1, "utcoffset": 0, "pid": 1}
    args = "({'project_id': 7, 'scene_index': 3, 'epoch': 1},)"
    state.event({**common, "type": "task-received", "name": CV, "args": args, "timestamp": 1.0, "local_received": 1.0})
    state.event({**common, "type": "task-started", "timestamp": 2.0, "local_received": 2.0})
    progress = {"type": "task-progress", "stage": "analyze", "done": 1, "total": 4, "step": "decode"}
    state.event({**common, **progress, "timestamp": 3.0, "local_received": 3.0})
    shown = state.tasks["t-1"].as_dict()
    assert (shown["state"], shown["started"]) == ("STARTED", 2.0)
    assert (shown["project"], shown["scene"], shown["stage"]) == (7, 3, "analysis")
    assert shown["progress"] == {"stage": "analyze", "done": 1, "total": 4, "step": "decode"}
    succeeded = {"type": "task-succeeded", "result": "{'ok': True}", "runtime": 1.5, "timestamp": 4.0}
    state.event({**common, **succeeded, "local_received": 4.0})
    task = state.tasks["t-1"]
    assert (task.state, task.result, task.progress, task.project) == ("SUCCESS", "{'ok': True}", None, 7)


def test_flower_refuses_the_embedded_broker_and_a_missing_password(tmp_path: Path) -> None:
    embedded = make_settings(tmp_path / "embedded")
    # Refused before any connection is made, so no Redis needs to listen at this address.
    nowhere = "redis://127.0.0.1:9/0"
    on_redis = make_settings(tmp_path / "redis", broker_url=nowhere, result_backend=nowhere)
    for settings, extra, expected in (
        (embedded, ["--basic-auth", "ops:pw"], "Flower needs the Redis broker"),
        (on_redis, [], "VIDPIPE_FLOWER_BASIC_AUTH must be 'user:password'"),
        (on_redis, ["--basic-auth", "ops"], "user:password"),
        (on_redis, ["--basic-auth", "ops:pw", "--viewer-auth", "ops:pw"], "both admin and viewer"),
        (on_redis, ["--basic-auth", "ops:pw", "--conf", str(tmp_path / "none.py")], "not found"),
    ):
        env = {**os.environ, **settings.as_env()}
        argv = [sys.executable, "-m", "vidpipe_tasks.cli", "flower", "--port", str(free_port()), *extra]
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, done.stderr
        assert expected in done.stderr
