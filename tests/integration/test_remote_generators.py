"""Remote generators for real: worker processes driving the fake ComfyUI and the real google-genai SDK against
the fake Gemini API (each its own server process), with CV analysis and progressive enrichment downstream."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from PIL import Image
from sqlalchemy import select

from tests.conftest import make_settings
from tests.fakes.servers import FakeServer, fake_comfyui, fake_gemini
from tests.helpers import enqueue_and_wait, pipeline_workers, run_vidpipe, wait_projects_finished, wait_until
from vidpipe_tasks.celery_app import create_app
from vidpipe_tasks.cli.status import load_status
from vidpipe_tasks.cli.workers import WorkerProcess, start_worker, stop_workers, wait_ready
from vidpipe_tasks.db.models import GenerationJob, Scene, TaskRun
from vidpipe_tasks.db.session import session_scope
from vidpipe_tasks.generators.prompting import BOARD_KEY
from vidpipe_tasks.generators.remote import client_job_id
from vidpipe_tasks.settings import GENERATION_QUEUE, REGISTRY_QUEUE, Settings
from vidpipe_tasks.storyboard import load_storyboard
from vidpipe_tasks.workflow import create_project, enqueue_project, resume

API_KEY = "fake-key-for-tests"
RETRY_AFTER_S = 2.0


def storyboard(folder: Path, name: str, generator: str, scenes: list[dict], **extra: object) -> Path:
    """A storyboard file; with `manifest`, Mara has a reference image and Wren has none (she is invented)."""
    board = {"title": name, "generator": generator, "defaults": {"duration_s": 3, "fps": 12, "size": "640x360"}}
    if extra.pop("manifest", False):
        board["manifest"] = {
            "name": f"{name}-manifest",
            "assets": [{"type": "character", "tag": "mara", "name": "Mara", "reference_image": "stock:face/t1-0"}],
        }
        board["characters"] = [{"tag": "wren", "name": "Wren"}]
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**board, **extra, "scenes": scenes}))
    return path


def submit(settings: Settings, path: Path) -> int:
    return create_project(settings, path, load_storyboard(path))


def jobs(settings: Settings, project_id: int) -> list[GenerationJob]:
    with session_scope(settings.database_url) as s:
        stmt = select(GenerationJob).where(GenerationJob.project_id == project_id)
        return list(s.scalars(stmt.order_by(GenerationJob.scene_index, GenerationJob.attempt)))


def comfy_ids(project_id: int, scenes: int, submissions: int = 2) -> set[str]:
    """The prompt ids vidpipe can have sent for a project (deterministic per scene, attempt and submission)."""
    return {client_job_id(project_id, s, 1, n) for s in range(1, scenes + 1) for n in range(submissions)}


def enrichment_scenes() -> list[dict]:
    return [
        {
            "description": "Wren steps off a boat and greets Mara.",
            "location": "harbour",
            "characters": ["mara", "wren"],
        },
        {"description": "Wren walks alone along the quay.", "location": "harbour", "characters": ["wren"]},
    ]


@dataclass
class RemoteRun:
    settings: Settings
    comfy: FakeServer
    gemini: FakeServer
    projects: dict[str, int]
    states: dict[str, str]


@pytest.fixture(scope="module")
def remote_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RemoteRun]:
    """Four projects at once on one generation worker and the CV launcher; each fake rejects one submit with 429."""
    root = tmp_path_factory.mktemp("remote")
    retry = ("--reject-429", "1", "--retry-after", f"{RETRY_AFTER_S:g}", "--job-seconds", "1.5")
    comfy = fake_comfyui(root / "comfy", *retry)
    gemini = fake_gemini(root / "gemini", API_KEY, *retry)
    settings = make_settings(
        root / "work",
        comfyui_servers=comfy.url,
        veo_api_key=API_KEY,
        veo_base_url=f"{gemini.url}/",
        generation_poll_s=0.5,
        retry_backoff_base=0.5,
        generation_prices="comfyui=0.02,veo=0.40",
    )
    boards = root / "boards"
    boards.mkdir()
    projects = {
        "comfy": submit(settings, storyboard(boards, "comfy-enrich", "comfyui", enrichment_scenes(), manifest=True)),
        "veo": submit(settings, storyboard(boards, "veo-enrich", "veo", enrichment_scenes(), manifest=True)),
        "blocked": submit(
            settings,
            storyboard(boards, "veo-blocked", "veo", [{"description": "FAKE_BLOCKED scene"}, {"description": "next"}]),
        ),
        # 37 frames at 12 fps = 3.08 s at $0.02/s = $0.0617 per scene: the second scene would exceed $0.10.
        "budget": submit(
            settings,
            storyboard(boards, "budget", "comfyui", [{"description": "one"}, {"description": "two"}], budget_usd=0.10),
        ),
        "chained": submit(
            settings,
            storyboard(
                boards, "chained", "comfyui", [{"description": "one"}, {"description": "two"}], chain_first_frame=True
            ),
        ),
    }
    try:
        with pipeline_workers(settings) as workers:
            finished = enqueue_and_wait(settings, workers, list(projects.values()), timeout=300)
            yield RemoteRun(settings, comfy, gemini, projects, dict(zip(projects, finished, strict=True)))
    finally:
        comfy.stop()
        gemini.stop()


@pytest.mark.parametrize("name", ["comfy", "veo"])
def test_a_manifest_project_runs_end_to_end_with_enrichment_through_each_adapter(remote_run: RemoteRun, name) -> None:
    project = remote_run.projects[name]
    assert remote_run.states[name] == "COMPLETED"
    scenes = load_status(remote_run.settings, project)["scenes"]
    # Scene 1 had no reference for Wren: the provider invented her and analysis registered the face.
    assert "wren" not in scenes[0]["selected_reference_tags"] and scenes[0]["new_asset_tags"] == ["wren"]
    # Scene 2 sent that registered face as Wren's reference, and analysis recognised it.
    assert scenes[1]["selected_reference_tags"] == {"wren": "wren"}
    assert "wren" in scenes[1]["matched_tags"] and scenes[1]["new_asset_tags"] == []
    rows = jobs(remote_run.settings, project)
    assert [(j.scene_index, j.state, j.resubmissions) for j in rows] == [(1, "downloaded", 0), (2, "downloaded", 0)]
    assert all(j.cost_estimate > 0 and j.job_id for j in rows)


def test_comfyui_received_the_registered_face_as_the_second_scenes_reference(remote_run: RemoteRun) -> None:
    project = remote_run.projects["comfy"]
    uploaded = remote_run.comfy.root / "input" / f"vidpipe-p{project}-s2-start_image.png"
    with Image.open(uploaded) as board:
        assert json.loads(board.info[BOARD_KEY])["tags"] == ["wren"]
    with session_scope(remote_run.settings.database_url) as s:
        scene = s.scalar(select(Scene).where(Scene.project_id == project, Scene.scene_index == 2))
        reference = scene.scene_manifest.manifest_json["references"]["wren"]
    assert reference["source"] == "CLIP_EXTRACT" and reference["reference_image"]


def test_each_scene_was_submitted_exactly_once_apart_from_the_429(remote_run: RemoteRun) -> None:
    comfy = [s["prompt_id"] for s in remote_run.comfy.submissions()]
    for name, scenes in (("comfy", 2), ("budget", 1)):
        mine = [i for i in comfy if i in comfy_ids(remote_run.projects[name], 2)]
        assert len(mine) == len(set(mine)) == scenes, (name, mine)
    veo_prompts = [s["prompt"] for s in remote_run.gemini.submissions()]
    assert len(veo_prompts) == 2 + 1  # the veo project's two scenes, the blocked scene once (never retried)
    assert sum("FAKE_BLOCKED" in p for p in veo_prompts) == 1


def test_a_429_is_retried_no_sooner_than_retry_after(remote_run: RemoteRun) -> None:
    for server, key in ((remote_run.comfy, "prompt_id"), (remote_run.gemini, "prompt")):
        (rejected,) = server.rejections()
        accepted = [s for s in server.submissions() if s[key] == rejected[key]]
        assert len(accepted) == 1, (server.module, rejected)
        assert accepted[0]["time"] - rejected["time"] >= RETRY_AFTER_S - 0.2
    with session_scope(remote_run.settings.database_url) as s:
        retried = s.scalars(select(TaskRun).where(TaskRun.task_name == "vidpipe.generate_clip", TaskRun.retries > 0))
        assert sum(1 for _ in retried) >= 2


def failed_generation(run: RemoteRun, name: str) -> str:
    """The task-run detail of the project's generate_clip that failed for good: "reason: message"."""
    with session_scope(run.settings.database_url) as s:
        stmt = select(TaskRun.detail).where(
            TaskRun.project_id == run.projects[name],
            TaskRun.task_name == "vidpipe.generate_clip",
            TaskRun.outcome == "failure",
        )
        return s.scalar(stmt)


