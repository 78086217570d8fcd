"""The quality gate and candidates with real workers on the embedded default (file:// chords via chord_unlock).

Two projects at once: one whose gate cannot be met (every round runs), one with two candidates per round
and a gate every candidate passes (round 2 never runs), where one candidate's render is made to fail.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from time import monotonic

import pytest
from celery import Celery
from sqlalchemy import func, select

from tests.conftest import DATA, make_settings
from tests.helpers import enqueue_and_wait, pipeline_workers, wait_until
from vidpipe_tasks import media
from vidpipe_tasks.celery_app import create_app
from vidpipe_tasks.cli.status import load_status
from vidpipe_tasks.cli.workers import WorkerProcess
from vidpipe_tasks.db.models import Asset, AssetAppearance, AssetSource, Project, Scene, SceneAttempt, TaskRun
from vidpipe_tasks.db.session import session_scope
from vidpipe_tasks.quality import AttemptScore, best_attempt
from vidpipe_tasks.report import build_report
from vidpipe_tasks.settings import Settings
from vidpipe_tasks.storyboard import load_storyboard
from vidpipe_tasks.workflow import create_project

GEN, CV, PICK, REG = (
    "vidpipe.generate_candidate",
    "vidpipe.analyze_candidate",
    "vidpipe.pick_attempt",
    "vidpipe.register_entities",
)
#: The candidates project's scene whose first candidate cannot be written (a folder sits at its clip path).
BROKEN_SCENE, BROKEN_ATTEMPT = 2, 1


@dataclass
class QualityRun:
    settings: Settings
    app: Celery
    workers: list[WorkerProcess]
    gate: int
    candidates: int


@pytest.fixture(scope="module")
def quality_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QualityRun]:
    settings = make_settings(tmp_path_factory.mktemp("quality") / "work", store_processed=True)
    app = create_app(settings)
    gate, cands = (
        create_project(settings, DATA / name, load_storyboard(DATA / name))
        for name in ("quality_gate.yaml", "quality_candidates.yaml")
    )
    # An honest fault: the render of that attempt cannot be renamed into place, so it fails for good.
    media.absolute(settings.media_root, media.attempt_clip_path(cands, BROKEN_SCENE, BROKEN_ATTEMPT)).mkdir(
        parents=True
    )
    with pipeline_workers(settings) as workers:
        enqueue_and_wait(settings, workers, [gate, cands], 300)
        yield QualityRun(settings, app, workers, gate, cands)


def utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def attempts(run: QualityRun, project_id: int) -> dict[tuple[int, int], SceneAttempt]:
    with session_scope(run.settings.database_url) as s:
        rows = s.scalars(select(SceneAttempt).where(SceneAttempt.project_id == project_id))
        return {(r.scene_index, r.attempt): r for r in rows}


def runs(run: QualityRun) -> list[TaskRun]:
    with session_scope(run.settings.database_url) as s:
        return list(s.scalars(select(TaskRun).order_by(TaskRun.started_at)))


def counts(run: QualityRun) -> tuple[int, int, int]:
    with session_scope(run.settings.database_url) as s:
        return tuple(s.scalar(select(func.count()).select_from(m)) for m in (Asset, AssetAppearance, SceneAttempt))


def attempt_rows_snapshot(run: QualityRun) -> list[tuple]:
    with session_scope(run.settings.database_url) as s:
        rows = s.scalars(select(SceneAttempt).order_by(SceneAttempt.id))
        return [(r.id, r.state, r.score, r.kept, r.analysed_at) for r in rows]


def test_both_projects_complete(quality_run: QualityRun) -> None:
    with session_scope(quality_run.settings.database_url) as s:
        assert [s.get(Project, p).status.value for p in (quality_run.gate, quality_run.candidates)] == [
            "COMPLETED",
            "COMPLETED",
        ]


def test_an_unmet_gate_regenerates_every_round_and_keeps_the_best_by_the_documented_score(
    quality_run: QualityRun,
) -> None:
    rows = attempts(quality_run, quality_run.gate)
    # Two scenes, two rounds of one candidate each: every attempt recorded with its own seed and clip.
    assert sorted(rows) == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert all(r.state == "analysed" and r.passed_gate is False for r in rows.values())
    assert all(rows[(sc, 1)].seed != rows[(sc, 2)].seed for sc in (1, 2))
    assert len({r.clip_path for r in rows.values()}) == 4
    for scene in (1, 2):
        mine = [r for (sc, _), r in rows.items() if sc == scene]
        expected = best_attempt(
            AttemptScore(r.attempt, analysed_ok=True, identity=r.identity, adherence=r.adherence) for r in mine
        )
        assert [r.attempt for r in mine if r.kept] == [expected.attempt]
        assert all(r.identity is not None and r.identity < 1.0 for r in mine)


def test_only_the_kept_attempt_is_registered(quality_run: QualityRun) -> None:
    project_id = quality_run.gate
    rows = attempts(quality_run, project_id)
    kept = {sc: r for (sc, _), r in rows.items() if r.kept}
    with session_scope(quality_run.settings.database_url) as s:
        scenes = {sc.scene_index: sc for sc in s.scalars(select(Scene).where(Scene.project_id == project_id))}
        assert {i: sc.clip.path for i, sc in scenes.items()} == {i: kept[i].clip_path for i in scenes}
        mine = (Asset.origin_project_id == project_id, Asset.source == AssetSource.CLIP_EXTRACT)
        extracted = list(s.scalars(select(Asset).where(*mine)))
        appearances = list(s.scalars(select(AssetAppearance).where(AssetAppearance.project_id == project_id)))
    # Both attempts of scene 2 found Otto's new face; one asset was registered, from the kept attempt's crop.
    assert [(a.origin_scene_index, a.character) for a in extracted] == [(2, "otto")]
    crops = media.attempt_crops_dir(project_id, 2, kept[2].attempt)
    assert extracted[0].reference_image.startswith(f"{crops}/")
    # One appearance per character and scene: Ines in scene 1; Ines and Otto in scene 2.
    assert sorted((a.scene_index, a.asset_id == extracted[0].id) for a in appearances) == [
        (1, False),
        (2, False),
        (2, True),
    ]


def test_candidates_run_per_round_and_a_passed_gate_skips_the_later_rounds(quality_run: QualityRun) -> None:
    rows = attempts(quality_run, quality_run.candidates)
    assert sorted(rows) == [(sc, a) for sc in (1, 2, 3) for a in (1, 2)]  # round 2 (attempts 3, 4) never ran
    scene_runs = [r for r in runs(quality_run) if r.project_id == quality_run.candidates]
    assert sorted((r.scene_index, r.attempt) for r in scene_runs if r.task_name == GEN) == sorted(rows)
    assert len([r for r in scene_runs if r.task_name == PICK]) == 3
    assert {r.queue for r in scene_runs if r.task_name == CV} == {"cv"}


def test_a_failed_candidate_does_not_fail_its_scene(quality_run: QualityRun) -> None:
    rows = attempts(quality_run, quality_run.candidates)
    broken = rows[(BROKEN_SCENE, BROKEN_ATTEMPT)]
    assert broken.state == "failed" and "IsADirectoryError" in broken.error and not broken.kept
    assert [a for (sc, a), r in rows.items() if sc == BROKEN_SCENE and r.kept] == [2]
    with session_scope(quality_run.settings.database_url) as s:
        scene = s.scalar(
            select(Scene).where(Scene.project_id == quality_run.candidates, Scene.scene_index == BROKEN_SCENE)
        )
        assert (scene.generation_status.value, scene.registry_status.value) == ("DONE", "DONE")
        wren = s.scalar(select(Asset).where(Asset.origin_project_id == quality_run.candidates))
        assert wren.character == "wren" and wren.reference_image.startswith(
            media.attempt_crops_dir(quality_run.candidates, BROKEN_SCENE, 2) + "/"
        )


def test_scene_n_plus_1_starts_after_scene_n_registry_commit(quality_run: QualityRun) -> None:
    rows = runs(quality_run)
    for project_id, scenes in ((quality_run.gate, 2), (quality_run.candidates, 3)):
        with session_scope(quality_run.settings.database_url) as s:
            committed = {
                sc.scene_index: sc.scene_manifest.registered_at
                for sc in s.scalars(select(Scene).where(Scene.project_id == project_id))
            }
        for n in range(1, scenes):
            register = min(
                (r for r in rows if (r.task_name, r.project_id, r.scene_index) == (REG, project_id, n)),
                key=lambda r: utc(r.started_at),
            )
            later = [r for r in rows if r.project_id == project_id and r.scene_index == n + 1]
            first = min(utc(r.started_at) for r in later)
            assert utc(committed[n]) <= first and utc(register.finished_at) <= first, (project_id, n)


def test_status_json_shows_every_attempt_and_the_kept_one(quality_run: QualityRun) -> None:
    status = load_status(quality_run.settings, quality_run.gate)
    assert status["quality"] == {"min_identity": 1.0, "min_adherence": 0.0, "max_attempts": 2, "candidates": 1}
    scene = status["scenes"][0]
    assert [a["attempt"] for a in scene["attempts"]] == [1, 2]
    assert sum(a["kept"] for a in scene["attempts"]) == 1
    assert all(a["score"] is not None and a["cost_usd"] == 0.0 for a in scene["attempts"])
    json.dumps(status)


def test_the_report_lists_every_attempt_and_marks_the_kept_one(quality_run: QualityRun) -> None:
    page = build_report(quality_run.settings, quality_run.gate)
    kept = {(sc, r.attempt) for (sc, _), r in attempts(quality_run, quality_run.gate).items() if r.kept}
    sections = page.split('<section class="scene"')[1:]
    shown = {
        (index, int(n))
        for index, section in enumerate(sections, start=1)
        for n in re.findall(r'data-attempt="(\d+)" data-kept="1"', section)
    }
    assert shown == kept and page.count('<tr class="attempt') == 4


# -- redelivery ---------------------------------------------------------------------------------------------


def processed_message(run: QualityRun, task: str, project_id: int, scene: int) -> tuple[Path, dict]:
    """The consumed broker message of a task of the chain (the embedded broker keeps them: store_processed)."""
    for path in sorted((run.settings.broker_dir / "processed").glob("*.msg")):
        message = json.loads(path.read_text())
        headers = message["headers"]
        argsrepr = headers.get("argsrepr") or ""
        names = f"'project_id': {project_id}," in argsrepr and f"'scene_index': {scene}," in argsrepr
        if headers["task"] == task and names:
            return path, message
    raise AssertionError(f"no processed {task} message for project {project_id} scene {scene}")


def redeliver(run: QualityRun, path: Path) -> None:
    """Put a consumed message back in the queue folder, as the broker does with an unacknowledged delivery."""
    queue_dir = run.settings.broker_dir / "queue"
    queue = path.name.split(".", 1)[1]
    name = f"{int(round(monotonic() * 1000))}_{uuid.uuid4()}.{queue}"
    temp = queue_dir / f".{name}.part"
    temp.write_bytes(path.read_bytes())
    os.replace(temp, queue_dir / name)


def logged_skip(run: QualityRun, task_id: str) -> bool:
    text = "".join(w.logfile.read_text(errors="replace") for w in run.workers)
    return f"[{task_id}] skipped: redelivery of a finished task" in text


@pytest.mark.parametrize("task", [REG, CV, PICK])
def test_a_redelivered_candidate_pick_or_registration_is_skipped_and_changes_nothing(
    quality_run: QualityRun, task: str
) -> None:
    # register_entities of scene 1 is followed by scene 2's chord; analyze_candidate ends a chord's header
    # chain; pick_attempt is the chord's callback.
    path, message = processed_message(quality_run, task, quality_run.candidates, 1)
    before, rows_before, runs_before = counts(quality_run), attempt_rows_snapshot(quality_run), len(runs(quality_run))
    redeliver(quality_run, path)
    wait_until(lambda: logged_skip(quality_run, message["headers"]["id"]), f"the redelivered {task} to be skipped")
    assert counts(quality_run) == before and attempt_rows_snapshot(quality_run) == rows_before
    assert len(runs(quality_run)) == runs_before  # nothing of the chain after it was sent again


def test_candidate_tasks_sent_again_reuse_what_was_recorded(quality_run: QualityRun) -> None:
    app, project_id = quality_run.app, quality_run.candidates
    rows = attempts(quality_run, project_id)
    kept = next(r for (sc, _), r in rows.items() if sc == 1 and r.kept)
    before, rows_before = counts(quality_run), attempt_rows_snapshot(quality_run)
    ref = {"project_id": project_id, "scene_index": 1}
    clip = media.absolute(quality_run.settings.media_root, kept.clip_path)
    stamp = clip.stat().st_mtime_ns
    generated = app.send_task(GEN, args=({**ref, "attempt": kept.attempt},)).get(timeout=120, interval=0.1)
    analysed = app.send_task(CV, args=({**ref, "attempt": kept.attempt},)).get(timeout=120, interval=0.1)
    picked = app.send_task(PICK, args=({**ref, "round": 1},)).get(timeout=120, interval=0.1)
    registered = app.send_task(REG, args=({**ref, "attempt": kept.attempt},)).get(timeout=120, interval=0.1)
    assert generated["state"] == "registered" and analysed["outcome"] == "ok"
    assert (picked["attempt"], picked["final"]) == (kept.attempt, True)
    assert registered["scene_index"] == 1
    assert clip.stat().st_mtime_ns == stamp
    assert counts(quality_run) == before and attempt_rows_snapshot(quality_run) == rows_before
