"""The core loop, distributed for real: ordering, routing, enrichment, degradation, skipping, idempotency."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from sqlalchemy import func, select

from tests.integration.conftest import PipelineRun
from vidpipe_tasks.cli.status import load_status
from vidpipe_tasks.db.models import Asset, AssetAppearance, AssetSource, Clip, Project, Scene, TaskRun
from vidpipe_tasks.db.session import session_scope

GEN, CV, REG = "vidpipe.generate_clip", "vidpipe.analyze_clip", "vidpipe.register_entities"


def utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def runs(run: PipelineRun) -> list[TaskRun]:
    with session_scope(run.settings.database_url) as s:
        return list(s.scalars(select(TaskRun).order_by(TaskRun.started_at)))


def one(rows: list[TaskRun], name: str, project: int, scene: int) -> TaskRun:
    """The chain's own run of a task (the idempotency tests below send extra copies later)."""
    found = [r for r in rows if r.task_name == name and r.project_id == project and r.scene_index == scene]
    assert found, (name, project, scene)
    return min(found, key=lambda r: utc(r.started_at))


def test_every_project_completes(pipeline_run: PipelineRun) -> None:
    with session_scope(pipeline_run.settings.database_url) as s:
        states = {p.id: p.status.value for p in s.scalars(select(Project))}
    assert states == {
        pipeline_run.lighthouse: "COMPLETED",
        pipeline_run.quay: "COMPLETED",
        pipeline_run.market: "COMPLETED",
    }


def test_the_projects_really_ran_at_the_same_time(pipeline_run: PipelineRun) -> None:
    rows = [r for r in runs(pipeline_run) if r.scene_index is not None]
    spans = {}
    for r in rows:
        lo, hi = spans.get(r.project_id, (r.started_at, r.finished_at))
        spans[r.project_id] = (min(lo, r.started_at), max(hi, r.finished_at))
    (a0, a1), (b0, b1) = spans[pipeline_run.lighthouse], spans[pipeline_run.quay]
    assert a0 < b1 and b0 < a1, "lighthouse and quay chains did not overlap"


def test_scene_n_plus_1_generation_starts_after_scene_n_registry_commit(pipeline_run: PipelineRun) -> None:
    rows = runs(pipeline_run)
    with session_scope(pipeline_run.settings.database_url) as s:
        committed = {
            (sc.project_id, sc.scene_index): sc.scene_manifest.registered_at
            for sc in s.scalars(select(Scene).where(Scene.project_id.in_([pipeline_run.lighthouse, pipeline_run.quay])))
        }
    for project, scenes in ((pipeline_run.lighthouse, 4), (pipeline_run.quay, 3)):
        for n in range(1, scenes):
            register = one(rows, REG, project, n)
            nxt = one(rows, GEN, project, n + 1)
            assert utc(register.finished_at) <= utc(nxt.started_at), (project, n)
            assert utc(committed[(project, n)]) <= utc(nxt.started_at), (project, n)
    # Without a manifest the chain is generation only, still in order.
    assert utc(one(rows, GEN, pipeline_run.market, 1).finished_at) <= utc(
        one(rows, GEN, pipeline_run.market, 2).started_at
    )


def test_analysis_runs_only_on_the_cv_worker_and_nothing_else_does(pipeline_run: PipelineRun) -> None:
    rows = runs(pipeline_run)
    analyses = [r for r in rows if r.task_name == CV]
    assert len(analyses) == 4 + 3
    assert all(r.worker.startswith("cv-cpu0@") and r.queue == "cv" for r in analyses)
    others = [r for r in rows if r.task_name != CV]
    assert others and all(r.worker.startswith("gen@") for r in others)
    assert {r.queue for r in others if r.task_name == GEN} == {"generation"}
    assert {r.queue for r in others if r.task_name == REG} == {"registry"}


def cv_messages(run: PipelineRun) -> list[dict]:
    processed = run.settings.broker_dir / "processed"
    return [json.loads(p.read_text()) for p in processed.glob("*.cv.msg")]