def test_content_policy_fails_the_project_with_the_providers_reasons(remote_run: RemoteRun) -> None:
    assert remote_run.states["blocked"] == "FAILED"
    status = load_status(remote_run.settings, remote_run.projects["blocked"])
    first, second = status["scenes"]
    assert first["stages"]["generation"] == "FAILED" and second["stages"]["generation"] == "PENDING"
    (job,) = first["generation_jobs"]
    assert job["state"] == "failed" and job["error"]["reason"] == "content_policy"
    assert "safety settings" in job["error"]["message"]
    assert "Veo filtered the video" in (first["failure_reason"] or "")
    assert failed_generation(remote_run, "blocked").startswith("content_policy: ")


def test_the_budget_stops_the_project_before_the_job_that_would_exceed_it(remote_run: RemoteRun) -> None:
    assert remote_run.states["budget"] == "FAILED"
    status = load_status(remote_run.settings, remote_run.projects["budget"])
    assert status["budget_usd"] == 0.10 and status["spend_usd"] == pytest.approx(0.0617, abs=1e-3)
    first, second = status["scenes"]
    assert first["stages"]["generation"] == "DONE" and second["stages"]["generation"] == "FAILED"
    assert second["generation_jobs"] == []  # nothing was submitted, nothing paid
    assert "over the budget of $0.10" in (second["failure_reason"] or "")
    assert failed_generation(remote_run, "budget").startswith("budget_exceeded: ")
    table = run_vidpipe(remote_run.settings, "status").stdout
    assert "$0.06" in table


