"""Celery tasks: thin wrappers that decode ids, call a plain function and return JSON."""

from __future__ import annotations

import logging

from celery.exceptions import Ignore

from vidpipe_tasks import stages
from vidpipe_tasks.celery_app import app
from vidpipe_tasks.policy import PipelineTask

log = logging.getLogger(__name__)


def _settings():
    return app.vidpipe_settings


def _stop_if_cancelled(exc: stages.ProjectCancelled) -> None:
    # Ignore ends this task without failing it and without sending the rest of the chain.
    log.warning("%s; stopping its chain", exc)
    raise Ignore() from exc


@app.task(base=PipelineTask, bind=True, name="vidpipe.generate_clip")
def generate_clip(self: PipelineTask, ref: dict) -> dict:
    """Select references from the registry and render one scene's clip."""
    try:
        self.progress("generate", 0, 1)
        return stages.generate_scene(_settings(), int(ref["project_id"]), int(ref["scene_index"]))
    except stages.ProjectCancelled as exc:
        _stop_if_cancelled(exc)


@app.task(base=PipelineTask, bind=True, name="vidpipe.analyze_clip")
def analyze_clip(self: PipelineTask, ref: dict) -> dict:
    """Analyse a clip on a CV worker; any failure becomes a degraded result so the chain goes on."""
    settings = _settings()
    try:
        request = stages.analysis_request(settings, ref)
    except stages.ProjectCancelled as exc:
        _stop_if_cancelled(exc)
    # Imported here so CPU workers and the client never load the CV stack.
    from gpu_worker.service import analyze_for_registry

    self.progress("analyze", 0, 1)
    analysis = analyze_for_registry(request, settings)
    outcome = "ok" if analysis["status"] == "ok" else "degraded"
    return {**_ids(ref), "outcome": outcome, "reason": analysis.get("reason"), "analysis": analysis}


@app.task(base=PipelineTask, bind=True, name="vidpipe.register_entities")
def register_entities(self: PipelineTask, payload: dict) -> dict:
    """Commit a scene's analysis to the registry in one transaction before returning."""
    try:
        return stages.register_entities(_settings(), payload)
    except stages.ProjectCancelled as exc:
        _stop_if_cancelled(exc)


@app.task(base=PipelineTask, bind=True, name="vidpipe.finalize_project")
def finalize_project(self: PipelineTask, ref: dict) -> dict:
    """Mark the project completed after its last scene."""
    try:
        return stages.finalize_project(_settings(), int(ref["project_id"]))
    except stages.ProjectCancelled as exc:
        _stop_if_cancelled(exc)


def _ids(ref: dict) -> dict:
    return {"project_id": ref["project_id"], "scene_index": ref["scene_index"]}
