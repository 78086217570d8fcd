"""Celery tasks: thin wrappers that decode ids, call a plain function and return JSON.

Run logging, progress events and cancellation are handled once, in `vidpipe_tasks.policy.PipelineTask`.
"""

from __future__ import annotations

from vidpipe_tasks import candidates, stages
from vidpipe_tasks.celery_app import app
from vidpipe_tasks.generators import startup  # noqa: F401 - connects the generation worker's start check
from vidpipe_tasks.policy import PipelineTask
from vidpipe_tasks.settings import Settings


def _settings() -> Settings:
    return app.vidpipe_settings


@app.task(base=PipelineTask, bind=True, name="vidpipe.generate_clip")
def generate_clip(self: PipelineTask, ref: dict) -> dict:
    """Select references from the registry and render one scene's clip (a remote job: submit, then poll)."""
    self.progress("generate", 0, 1)
    # A remote job raises JobPending while it runs: the policy re-queues this task with a countdown.
    result = stages.generate_scene(_settings(), int(ref["project_id"]), int(ref["scene_index"]))
    if result.get("skipped"):
        _drop_scene_links(self)
    return result


def _drop_scene_links(task: PipelineTask) -> None:
    """A skipped scene (content policy) has no clip: remove its analyze/register links from the chain.

    Celery pops the next link from the end of `request.chain` after this task returns; the scene's own
    links are the last entries, and the next scene's generate_clip (immutable) follows them.
    """
    chain = task.request.chain or []
    while chain and chain[-1].get("task") in ("vidpipe.analyze_clip", "vidpipe.register_entities"):
        chain.pop()


class AnalysisTask(PipelineTask):
    """An analysis that hit its hard time limit once is not tried again: its scene degrades (invariant 5)."""

    def after_timeout(self, args: tuple, reason: str) -> dict:
        from gpu_worker.analysis import degraded_result

        ref = args[0]
        # Validates the message and marks the analysis started, as a real run would.
        request = stages.analysis_request(self.settings, ref)
        ids = {"project_id": ref["project_id"], "scene_index": ref["scene_index"]}
        if request is None:  # already registered
            return {**ids, "outcome": "ok", "reason": None, "analysis": {"status": "ok", "duplicate": True}}
        return {**ids, "outcome": "degraded", "reason": reason, "analysis": degraded_result(reason)}


@app.task(base=AnalysisTask, bind=True, name="vidpipe.analyze_clip")
def analyze_clip(self: PipelineTask, ref: dict) -> dict:
    """Analyse a clip on a CV worker; any failure becomes a degraded result so the chain goes on."""
    settings = _settings()
    request = stages.analysis_request(settings, ref)
    ids = {"project_id": ref["project_id"], "scene_index": ref["scene_index"]}
    if request is None:  # already registered: register_entities will return the stored summary
        return {**ids, "outcome": "ok", "reason": None, "analysis": {"status": "ok", "duplicate": True}}
    # Imported here so CPU workers and the client never load the CV stack.
    from gpu_worker.analysis import PROGRESS_STEPS
    from gpu_worker.service import analyze_for_registry

    self.progress("analyze", 0, len(PROGRESS_STEPS), step="start")
    analysis = analyze_for_registry(
        request, settings, progress=lambda step, done, total: self.progress("analyze", done, total, step=step)
    )
    outcome = "ok" if analysis["status"] == "ok" else "degraded"
    return {**ids, "outcome": outcome, "reason": analysis.get("reason"), "analysis": analysis}


@app.task(base=PipelineTask, bind=True, name="vidpipe.register_entities")
def register_entities(self: PipelineTask, payload: dict) -> dict:
    """Commit a scene's analysis to the registry in one transaction before returning."""
    return stages.register_entities(_settings(), payload)