def test_first_frame_chaining_sends_the_previous_scenes_last_frame_as_the_start_image(remote_run: RemoteRun) -> None:
    import av
    import numpy as np

    assert remote_run.states["chained"] == "COMPLETED"
    project, inputs = remote_run.projects["chained"], remote_run.comfy.root / "input"
    assert not list(inputs.glob(f"vidpipe-p{project}-s1-*"))  # scene 1: no references, nothing to chain from
    clip = load_status(remote_run.settings, project)["scenes"][0]["clip_path"]
    with av.open(str(remote_run.settings.media_root / clip)) as container:
        *_, last = container.decode(video=0)
    with Image.open(inputs / f"vidpipe-p{project}-s2-start_image.png") as start:
        assert np.array_equal(np.asarray(start.convert("RGB")), np.asarray(last.to_image()))


# --- a generation worker killed while its job polls; a ComfyUI server that restarts ----------------------------


@pytest.fixture
def slow_comfy(tmp_path: Path) -> Iterator[tuple[Settings, FakeServer, WorkerProcess]]:
    comfy = fake_comfyui(tmp_path / "comfy", "--job-seconds", "6")
    settings = make_settings(tmp_path / "work", comfyui_servers=comfy.url, generation_poll_s=0.5)
    worker = start_worker(settings, "gen", [GENERATION_QUEUE, REGISTRY_QUEUE], settings.home / "logs")
    try:
        wait_ready([worker])
        yield settings, comfy, worker
    finally:
        comfy.stop()


