"""Candidates on Redis and PostgreSQL: native chords (the Redis result backend counts the header), two workers.

The embedded default's chords poll (celery.chord_unlock, tests/integration/test_quality.py); here the last
candidate's result triggers the pick. Two generation workers and two CV processes run a round's candidates
side by side.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from tests.conftest import DATA, production_settings
from tests.helpers import wait_projects_finished
from vidpipe_tasks import media
from vidpipe_tasks.celery_app import create_app
from vidpipe_tasks.cli.workers import WorkerProcess, start_cv_launcher, start_worker, stop_workers, wait_ready
from vidpipe_tasks.db.models import Asset, AssetAppearance, Project, Scene, SceneAttempt, TaskRun
from vidpipe_tasks.db.session import session_scope
from vidpipe_tasks.settings import GENERATION_QUEUE, REGISTRY_QUEUE
from vidpipe_tasks.storyboard import load_storyboard
from vidpipe_tasks.workflow import create_project, enqueue_project

pytestmark = pytest.mark.integration


def utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def test_candidates_on_redis_pick_one_winner_per_scene_in_order(tmp_path, redis_server, postgres_server) -> None:
    settings = production_settings(tmp_path / "work", redis_server, postgres_server, "t_quality_candidates")
    path = DATA / "quality_candidates.yaml"
    project_id = create_project(settings, path, load_storyboard(path))
    # Scene 2's first candidate cannot be written: a failed header task must not fail the chord or the scene.
    media.absolute(settings.media_root, media.attempt_clip_path(project_id, 2, 1)).mkdir(parents=True)
    logs = settings.home / "logs"
    launcher = start_cv_launcher(settings, logs, processes=2)
    workers = [
        start_worker(settings, "gen-a", [GENERATION_QUEUE, REGISTRY_QUEUE], logs),
        start_worker(settings, "gen-b", [GENERATION_QUEUE, REGISTRY_QUEUE], logs),
        launcher,
    ]
    try:
        wait_ready([*workers, WorkerProcess("cv-cpu1", ["cv"], launcher.process, logs / "cv-cpu1.log")])
        enqueue_project(create_app(settings), settings, project_id)
        assert wait_projects_finished(settings, [project_id], workers, 300) == ["COMPLETED"]
    finally:
        stop_workers(workers)
    with session_scope(settings.database_url) as s:
        attempts = list(s.scalars(select(SceneAttempt).where(SceneAttempt.project_id == project_id)))
        runs = list(s.scalars(select(TaskRun).where(TaskRun.project_id == project_id)))
        scenes = {sc.scene_index: sc for sc in s.scalars(select(Scene).where(Scene.project_id == project_id))}
        registered = {i: utc(sc.scene_manifest.registered_at) for i, sc in scenes.items()}
        clips = {i: sc.clip.path for i, sc in scenes.items()}
        extracted = list(s.scalars(select(Asset).where(Asset.origin_project_id == project_id)))
        appearances = list(s.scalars(select(AssetAppearance).where(AssetAppearance.project_id == project_id)))
        assert s.get(Project, project_id).status.value == "COMPLETED"
    by_key = {(a.scene_index, a.attempt): a for a in attempts}
    assert sorted(by_key) == [(sc, n) for sc in (1, 2, 3) for n in (1, 2)]
    assert by_key[(2, 1)].state == "failed"
    kept = {sc: n for (sc, n), a in by_key.items() if a.kept}
    assert sorted(kept) == [1, 2, 3] and kept[2] == 2
    assert clips == {sc: by_key[(sc, n)].clip_path for sc, n in kept.items()}
    # Only the winners were registered: Wren once (scene 2), Mara and Wren once per scene they appear in.
    assert [(a.character, a.origin_scene_index) for a in extracted] == [("wren", 2)]
    assert sorted(a.scene_index for a in appearances) == [1, 2, 2, 3, 3]
    # Scene N+1's candidates started only after scene N's registry commit.
    for n in (1, 2):
        first = min(utc(r.started_at) for r in runs if r.scene_index == n + 1)
        assert registered[n] <= first, n
    # The two generation workers ran a round's candidates side by side at least once.
    gens = [r for r in runs if r.task_name == "vidpipe.generate_candidate" and r.outcome == "success"]

    def overlap(scene: int) -> bool:
        a, b = [r for r in gens if r.scene_index == scene]
        return utc(a.started_at) < utc(b.finished_at) and utc(b.started_at) < utc(a.finished_at)

    overlapped = [sc for sc in (1, 3) if overlap(sc)]  # scene 2's first candidate failed
    assert overlapped and len({r.worker for r in gens}) == 2
