"""Durable chains without a broker: transient retries, polling, permanent failures, guards, leases, clean-up."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
import redis
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from tests.unit.test_registry import new_project
from vidpipe_tasks import media, stages
from vidpipe_tasks.celery_app import app, celery_config
from vidpipe_tasks.db.models import Clip, Project, ProjectStatus, Scene, StageStatus, TaskRun
from vidpipe_tasks.db.session import session_scope
from vidpipe_tasks.errors import JobPending, PermanentStageError, SkipDelivery
from vidpipe_tasks.policy import RETRY_KEY, persist
from vidpipe_tasks.tasks import analyze_clip, finalize_project, generate_clip
from vidpipe_tasks.transient import backoff_delay, is_transient
from vidpipe_tasks.workflow import Superseded, enqueue_project


@pytest.fixture
def on_app(settings, monkeypatch):
    from celery.backends.base import DisabledBackend

    monkeypatch.setattr(app, "vidpipe_settings", settings)
    for task in (generate_clip, analyze_clip, finalize_project):
        # apply() stores nothing in eager mode, but the failure path still builds the app's default backend.
        monkeypatch.setattr(task, "_backend", DisabledBackend(app), raising=False)
    return settings


@pytest.fixture
def retries(monkeypatch) -> list[dict]:
    """The retries the policy asks Celery for (eager apply would run them at once, recursively)."""
    from celery.exceptions import Retry

    asked: list[dict] = []

    def fake_retry(**kwargs):
        asked.append(kwargs)
        return Retry("retry asked", when=kwargs.get("countdown"))

    monkeypatch.setattr(generate_clip, "retry", fake_retry)
    return asked


def db_down(*_args, **_kwargs):
    raise OperationalError("UPDATE scenes", {}, Exception("server closed the connection unexpectedly"))


def run_of(settings, task_id: str) -> TaskRun:
    with session_scope(settings.database_url) as s:
        return s.scalar(select(TaskRun).where(TaskRun.task_id == task_id))


def project_of(settings, pid: int) -> Project:
    with session_scope(settings.database_url) as s:
        project = s.get(Project, pid)
        _ = [sc.failure_reason for sc in project.scenes]
        return project


def test_broker_backend_and_database_disconnects_are_transient_and_bad_media_is_not() -> None:
    assert is_transient(redis.exceptions.ConnectionError("Connection refused"))
    assert is_transient(OperationalError("SELECT 1", {}, Exception("terminating connection")))
    assert is_transient(ConnectionResetError())
    assert not is_transient(ValueError("not a video")) and not is_transient(FileNotFoundError("clip.mp4"))


def test_backoff_grows_exponentially_up_to_its_cap_with_jitter() -> None:
    delays = [[backoff_delay(n, 1.0, 15.0) for _ in range(200)] for n in range(8)]
    assert max(delays[0]) <= 1.0 and max(delays[3]) <= 8.0 and max(delays[7]) <= 15.0
    assert min(delays[7]) >= 0.5 and len({round(d, 3) for d in delays[5]}) > 100  # spread, not lock-step


def test_a_database_disconnect_in_a_task_schedules_a_retry_instead_of_failing_the_project(
    on_app, tmp_path, monkeypatch, retries
) -> None:
    pid = new_project(on_app, tmp_path)
    monkeypatch.setattr(stages, "generate_scene", db_down)
    result = generate_clip.apply(args=({"project_id": pid, "scene_index": 1},), task_id="gen-1")
    assert result.state == "RETRY"
    (asked,) = retries
    assert 0 < asked["countdown"] <= on_app.retry_backoff_base
    assert asked["args"][0][RETRY_KEY]["count"] == 1  # the next retry backs off further
    run = run_of(on_app, "gen-1")
    assert (run.outcome, run.retries) == ("retrying", 1) and "OperationalError" in run.detail
    project = project_of(on_app, pid)
    assert project.status == ProjectStatus.PENDING and project.lease_until is not None


def test_transient_errors_past_the_retry_window_fail_the_project_with_the_reason(on_app, tmp_path, monkeypatch):
    pid = new_project(on_app, tmp_path)
    monkeypatch.setattr(stages, "generate_scene", db_down)
    spent = {"since": time.time() - on_app.transient_retry_window - 1, "count": 30}
    result = generate_clip.apply(args=({"project_id": pid, "scene_index": 1, RETRY_KEY: spent},), task_id="gen-2")
    assert result.state == "FAILURE"
    project = project_of(on_app, pid)
    assert project.status == ProjectStatus.FAILED
    assert "OperationalError" in project.scenes[0].failure_reason
    assert run_of(on_app, "gen-2").outcome == "failure"


def test_a_pending_remote_job_is_polled_later_and_never_counted_as_an_attempt(
    on_app, tmp_path, monkeypatch, retries
) -> None:
    pid = new_project(on_app, tmp_path)

    def pending(*_args):
        raise JobPending("job 7 is rendering", poll_after=30, progress={"done": 40, "total": 100})

    monkeypatch.setattr(stages, "generate_scene", pending)
    before = datetime.now(UTC)
    result = generate_clip.apply(args=({"project_id": pid, "scene_index": 1},), task_id="gen-3")
    assert result.state == "RETRY" and retries[0]["countdown"] == 30
    run = run_of(on_app, "gen-3")
    assert (run.outcome, run.polls, run.retries, run.crashes) == ("polling", 1, 0, 0)
    lease = project_of(on_app, pid).lease_until
    assert (lease if lease.tzinfo else lease.replace(tzinfo=UTC)) >= before + timedelta(seconds=30)


def test_a_permanent_stage_error_fails_the_scene_with_its_reason_and_is_not_retried(on_app, tmp_path, monkeypatch):
    pid = new_project(on_app, tmp_path)

    def refused(*_args):
        raise PermanentStageError("content_policy", "the provider filtered the clip", {"reasons": ["violence"]})

    monkeypatch.setattr(stages, "generate_scene", refused)
    result = generate_clip.apply(args=({"project_id": pid, "scene_index": 1},), task_id="gen-4")
    assert result.state == "FAILURE"
    project = project_of(on_app, pid)
    scene = project.scenes[0]
    assert project.status == ProjectStatus.FAILED and scene.generation_status == StageStatus.FAILED
    assert scene.failure_reason == "content_policy: the provider filtered the clip"
    assert run_of(on_app, "gen-4").retries == 0


def test_the_failure_path_gives_up_quietly_when_the_database_stays_down() -> None:
    started = time.monotonic()
    assert persist(db_down, window=0.5, what="a test write") is None
    assert time.monotonic() - started < 5


def test_a_delivery_from_a_superseded_chain_is_skipped_and_changes_nothing(on_app, tmp_path) -> None:
    pid = new_project(on_app, tmp_path)
    with session_scope(on_app.database_url) as s:
        s.get(Project, pid).chain_epoch = 2
    result = generate_clip.apply(args=({"project_id": pid, "scene_index": 1, "epoch": 1},), task_id="gen-5")
    assert result.state == "IGNORED"
    assert run_of(on_app, "gen-5").outcome == "stale"
    with session_scope(on_app.database_url) as s:
        assert s.scalar(select(Clip)) is None
        assert s.scalar(select(Scene).where(Scene.scene_index == 1)).generation_status == StageStatus.PENDING


def test_a_redelivered_finished_last_link_is_skipped(on_app, tmp_path) -> None:
    pid = new_project(on_app, tmp_path)
    with session_scope(on_app.database_url) as s:
        s.add(TaskRun(task_id="fin-1", task_name="vidpipe.finalize_project", project_id=pid, outcome="success",
                      started_at=datetime.now(UTC), attempts=1))  # fmt: skip
    result = finalize_project.apply(args=({"project_id": pid},), task_id="fin-1")
    assert result.state == "IGNORED"
    assert project_of(on_app, pid).status == ProjectStatus.PENDING  # not re-finalised (it would say FAILED)
    assert run_of(on_app, "fin-1").outcome == "success"


def test_a_scene_task_interrupted_too_often_fails_its_project_as_a_poison_scene(on_app, tmp_path) -> None:
    pid = new_project(on_app, tmp_path)
    cap = on_app.max_task_crashes
    with session_scope(on_app.database_url) as s:
        for i in range(cap - 1):  # earlier attempts closed by recovery
            s.add(TaskRun(task_id=f"old-{i}", task_name="vidpipe.generate_clip", project_id=pid, scene_index=1,
                          outcome="abandoned", started_at=datetime.now(UTC), attempts=1))  # fmt: skip
        s.add(TaskRun(task_id="gen-6", task_name="vidpipe.generate_clip", project_id=pid, scene_index=1,
                      outcome="running", started_at=datetime.now(UTC), attempts=1))  # fmt: skip
    result = generate_clip.apply(args=({"project_id": pid, "scene_index": 1},), task_id="gen-6")
    assert result.state == "FAILURE"
    project = project_of(on_app, pid)
    assert project.status == ProjectStatus.FAILED
    assert project.scenes[0].failure_reason.startswith(f"poison: generate_clip of scene 1 was interrupted {cap} times")
    assert run_of(on_app, "gen-6").crashes == 1


def test_progress_reports_never_fail_the_task_when_the_result_backend_is_down(on_app, monkeypatch) -> None:
    import vidpipe_tasks.policy as policy

    class DeadBackend:
        def store_result(self, *args, **kwargs):
            raise redis.exceptions.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr(policy, "quick_backend", lambda _app: DeadBackend())
    monkeypatch.setattr(policy, "_PROGRESS_PAUSED_UNTIL", {})
    analyze_clip.push_request(id="cv-1", is_eager=False, hostname="cv@test")
    try:
        analyze_clip.progress("analyze", 1, 4, step="faces")  # must not raise
        analyze_clip.progress("analyze", 2, 4, step="match")  # paused: not even tried
    finally:
        analyze_clip.pop_request()
    assert policy._PROGRESS_PAUSED_UNTIL["t"] > time.monotonic()


def test_an_analysis_delivered_before_its_clip_exists_is_skipped_without_failing_the_project(on_app, tmp_path):
    pid = new_project(on_app, tmp_path)
    with pytest.raises(SkipDelivery):
        stages.analysis_request(on_app, {"project_id": pid, "scene_index": 1})
    result = analyze_clip.apply(args=({"project_id": pid, "scene_index": 1},), task_id="cv-2")
    assert result.state == "IGNORED"
    assert project_of(on_app, pid).status == ProjectStatus.PENDING
    assert run_of(on_app, "cv-2").outcome == "ignored"


def test_a_duplicate_analysis_of_a_registered_scene_leaves_its_finished_state_alone(on_app, tmp_path) -> None:
    from vidpipe_tasks.db.models import SceneManifest

    pid = new_project(on_app, tmp_path)
    with session_scope(on_app.database_url) as s:
        scene = s.scalar(select(Scene).where(Scene.project_id == pid, Scene.scene_index == 1))
        s.add(Clip(scene_id=scene.id, path="c.mp4", size_bytes=1, frame_count=1, fps=1, width=1, height=1,
                   generator="t"))  # fmt: skip
        s.add(SceneManifest(scene_id=scene.id, registered_at=datetime.now(UTC)))
        scene.analysis_status = StageStatus.DONE
    assert stages.analysis_request(on_app, {"project_id": pid, "scene_index": 1}) is None
    with session_scope(on_app.database_url) as s:
        assert s.scalar(select(Scene).where(Scene.scene_index == 1)).analysis_status == StageStatus.DONE


def test_a_new_chain_moves_the_epoch_on_closes_open_attempts_and_refuses_a_stale_compare_and_swap(on_app, tmp_path):
    pid = new_project(on_app, tmp_path)
    with session_scope(on_app.database_url) as s:
        s.add(TaskRun(task_id="lost", task_name="vidpipe.generate_clip", project_id=pid, scene_index=1,
                      outcome="running", started_at=datetime.now(UTC), attempts=1))  # fmt: skip
        s.scalar(select(Scene).where(Scene.scene_index == 1)).generation_status = StageStatus.RUNNING
    from vidpipe_tasks.celery_app import create_app

    test_app = create_app(on_app)  # the embedded broker is a folder: sending only writes a file
    enqueue_project(test_app, on_app, pid)
    project = project_of(on_app, pid)
    assert project.chain_epoch == 1
    assert run_of(on_app, "lost").outcome == "abandoned"
    with session_scope(on_app.database_url) as s:
        assert s.scalar(select(Scene).where(Scene.scene_index == 1)).generation_status == StageStatus.PENDING
    with pytest.raises(Superseded):
        enqueue_project(test_app, on_app, pid, expected_epoch=0)
    from vidpipe_tasks.queues import broker_messages

    (message,) = broker_messages(test_app, on_app)
    assert (message.task, message.scene_index, message.epoch) == ("vidpipe.generate_clip", 1, 1)


def test_temp_files_of_a_killed_writer_are_removed_and_a_live_writers_are_kept(settings) -> None:
    folder = media.scene_dir(1, 1)
    directory = settings.media_root / folder
    directory.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    target = directory / "clip.mp4"
    stale = directory / media.temp_prefix(target).replace(str(os.getpid()), str(dead.pid))
    stale = stale.with_name(stale.name + "abc.part")
    live = directory / (media.temp_prefix(target) + "def.part")
    old_foreign = directory / ".crop.png.otherhost-1.tmp"
    for p in (stale, live, old_foreign):
        p.write_bytes(b"x")
    os.utime(old_foreign, (time.time() - 120, time.time() - 120))
    removed = media.remove_stale_temps(settings.media_root, folder, older_than_s=60)
    assert sorted(removed) == sorted([stale.name, old_foreign.name])
    assert live.exists() and not stale.exists()


def test_an_orphan_clip_is_adopted_instead_of_rendered_again(on_app, tmp_path, monkeypatch) -> None:
    from vidpipe_tasks.generators import get_generator
    from vidpipe_tasks.generators.base import ClipRequest

    pid = new_project(on_app, tmp_path)
    out = media.absolute(on_app.media_root, media.clip_path(pid, 1))
    out.parent.mkdir(parents=True)
    request = ClipRequest(pid, 1, "a test", None, (), 1.0, 8, 160, 96, out)
    get_generator("procedural").generate(request)  # rendered, then the database write was lost

    def no_render(*_args):
        raise AssertionError("the scene was rendered again")

    import vidpipe_tasks.generators as generators

    monkeypatch.setattr(generators, "get_generator", no_render)
    ref = stages.generate_scene(on_app, pid, 1)
    assert ref["clip_path"] == media.clip_path(pid, 1)
    with session_scope(on_app.database_url) as s:
        clip = s.scalar(select(Clip))
        assert (clip.frame_count, clip.fps, clip.width, clip.height) == (8, 8, 160, 96)


def test_publishing_and_the_result_backend_wait_out_an_outage_as_long_as_the_retry_window(settings) -> None:
    conf = celery_config(replace(settings, transient_retry_window=120))
    policy = conf["task_publish_retry_policy"]
    waits = [min(policy["interval_start"] + i * policy["interval_step"], policy["interval_max"])
             for i in range(policy["max_retries"])]  # fmt: skip
    assert sum(waits) >= 120
    assert conf["result_backend_always_retry"] and conf["result_backend_max_retries"] == policy["max_retries"]
    assert conf["beat_schedule"]["vidpipe-recover-stalled"]["task"] == "vidpipe.recover_stalled"
