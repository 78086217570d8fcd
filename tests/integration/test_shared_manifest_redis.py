"""Four projects sharing one manifest at once on Redis and PostgreSQL, two worker processes per queue."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pytest
from sqlalchemy import select

from tests.conftest import DATA, production_settings
from tests.helpers import wait_projects_finished
from vidpipe_tasks.celery_app import create_app
from vidpipe_tasks.cli.workers import WorkerProcess, start_cv_launcher, start_worker, stop_workers, wait_ready
from vidpipe_tasks.db.models import Asset, AssetAppearance, AssetSource, Clip, Manifest, Project, Scene, TaskRun
from vidpipe_tasks.db.session import session_scope
from vidpipe_tasks.settings import GENERATION_QUEUE, REGISTRY_QUEUE, Settings
from vidpipe_tasks.similarity import similarity_matrix
from vidpipe_tasks.storyboard import load_storyboard
from vidpipe_tasks.workflow import create_project, enqueue_project

pytestmark = pytest.mark.integration

GEN, CV, REG = "vidpipe.generate_clip", "vidpipe.analyze_clip", "vidpipe.register_entities"
MANIFEST = "shared-harbour"
STORYBOARDS = [DATA / f"shared_harbour_{i}.yaml" for i in (1, 2, 3, 4)]
SCENES = 3
RUN_TIMEOUT_S = 420


def utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@dataclass
class SharedRun:
    settings: Settings
    projects: list[int]
    manifest_id: int


@pytest.fixture(scope="module")
def shared_run(tmp_path_factory: pytest.TempPathFactory, redis_server, postgres_server) -> Iterator[SharedRun]:
    """Two solo gen+registry workers and two CV processes (the launcher); four projects queued back to back."""
    home = tmp_path_factory.mktemp("shared") / "work"
    settings = production_settings(home, redis_server, postgres_server, "t_shared_manifest")
    projects = [create_project(settings, path, load_storyboard(path)) for path in STORYBOARDS]
    logs = settings.home / "logs"
    launcher = start_cv_launcher(settings, logs, processes=2)
    workers = [
        start_worker(settings, "gen-a", [GENERATION_QUEUE, REGISTRY_QUEUE], logs),
        start_worker(settings, "gen-b", [GENERATION_QUEUE, REGISTRY_QUEUE], logs),
        launcher,
    ]
    try:
        # The launcher's handle waits for cv-cpu0 only; wait for its second child's log as well.
        wait_ready([*workers, WorkerProcess("cv-cpu1", ["cv"], launcher.process, logs / "cv-cpu1.log")])
        app = create_app(settings)
        for project_id in projects:
            enqueue_project(app, settings, project_id)
        wait_projects_finished(settings, projects, workers, RUN_TIMEOUT_S)
        with session_scope(settings.database_url) as s:
            manifest_id = s.scalar(select(Manifest.id).where(Manifest.name == MANIFEST))
        yield SharedRun(settings, projects, manifest_id)
    finally:
        stop_workers(workers)


def task_runs(run: SharedRun) -> list[TaskRun]:
    with session_scope(run.settings.database_url) as s:
        return list(s.scalars(select(TaskRun).where(TaskRun.project_id.in_(run.projects))))


def one(rows: list[TaskRun], name: str, project: int, scene: int) -> TaskRun:
    found = [r for r in rows if (r.task_name, r.project_id, r.scene_index) == (name, project, scene)]
    assert len(found) == 1, (name, project, scene, len(found))
    return found[0]


def extracted_assets(run: SharedRun) -> list[Asset]:
    with session_scope(run.settings.database_url) as s:
        stmt = select(Asset).where(Asset.manifest_id == run.manifest_id, Asset.source == AssetSource.CLIP_EXTRACT)
        return list(s.scalars(stmt.order_by(Asset.id)))


def invented_faces(run: SharedRun) -> dict[tuple[int, int], str]:
    """(project, scene) -> stock face the generator invented for Wren there (scenes where Wren had no reference)."""
    with session_scope(run.settings.database_url) as s:
        rows = s.execute(
            select(Scene.project_id, Scene.scene_index, Clip.appearances)
            .join(Clip, Clip.scene_id == Scene.id)
            .where(Scene.project_id.in_(run.projects))
        )
        return {
            (project, scene): appearances["wren"].removeprefix("invented:")
            for project, scene, appearances in rows
            if appearances.get("wren", "").startswith("invented:")
        }


def test_all_four_projects_complete_and_every_task_succeeds(shared_run: SharedRun) -> None:
    with session_scope(shared_run.settings.database_url) as s:
        assert [s.get(Project, i).status.value for i in shared_run.projects] == ["COMPLETED"] * 4
        assert {s.get(Project, i).manifest_id for i in shared_run.projects} == {shared_run.manifest_id}
    rows = task_runs(shared_run)
    assert len(rows) == 4 * (3 * SCENES + 1)
    # A tag minted twice or a face registered twice would have broken a unique constraint and failed the task.
    assert {r.outcome for r in rows} == {"success"}


def test_the_four_projects_ran_at_once_on_two_processes_per_queue(shared_run: SharedRun) -> None:
    rows = task_runs(shared_run)
    spans = {}
    for r in rows:
        lo, hi = spans.get(r.project_id, (utc(r.started_at), utc(r.finished_at)))
        spans[r.project_id] = (min(lo, utc(r.started_at)), max(hi, utc(r.finished_at)))
    assert max(lo for lo, _ in spans.values()) < min(hi for _, hi in spans.values()), "not all four overlapped"
    workers = {q: {r.worker.split("@")[0] for r in rows if r.queue == q} for q in ("generation", "cv", "registry")}
    assert workers["generation"] == {"gen-a", "gen-b"}
    assert workers["cv"] == {"cv-cpu0", "cv-cpu1"}
    assert workers["registry"] <= {"gen-a", "gen-b"}


def test_scene_n_plus_1_starts_only_after_scene_n_committed_its_registry_writes(shared_run: SharedRun) -> None:
    rows = task_runs(shared_run)
    with session_scope(shared_run.settings.database_url) as s:
        committed = {
            (sc.project_id, sc.scene_index): sc.scene_manifest.registered_at
            for sc in s.scalars(select(Scene).where(Scene.project_id.in_(shared_run.projects)))
        }
    for project in shared_run.projects:
        for n in range(1, SCENES):
            register, following = one(rows, REG, project, n), one(rows, GEN, project, n + 1)
            assert utc(register.finished_at) <= utc(following.started_at), (project, n)
            assert utc(committed[(project, n)]) <= utc(following.started_at), (project, n)


def test_tags_are_unique_within_the_shared_manifest(shared_run: SharedRun) -> None:
    with session_scope(shared_run.settings.database_url) as s:
        tags = list(s.scalars(select(Asset.tag).where(Asset.manifest_id == shared_run.manifest_id)))
    assert [tag for tag, n in Counter(tags).items() if n > 1] == []
    extracted = extracted_assets(shared_run)
    assert extracted, "no face was extracted: Wren was never invented"
    # Every extracted face is Wren's (the only reference-less character): the first is "wren", later ones
    # minted from it under the manifest lock.
    assert {a.character for a in extracted} == {"wren"}
    assert sorted(a.tag for a in extracted) == sorted(["wren"] + [f"wren-{i}" for i in range(2, len(extracted) + 1)])


def test_each_new_face_became_exactly_one_asset(shared_run: SharedRun) -> None:
    extracted = extracted_assets(shared_run)
    assert len({a.origin_key for a in extracted}) == len(extracted)
    # By the registry's own criterion, no two extracted assets are the same face.
    engines = {a.face_engine for a in extracted}
    assert len(engines) == 1
    with session_scope(shared_run.settings.database_url) as s:
        analysis = next(
            sc.scene_manifest.cv_analysis_json
            for sc in s.scalars(select(Scene).where(Scene.project_id == shared_run.projects[0]))
        )
    metric, threshold = analysis["engine"]["metric"], analysis["engine"]["match_threshold"]
    sims = similarity_matrix(
        np.asarray([a.face_embedding for a in extracted]), np.asarray([a.face_embedding for a in extracted]), metric
    )
    for i, j in itertools.combinations(range(len(extracted)), 2):
        assert sims[i, j] < threshold, (extracted[i].tag, extracted[j].tag, float(sims[i, j]))
    # And by what the generator drew: each stock face invented for Wren (in any project) is one asset.
    invented = invented_faces(shared_run)
    face_of_asset = {a.tag: invented[(a.origin_project_id, a.origin_scene_index)] for a in extracted}
    assert sorted(face_of_asset.values()) == sorted(set(invented.values())), (face_of_asset, invented)


def test_a_face_invented_in_two_projects_was_registered_once_and_matched_by_the_other(shared_run: SharedRun) -> None:
    invented = invented_faces(shared_run)
    shared = {face for face, n in Counter(invented.values()).items() if n > 1}
    if not shared:
        pytest.skip(f"no two projects invented the same face for Wren this run: {invented}")
    extracted = {a.id: a for a in extracted_assets(shared_run)}
    with session_scope(shared_run.settings.database_url) as s:
        appearances = list(s.scalars(select(AssetAppearance).where(AssetAppearance.asset_id.in_(extracted))))
    for face in shared:
        scenes = sorted(key for key, f in invented.items() if f == face)
        owners = [a for a in extracted.values() if (a.origin_project_id, a.origin_scene_index) in scenes]
        assert len(owners) == 1, (face, scenes)
        seen_in = {(ap.project_id, ap.scene_index) for ap in appearances if ap.asset_id == owners[0].id}
        assert set(scenes) <= seen_in, (face, scenes, seen_in)


def test_registry_commits_into_the_shared_manifest_were_serialized(shared_run: SharedRun) -> None:
    registrations = [r for r in task_runs(shared_run) if r.task_name == REG and r.outcome == "success"]
    assert len(registrations) == 4 * SCENES
    with session_scope(shared_run.settings.database_url) as s:
        version = s.get(Manifest, shared_run.manifest_id).registry_version
    # Each registration bumps the version as its first statement, under the manifest row lock, and commits.
    assert version == sum(r.attempts for r in registrations)