class CandidateTask(PipelineTask):
    """A candidate that fails for good is recorded on its attempt and passed on, not failing the project.

    The scene fails only when every attempt failed (the pick decides), and a chord gets a result from every
    candidate.
    """

    def contained_failure(self, args: tuple, reason: str) -> dict | None:
        if not args or not isinstance(args[0], dict):
            return None
        return candidates.record_failure(self.settings, args[0], reason)


@app.task(base=CandidateTask, bind=True, name="vidpipe.generate_candidate")
def generate_candidate(self: PipelineTask, ref: dict) -> dict:
    """Render one quality attempt of a scene with its own seed (a remote job: submit, then poll)."""
    self.progress("generate", 0, 1, attempt=ref.get("attempt") if isinstance(ref, dict) else None)
    return candidates.generate_attempt(_settings(), ref)


class CandidateAnalysisTask(CandidateTask):
    """An attempt whose analysis hit its hard time limit once is recorded as degraded, not tried again."""

    def after_timeout(self, args: tuple, reason: str) -> dict:
        from gpu_worker.analysis import degraded_result

        return candidates.after_analysis_timeout(self.settings, args[0], reason, degraded_result)


@app.task(base=CandidateAnalysisTask, bind=True, name="vidpipe.analyze_candidate")
def analyze_candidate(self: PipelineTask, ref: dict) -> dict:
    """Analyse one attempt's clip on a CV worker and record its scores (the registry is not touched)."""
    settings = _settings()
    request = candidates.analysis_input(settings, ref)
    analysis = None
    if request is not None:
        from gpu_worker.analysis import PROGRESS_STEPS
        from gpu_worker.service import analyze_for_registry

        self.progress("analyze", 0, len(PROGRESS_STEPS), step="start")
        analysis = analyze_for_registry(
            request, settings, progress=lambda step, done, total: self.progress("analyze", done, total, step=step)
        )
    return candidates.record_analysis(settings, ref, request, analysis)


class PickTask(PipelineTask):
    """The pick's next link is its scene's next round or, once it keeps an attempt, its register_entities."""

    def next_links(self) -> list[dict]:
        links = []
        for link in reversed(self.request.chain or []):
            links.append(link)
            if link.get("task") == "vidpipe.register_entities":
                break
        return links


@app.task(base=PickTask, bind=True, name="vidpipe.pick_attempt")
def pick_attempt(self: PipelineTask, ref: dict) -> dict:
    """After a round: keep the best attempt (then register it) or go on to the next round's candidates."""
    result, _ = candidates.pick_attempt(_settings(), ref)
    if result["final"]:
        _drop_remaining_rounds(self, with_registration=bool(result.get("skipped")))
    return result


def _drop_remaining_rounds(task: PipelineTask, with_registration: bool = False) -> None:
    """A kept attempt: the scene's later rounds (still in `request.chain`, before its register_entities) go.

    A skipped scene (every attempt blocked by content policy, VIDPIPE_CONTENT_POLICY=skip-scene) drops its
    register_entities too; the next scene's links follow it.
    """
    chain = task.request.chain or []
    while chain and chain[-1].get("task") != "vidpipe.register_entities":
        chain.pop()
    if with_registration and chain:
        chain.pop()


@app.task(base=PipelineTask, bind=True, name="vidpipe.finalize_project")
def finalize_project(self: PipelineTask, ref: dict) -> dict:
    """Mark the project completed after its last scene."""
    return stages.finalize_project(_settings(), int(ref["project_id"]))


# A plain task, outside the run log: beat sends one every few seconds, and a sweep that fails (the database
# restarting) is simply replaced by the next one.
@app.task(bind=True, name="vidpipe.recover_stalled", ignore_result=True)
def recover_stalled(self) -> dict:  # noqa: ANN001 - a celery Task
    """Beat's sweep: resume projects whose chain was lost (nothing running, nothing queued, not finished)."""
    from vidpipe_tasks.recovery import sweep

    return sweep(self.app, _settings()).as_dict()