def test_the_project_without_manifest_sends_nothing_to_the_cv_queue(pipeline_run: PipelineRun) -> None:
    messages = cv_messages(pipeline_run)
    assert len(messages) == 7  # the seven analyses of the two manifest projects, and only those
    assert all(m["headers"]["task"] == CV for m in messages)
    market = pipeline_run.market
    assert not any(r.project_id == market and r.task_name != GEN and r.scene_index for r in runs(pipeline_run))
    status = load_status(pipeline_run.settings, market)
    assert {(sc["stages"]["analysis"], sc["stages"]["registry"]) for sc in status["scenes"]} == {("SKIPPED", "SKIPPED")}
    assert all(sc["engines"] is None for sc in status["scenes"])


def test_the_reference_less_character_is_registered_then_reused_as_reference(pipeline_run: PipelineRun) -> None:
    scenes = load_status(pipeline_run.settings, pipeline_run.lighthouse)["scenes"]
    assert "wren" not in scenes[1]["selected_reference_tags"]
    assert scenes[1]["new_asset_tags"] == ["wren"]
    with session_scope(pipeline_run.settings.database_url) as s:
        wren = s.scalar(select(Asset).where(Asset.tag == "wren"))
        assert (wren.source, wren.origin_scene_index, wren.character) == (AssetSource.CLIP_EXTRACT, 2, "wren")
    # Nothing is staged in the test run: auto chose the offline engine and no embedder, and says why.
    assert {(sc["engines"]["face"], sc["engines"]["embedder"]) for sc in scenes} == {("dlib-offline", None)}
    assert all(sc["engines"]["choice"].startswith("auto: offline engine") for sc in scenes)
    for later in scenes[2:]:
        assert later["selected_reference_tags"]["wren"] == "wren"
        assert "wren" in later["matched_tags"], later
        assert later["new_asset_tags"] == []


def numeric_lists(value: object) -> list[int]:
    if isinstance(value, dict):
        return [n for v in value.values() for n in numeric_lists(v)]
    if isinstance(value, list):
        own = [len(value)] if value and all(isinstance(v, float) for v in value) else []
        return own + [n for v in value for n in numeric_lists(v)]
    return []


def test_stored_analysis_has_no_embeddings_and_every_analysed_scene_has_a_score(pipeline_run: PipelineRun) -> None:
    with session_scope(pipeline_run.settings.database_url) as s:
        scenes = list(s.scalars(select(Scene).where(Scene.project_id == pipeline_run.lighthouse)))
        for scene in scenes:
            stored = scene.scene_manifest.cv_analysis_json
            assert stored["status"] == "ok"
            assert stored["engine"]["face"] == "dlib-offline" and "auto" in stored["engine"]["choice"]
            assert max(numeric_lists(stored), default=0) < 16, "an embedding-sized array was stored"
            assert scene.scene_manifest.continuity_score is not None
            assert set(stored["continuity"]["components"]) >= {"identity", "adherence", "cross_scene", "visual"}


def test_a_failed_analysis_degrades_its_scene_and_the_project_goes_on(pipeline_run: PipelineRun) -> None:
    scenes = load_status(pipeline_run.settings, pipeline_run.quay)["scenes"]
    assert scenes[1]["stages"]["analysis"] == "DEGRADED"
    assert "ClipUnreadable" in scenes[1]["degraded_reason"] or "clip" in scenes[1]["degraded_reason"].lower()
    assert scenes[1]["continuity_score"] is None
    assert [sc["stages"]["registry"] for sc in scenes] == ["DONE", "DONE", "DONE"]
    assert scenes[2]["stages"]["analysis"] == "DONE"
    cv_task = next(t for t in scenes[1]["tasks"] if t["name"] == CV)
    assert cv_task["outcome"] == "degraded"


def counts(run: PipelineRun) -> tuple[int, int, int]:
    with session_scope(run.settings.database_url) as s:
        return tuple(s.scalar(select(func.count()).select_from(m)) for m in (Asset, AssetAppearance, Clip))


