"""Operations on Redis and PostgreSQL with real workers: batch submit, queue depths, priority, wait, cancel, resume."""

from __future__ import annotations

import json
import os
import re
import signal
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import func, select

from tests.conftest import DATA, production_settings, redis_db_pair
from tests.helpers import run_vidpipe as vidpipe
from tests.helpers import wait_until
from vidpipe_tasks.celery_app import create_app
from vidpipe_tasks.cli.queues import queues_report, render_queues
from vidpipe_tasks.cli.workers import start_worker, stop_workers, wait_ready
from vidpipe_tasks.db.models import Asset, AssetAppearance, Clip, Project, TaskRun
from vidpipe_tasks.db.session import session_scope
from vidpipe_tasks.inputs import load_inputs
from vidpipe_tasks.queues import project_messages
from vidpipe_tasks.settings import CV_QUEUE, GENERATION_QUEUE, REGISTRY_QUEUE, Settings
from vidpipe_tasks.workflow import create_project

SEP = "\x06\x16"  # kombu's separator between a queue name and its priority step


@pytest.fixture(scope="module")
def redis_dbs(redis_server) -> tuple[int, int]:
    """One broker db and one result db for this module (flushed before each test), so that the session's 15
    Redis databases stay available to other modules."""
    return redis_db_pair()


@pytest.fixture
def ops(tmp_path: Path, redis_server, postgres_server, redis_dbs, request) -> Settings:
    """Settings on empty Redis broker and result databases and a fresh migrated PostgreSQL database."""
    for db in redis_dbs:
        redis.Redis.from_url(redis_server.url(db)).flushdb()
    name = re.sub(r"[^a-z0-9_]", "_", request.node.name.lower())[:50]
    return production_settings(tmp_path / "work", redis_server, postgres_server, f"ops_{name}", redis_dbs)


def submit(settings: Settings, *args: str) -> list[int]:
    result = vidpipe(settings, "submit", *args)
    assert result.returncode == 0, result.stderr
    return [int(line) for line in result.stdout.split()]