def polling(settings: Settings, project_id: int) -> GenerationJob | None:
    with session_scope(settings.database_url) as s:
        run = s.scalar(select(TaskRun).where(TaskRun.project_id == project_id, TaskRun.outcome == "polling"))
        job = s.scalar(select(GenerationJob).where(GenerationJob.project_id == project_id))
        return job if run is not None and job is not None and job.state in ("queued", "running") else None


def test_a_generation_worker_killed_while_polling_leaves_exactly_one_submission(slow_comfy, tmp_path) -> None:
    settings, comfy, worker = slow_comfy
    project = submit(settings, storyboard(tmp_path, "killed", "comfyui", [{"description": "a long shot"}]))
    enqueue_project(create_app(settings), settings, project)
    job = wait_until(lambda: polling(settings, project), "the job to be polled", timeout=60)
    # Given the worker dies while the job renders (its countdown message dies with it)
    os.killpg(worker.process.pid, signal.SIGKILL)
    worker.process.wait()
    again = start_worker(settings, "gen2", [GENERATION_QUEUE, REGISTRY_QUEUE], settings.home / "logs")
    try:
        wait_ready([again])
        # When the project is resumed, generate_clip runs again
        resume(create_app(settings), settings, project)
        assert wait_projects_finished(settings, [project], [again], timeout=120) == ["COMPLETED"]
    finally:
        stop_workers([again])
    # Then it polled the stored job to completion: one submission, no resubmission
    assert [s["prompt_id"] for s in comfy.submissions()] == [job.job_id]
    (row,) = jobs(settings, project)
    assert (row.job_id, row.state, row.resubmissions, row.attempt) == (job.job_id, "downloaded", 0, 1)


def test_a_comfyui_restart_that_forgets_the_job_gets_exactly_one_resubmission(slow_comfy, tmp_path) -> None:
    settings, comfy, worker = slow_comfy
    project = submit(settings, storyboard(tmp_path, "restart", "comfyui", [{"description": "a long shot"}]))
    enqueue_project(create_app(settings), settings, project)
    try:
        first = wait_until(lambda: polling(settings, project), "the job to be polled", timeout=60)
        comfy.restart("--job-seconds", "1")  # queue and history are gone; uploads stay on disk
        assert wait_projects_finished(settings, [project], [worker], timeout=120) == ["COMPLETED"]
    finally:
        stop_workers([worker])
    (row,) = jobs(settings, project)
    assert (row.state, row.resubmissions) == ("downloaded", 1) and row.job_id != first.job_id
    assert [s["prompt_id"] for s in comfy.submissions()] == [first.job_id, row.job_id]
    assert row.cost_estimate == pytest.approx(2 * first.cost_estimate)


def test_content_policy_can_skip_the_scene_and_let_the_chain_go_on(tmp_path: Path) -> None:
    gemini = fake_gemini(tmp_path / "gemini", API_KEY, "--job-seconds", "0.5")
    settings = make_settings(
        tmp_path / "work",
        veo_api_key=API_KEY,
        veo_base_url=f"{gemini.url}/",
        generation_poll_s=0.3,
        content_policy="skip-scene",
    )
    scenes = [
        {"description": "FAKE_BLOCKED: Mara on the quay", "characters": ["mara"]},
        {"description": "Wren arrives.", "characters": ["mara", "wren"]},
    ]
    project = submit(settings, storyboard(tmp_path, "skipping", "veo", scenes, manifest=True))
    try:
        with pipeline_workers(settings) as workers:
            assert enqueue_and_wait(settings, workers, [project], timeout=180) == ["COMPLETED"]
    finally:
        gemini.stop()
    first, second = load_status(settings, project)["scenes"]
    assert first["stages"] == {"generation": "SKIPPED", "analysis": "SKIPPED", "registry": "SKIPPED"}
    assert first["clip_path"] is None and first["generation_jobs"][0]["error"]["reason"] == "content_policy"
    # The skipped scene's analyze/register links were dropped; the next scene ran its whole chain.
    assert {t["name"] for t in first["tasks"]} == {"vidpipe.generate_clip"}
    assert second["stages"] == {"generation": "DONE", "analysis": "DONE", "registry": "DONE"}
    assert second["new_asset_tags"] == ["wren"]