def test_register_entities_run_twice_on_the_same_input_adds_nothing(pipeline_run: PipelineRun) -> None:
    app, rows = pipeline_run.app, runs(pipeline_run)
    analysis_id = one(rows, CV, pipeline_run.lighthouse, 2).task_id
    payload = app.AsyncResult(analysis_id).get(timeout=30, interval=0.1)
    assert payload["analysis"]["candidates"], "scene 2 should have produced a new-entity candidate"
    before = counts(pipeline_run)
    again = app.send_task(REG, args=(payload,)).get(timeout=120, interval=0.1)
    assert again["new_asset_tags"] == ["wren"]
    assert counts(pipeline_run) == before


def test_generate_clip_run_again_reuses_the_stored_clip(pipeline_run: PipelineRun) -> None:
    app, settings = pipeline_run.app, pipeline_run.settings
    clip = settings.media_root / f"projects/{pipeline_run.lighthouse}/scene-001/clip.mp4"
    stamp, before = clip.stat().st_mtime_ns, counts(pipeline_run)
    ref = {"project_id": pipeline_run.lighthouse, "scene_index": 1}
    again = app.send_task("vidpipe.generate_clip", args=(ref,)).get(timeout=120, interval=0.1)
    assert again["clip_path"].endswith("scene-001/clip.mp4")
    assert clip.stat().st_mtime_ns == stamp and counts(pipeline_run) == before


def test_worker_logs_are_json_lines_naming_each_tasks_project_scene_and_worker(pipeline_run: PipelineRun) -> None:
    logs = pipeline_run.settings.home / "logs"
    entries = [
        json.loads(line)  # any line that is not one JSON object fails here
        for name in ("gen.log", "cv-cpu0.log", "cv-launcher.log")
        for line in (logs / name).read_text().splitlines()
        if line.strip()
    ]
    assert {"ts", "level", "logger", "message", "worker"} <= set(entries[-1])
    by_task: dict[str, set] = {}
    for e in entries:
        if "task_id" in e:
            by_task.setdefault(e["task_id"], set()).add((e.get("project_id"), e.get("scene_index"), e["worker"]))
    rows = runs(pipeline_run)
    chain_runs = {
        one(rows, r.task_name, r.project_id, r.scene_index).task_id: r
        for r in rows
        if r.task_name in (GEN, CV, REG) and r.outcome in ("success", "degraded")
    }
    assert len(chain_runs) >= 10
    for task_id in chain_runs:
        run = next(r for r in rows if r.task_id == task_id)
        assert by_task.get(task_id) == {(run.project_id, run.scene_index, run.worker)}, run.task_name


def test_the_cross_scene_face_consistency_lands_in_the_database_and_in_status_json(pipeline_run: PipelineRun) -> None:
    from tests.helpers import run_vidpipe
    from vidpipe_tasks.consistency import face_consistency, project_faces

    lighthouse = pipeline_run.lighthouse
    with session_scope(pipeline_run.settings.database_url) as s:
        project = s.get(Project, lighthouse)
        faces = project_faces(s, lighthouse)
        recorded = project.face_consistency
    # Mara (scenes 1, 2, 4), Jonas (1, 3, 4) and Wren (registered in 2, reused in 3 and 4) all recur.
    expected = face_consistency(faces)
    assert set(expected["characters"]) == {"mara", "jonas", "wren"}
    assert recorded is not None and abs(recorded - expected["score"]) < 1e-9
    assert expected["characters"]["wren"]["scenes"] == [2, 3, 4]
    shown = json.loads(run_vidpipe(pipeline_run.settings, "status", str(lighthouse), "--json").stdout)
    assert shown["face_consistency"]["score"] == recorded
    assert shown["face_consistency"]["characters"] == expected["characters"]
    table = json.loads(run_vidpipe(pipeline_run.settings, "status", "--json").stdout)["projects"]
    by_id = {p["project_id"]: p["face_consistency"] for p in table}
    assert by_id[lighthouse] == recorded and by_id[pipeline_run.market] is None  # no manifest: no analysis