def queues_json(settings: Settings, *args: str) -> dict[str, Any]:
    result = vidpipe(settings, "queues", "--json", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def depths(report: dict[str, Any]) -> dict[str, int]:
    return {q["queue"]: q["depth"] for q in report["queues"]}


def runs_of(settings: Settings, project_id: int) -> list[TaskRun]:
    with session_scope(settings.database_url) as s:
        stmt = select(TaskRun).where(TaskRun.project_id == project_id).order_by(TaskRun.started_at)
        return list(s.scalars(stmt))


def running_generation(settings: Settings, project_id: int, from_scene: int = 1) -> TaskRun | None:
    return next(
        (
            r
            for r in runs_of(settings, project_id)
            if r.task_name == "vidpipe.generate_clip" and r.outcome == "running" and r.scene_index >= from_scene
        ),
        None,
    )


def broker_is_drained(settings: Settings) -> bool:
    """Nothing waiting in any queue list and nothing delivered but unacknowledged."""
    report = queues_report(create_app(settings), settings, workers=False)
    return all(q["depth"] == 0 and q["unacked"] == 0 for q in report["queues"])


def test_one_malformed_file_among_good_ones_exits_2_and_nothing_reaches_redis_or_postgres(
    ops: Settings, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("title: Bad\nscenes:\n  - description: A ghost appears.\n    characters: [ghost]\n")
    result = vidpipe(ops, "submit", str(DATA / "ops_short.yaml"), str(DATA / "ops_batch.jsonl"), str(bad))
    assert result.returncode == 2
    assert f"{bad}: scene 1.characters" in result.stderr and "nothing was queued" in result.stderr
    assert redis.Redis.from_url(ops.broker_url).dbsize() == 0
    with session_scope(ops.database_url) as s:
        assert s.scalar(select(func.count()).select_from(Project)) == 0


def test_queue_depth_counts_priority_sub_lists_and_a_worker_serves_priority_0_first(ops: Settings) -> None:
    low = submit(ops, str(DATA / "ops_batch.jsonl"), "--priority", "6")
    (urgent,) = submit(ops, str(DATA / "ops_short.yaml"), "--priority", "0")
    # Given three projects queued with no worker running
    before = queues_json(ops)
    generation = next(q for q in before["queues"] if q["queue"] == GENERATION_QUEUE)
    assert depths(before) == {"generation": 3, "cv": 0, "registry": 0}
    assert {x["priorities"]: x["depth"] for x in generation["lists"]} == {"0-2": 1, "3-5": 0, "6-8": 2, "9": 0}
    broker = redis.Redis.from_url(ops.broker_url)
    assert (broker.llen(GENERATION_QUEUE), broker.llen(f"{GENERATION_QUEUE}{SEP}6")) == (1, 2)
    assert before["workers"] == []
    refused = vidpipe(ops, "resume", str(urgent))
    assert refused.returncode == 1 and "not stalled" in refused.stderr

    # When a worker starts (a threads pool answers inspect while it runs a task)
    app = create_app(ops)
    logs = ops.home / "logs"
    worker = start_worker(ops, "gen", [GENERATION_QUEUE, REGISTRY_QUEUE], logs, pool="threads")
    try:
        wait_ready([worker])
        busy = wait_until(
            lambda: [w for w in queues_report(app, ops, timeout=0.3)["workers"] if w["active"]], "an active task"
        )
        assert busy[0]["worker"].startswith("gen@")
        assert {t["queue"] for t in busy[0]["active"]} <= {GENERATION_QUEUE, REGISTRY_QUEUE}
        waited = vidpipe(ops, "wait", *map(str, [*low, urgent]), "--timeout", "180")
        after = queues_json(ops, "--timeout", "0.5")
    finally:
        stop_workers([worker])

    # Then all complete; the priority-0 project ran first, and the others kept priority 6 for their later scenes
    assert waited.returncode == 0, waited.stdout + waited.stderr
    assert waited.stdout.count("2/2 COMPLETED") >= 3
    with session_scope(ops.database_url) as s:
        stmt = select(TaskRun).where(TaskRun.task_name == "vidpipe.generate_clip").order_by(TaskRun.started_at)
        order = [(r.project_id, r.scene_index) for r in s.scalars(stmt)]
    one, two = low
    assert order == [(urgent, 1), (urgent, 2), (one, 1), (two, 1), (one, 2), (two, 2)]
    assert depths(after) == {"generation": 0, "cv": 0, "registry": 0}
    assert [q["unacked"] for q in after["queues"]] == [0, 0, 0]
    assert [(w["active"], w["reserved"]) for w in after["workers"]] == [([], [])]


def test_wait_exits_0_when_completed_1_when_failed_or_cancelled_and_124_on_timeout(ops: Settings) -> None:
    (completed,) = submit(ops, str(DATA / "ops_short.yaml"))
    (board,) = load_inputs([DATA / "ops_short.yaml"])
    failed = create_project(ops, board.path, board.board)  # stored, never queued
    (cancelled,) = submit(ops, str(DATA / "ops_short.yaml"))
    assert vidpipe(ops, "cancel", str(cancelled)).returncode == 0
    assert vidpipe(ops, "wait", str(failed), "--timeout", "2").returncode == 124
    worker = start_worker(ops, "gen", [GENERATION_QUEUE, REGISTRY_QUEUE], ops.home / "logs")
    try:
        wait_ready([worker])
        # Finalising a project whose scenes never ran marks it FAILED, as a chain that lost work would.
        create_app(ops).signature("vidpipe.finalize_project", args=({"project_id": failed},)).apply_async()
        results = {p: vidpipe(ops, "wait", str(p), "--timeout", "120") for p in (completed, failed, cancelled)}
        together = vidpipe(ops, "wait", str(completed), str(failed), str(cancelled), "--timeout", "30")
    finally:
        stop_workers([worker])
    assert results[completed].returncode == 0 and "2/2 COMPLETED" in results[completed].stdout
    assert results[failed].returncode == 1 and "FAILED" in results[failed].stdout
    assert results[cancelled].returncode == 1 and "CANCELLED" in results[cancelled].stdout
    assert together.returncode == 1
    # The worker started after the cancel never heard the revoke: the task stopped itself when taken.
    assert [r.outcome for r in runs_of(ops, cancelled)] == ["cancelled"]


def test_cancel_revokes_the_waiting_and_later_tasks_so_no_task_starts_after_it(ops: Settings) -> None:
    app = create_app(ops)
    logs = ops.home / "logs"
    # A threads pool reads control messages while it runs a task, so the revoke lands before its next task.
    worker = start_worker(ops, "gen", [GENERATION_QUEUE, REGISTRY_QUEUE], logs, pool="threads")
    try:
        wait_ready([worker])
        (running,) = submit(ops, str(DATA / "ops_long.yaml"))
        (waiting,) = submit(ops, str(DATA / "ops_short.yaml"), "--priority", "9")  # behind every scene of the first
        wait_until(lambda: running_generation(ops, running), "the first scene to start rendering", step=0.02)
        (queued,) = project_messages(app, ops, waiting)
        (held,) = project_messages(app, ops, running)
        # When both are cancelled while the first renders its first scene and the second waits in the queue
        result = vidpipe(ops, "cancel", str(running), str(waiting))
        cancelled_at = datetime.now(UTC)
        assert result.returncode == 0, result.stderr
        wait_until(lambda: broker_is_drained(ops), "the worker to finish its scene and drop the revoked task", 120)
        log = worker.logfile.read_text()
    finally:
        stop_workers([worker])
    running_line, waiting_line = result.stdout.splitlines()
    # Then the running task's delivery with its chain, and the waiting task with its chain, were revoked
    assert (
        f"project {running}: cancelled; revoked 4 task id(s): "
        "generate_clip scene 1 (held by a worker from generation); 3 later task(s)" in running_line
    )
    assert (
        f"project {waiting}: cancelled; revoked 3 task id(s): "
        "generate_clip scene 1 (waiting on generation); 2 later task(s)" in waiting_line
    )
    assert all(i in log for i in [*held.chain_ids, queued.task_id, *queued.chain_ids])
    # and no task started after the cancel: the waiting one was dropped unrun, the running one stopped after scene 1
    assert f"Discarding revoked task: vidpipe.generate_clip[{queued.task_id}]" in log
    assert runs_of(ops, waiting) == []
    (only,) = runs_of(ops, running)
    assert only.scene_index == 1 and only.started_at <= cancelled_at
    statuses = json.loads(vidpipe(ops, "status", str(running), str(waiting), "--json").stdout)["projects"]
    assert [p["status"] for p in statuses] == ["CANCELLED", "CANCELLED"]


def test_resume_after_a_killed_worker_completes_the_project_without_duplicate_clips_or_assets(ops: Settings) -> None:
    (project,) = submit(ops, str(DATA / "ops_resume.yaml"))
    app = create_app(ops)
    logs = ops.home / "logs"
    gen = start_worker(ops, "gen", [GENERATION_QUEUE, REGISTRY_QUEUE], logs)
    cv = start_worker(ops, "cv", [CV_QUEUE], logs)
    workers = [gen, cv]
    try:
        wait_ready(workers)
        # Given the generation worker killed while it renders a later scene
        lost = wait_until(lambda: running_generation(ops, project, from_scene=2), "scene 2 to render", 180, 0.02)
        os.killpg(gen.process.pid, signal.SIGKILL)
        gen.process.wait()
        (held,) = project_messages(app, ops, project)
        assert (held.task_id, held.state) == (lost.task_id, "unacked")  # Redis would hand it out again in an hour
        gen = start_worker(ops, "gen2", [GENERATION_QUEUE, REGISTRY_QUEUE], logs)
        workers = [gen, cv]
        wait_ready(workers)
        # Then the project stalls
        assert vidpipe(ops, "wait", str(project), "--timeout", "4").returncode == 124
        # When it is resumed, the dead worker's delivery is dropped and the project completes
        resumed = vidpipe(ops, "resume", str(project))
        assert resumed.returncode == 0, resumed.stderr
        assert "dropped 1 unacknowledged delivery" in resumed.stdout
        assert not redis.Redis.from_url(ops.broker_url).hexists("unacked", held.delivery_tag)
        waited = vidpipe(ops, "wait", str(project), "--timeout", "300")
        assert waited.returncode == 0, waited.stdout + waited.stderr
        assert "3/3 COMPLETED" in waited.stdout
    finally:
        stop_workers(workers)
    with session_scope(ops.database_url) as s:
        assert s.scalar(select(func.count()).select_from(Clip)) == 3
        assert sorted(s.scalars(select(Asset.tag))) == ["mara", "wren"]
        pairs = s.execute(select(AssetAppearance.asset_id, AssetAppearance.scene_index)).all()
    assert len(pairs) == len(set(pairs))
    redo = [r.outcome for r in runs_of(ops, project) if r.scene_index == lost.scene_index and "generate" in r.task_name]
    assert redo == ["abandoned", "success"]  # the killed run was closed by resume; the resumed one finished
    again = vidpipe(ops, "resume", str(project))
    assert again.returncode == 1 and "no scene left" in again.stderr


def test_a_chain_resumed_by_the_recovery_sweep_is_served_before_the_backlog(ops: Settings) -> None:
    from vidpipe_tasks.queues import broker_messages, serve_next
    from vidpipe_tasks.workflow import enqueue_project

    app = create_app(ops)
    backlog = [create_project(ops, i.path, i.board, i.source) for i in load_inputs([DATA / "ops_batch.jsonl"])]
    for project_id in backlog:
        enqueue_project(app, ops, project_id)
    (resumed,) = [create_project(ops, i.path, i.board, i.source) for i in load_inputs([DATA / "ops_short.yaml"])]
    root = enqueue_project(app, ops, resumed)
    assert serve_next(app, ops, root) is True
    broker = redis.Redis.from_url(ops.broker_url)
    _key, raw = broker.brpop([GENERATION_QUEUE], timeout=5)
    assert json.loads(raw)["headers"]["id"] == root  # taken first, though queued last
    assert sorted(m.project_id for m in broker_messages(app, ops)) == sorted(backlog)
    assert serve_next(app, ops, "no-such-task") is False


def test_beat_puts_each_recovery_sweep_ahead_of_the_registry_backlog(ops: Settings) -> None:
    from celery.beat import ScheduleEntry

    from vidpipe_tasks.beat import Scheduler

    app = create_app(ops)
    for n in range(20):  # a backlog of registry work
        app.send_task("vidpipe.finalize_project", args=({"project_id": 1000 + n},))
    scheduler = Scheduler(app, schedule_filename=str(ops.home / "beat-schedule"), lazy=True)
    entry = ScheduleEntry(name="sweep", task="vidpipe.recover_stalled", schedule=10.0, app=app)
    sent = scheduler.apply_async(entry, advance=False)
    broker = redis.Redis.from_url(ops.broker_url)
    _key, raw = broker.brpop([REGISTRY_QUEUE], timeout=5)
    assert json.loads(raw)["headers"]["id"] == sent.id and broker.llen(REGISTRY_QUEUE) == 20


def test_queues_tells_a_busy_solo_worker_from_a_stopped_one(ops: Settings) -> None:
    # Given a solo-pool worker (it answers inspect only between tasks) rendering a long project
    (project,) = submit(ops, str(DATA / "ops_long.yaml"))
    app = create_app(ops)
    worker = start_worker(ops, "solo", [GENERATION_QUEUE, REGISTRY_QUEUE], ops.home / "logs", pool="solo")
    try:
        wait_ready([worker])
        # When it is inside a task, the report says busy and names the task from the run log
        busy = wait_until(
            lambda: (r := queues_report(app, ops, timeout=0.3))["workers_state"]["verdict"] == "busy" and r,
            "a busy verdict",
            timeout=120,
        )
        (running,) = busy["workers_state"]["busy_not_answering"]
        assert running["worker"].startswith("solo@") and running["project_id"] == project
        assert running["task"] == "vidpipe.generate_clip"
        assert "workers are BUSY, not down" in render_queues(busy)
        vidpipe(ops, "cancel", str(project))
    finally:
        stop_workers([worker])
    # Then, with the worker stopped, nothing answers and nothing runs: down
    down = queues_json(ops, "--timeout", "0.3")
    assert down["workers"] == [] and down["workers_state"] == {"verdict": "down", "busy_not_answering": []}
    text = vidpipe(ops, "queues", "--timeout", "0.3").stdout
    assert "workers are DOWN" in text
