"""Scenes as quality attempts: generate and analyse one attempt, record it, pick the one to register.

The work of the candidate tasks as plain functions (no broker). Every side effect is keyed on
(project, scene, attempt): a redelivered task finds its `scene_attempts` row and reuses what it recorded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from vidpipe_tasks import media
from vidpipe_tasks.db.models import (
    Clip,
    GenerationJob,
    ProjectStatus,
    Scene,
    SceneAttempt,
    SceneManifest,
    StageStatus,
)
from vidpipe_tasks.db.session import session_scope
from vidpipe_tasks.errors import MessageIgnored, PermanentStageError, TransientError
from vidpipe_tasks.payloads import CandidateRef, CandidateResult, KeptAttempt, PickRef
from vidpipe_tasks.quality import (
    AttemptScore,
    Decision,
    QualityPolicy,
    attempt_seed,
    composite_score,
    decide,
    judged_scores,
    passes_gate,
    quality_for,
)
from vidpipe_tasks.registry import strip_embeddings
from vidpipe_tasks.settings import Settings
from vidpipe_tasks.stages import load_scene, message_ids, registry_request, usable_reference

log = logging.getLogger(__name__)

#: Attempt states.
GENERATING, GENERATED, ANALYSED, FAILED = "generating", "generated", "analysed", "failed"


def attempt_ids(payload: object) -> tuple[int, int, int]:
    """(project, scene, attempt) a candidate message names; anything else is refused."""
    project_id, scene_index = message_ids(payload)
    attempt = payload.get("attempt")
    if not isinstance(attempt, int) or isinstance(attempt, bool) or not 1 <= attempt <= 20:
        raise MessageIgnored(f"message names no valid attempt: {attempt!r}")
    return project_id, scene_index, attempt


def attempt_ref(row: SceneAttempt, **extra: object) -> CandidateRef:
    """The JSON that travels from generate_candidate to analyze_candidate: ids and paths only."""
    return {
        "project_id": row.project_id,
        "scene_index": row.scene_index,
        "attempt": row.attempt,
        "clip_path": row.clip_path,
        "state": row.state,
        **extra,
    }


def _registered(scene: Scene) -> bool:
    return scene.scene_manifest is not None and scene.scene_manifest.registered_at is not None


def _policy(settings: Settings, scene: Scene) -> QualityPolicy:
    return quality_for(settings, scene.project.storyboard_json or {})


def _attempt_row(session: Session, scene: Scene, attempt: int, policy: QualityPolicy) -> SceneAttempt:
    """The attempt's row, created on first use (a concurrent duplicate creating it too is retried)."""
    row = session.scalar(
        select(SceneAttempt).where(
            SceneAttempt.project_id == scene.project_id,
            SceneAttempt.scene_index == scene.scene_index,
            SceneAttempt.attempt == attempt,
        )
    )
    if row is not None:
        return row
    row = SceneAttempt(
        project_id=scene.project_id,
        scene_index=scene.scene_index,
        attempt=attempt,
        round=policy.round_of(attempt),
        seed=attempt_seed(scene.project_id, attempt),
        state=GENERATING,
        references={},
        kept=False,
        cost=0.0,
    )
    session.add(row)
    try:
        session.flush()
    except IntegrityError as exc:  # another delivery of this attempt inserted it first: run again, reuse it
        raise TransientError(f"attempt {attempt} of scene {scene.scene_index} was being created concurrently") from exc
    return row


def _find_row(session: Session, project_id: int, scene_index: int, attempt: int) -> SceneAttempt | None:
    return session.scalar(
        select(SceneAttempt).where(
            SceneAttempt.project_id == project_id,
            SceneAttempt.scene_index == scene_index,
            SceneAttempt.attempt == attempt,
        )
    )


def _clip_complete(settings: Settings, row: SceneAttempt) -> bool:
    info = row.clip_info or {}
    if not row.clip_path or not media.usable_file(settings.media_root, row.clip_path):
        return False
    return media.absolute(settings.media_root, row.clip_path).stat().st_size == info.get("size_bytes")


# -- generate -----------------------------------------------------------------------------------------------


def generate_attempt(settings: Settings, payload: CandidateRef) -> CandidateRef:
    """Render one attempt of a scene (its own seed, clip path and provider job); reuse a complete one.

    With a remote generator this runs once per poll, as generate_clip does (JobPending in between).
    """
    from vidpipe_tasks.generators.dispatch import plan_for, render
    from vidpipe_tasks.stages import _clip_request, _first_frame, _remove_temps_of_killed_attempts

    project_id, scene_index, attempt = attempt_ids(payload)
    with session_scope(settings.database_url) as s:
        scene = load_scene(s, project_id, scene_index)
        _require_manifest(scene, "generate_candidate")
        if _registered(scene):
            return {"project_id": project_id, "scene_index": scene_index, "attempt": attempt, "state": "registered"}
        policy = _policy(settings, scene)
        if attempt > policy.total_attempts:
            raise MessageIgnored(f"attempt {attempt} is beyond the project's {policy.total_attempts} attempts")
        row = _attempt_row(s, scene, attempt, policy)
        if row.state == FAILED:
            return attempt_ref(row, failed=True, reason=row.error)
        if row.state in (GENERATED, ANALYSED) and _clip_complete(settings, row):
            return attempt_ref(row)
        relative = media.attempt_clip_path(project_id, scene_index, attempt)
        if row.state == GENERATING and _adopt_orphan(settings, s, row, relative):
            return attempt_ref(row)
        _remove_temps_of_killed_attempts(settings, media.attempt_dir(project_id, scene_index, attempt))
        if scene.project.status == ProjectStatus.PENDING:
            scene.project.status = ProjectStatus.RUNNING
        if scene.generation_status != StageStatus.DONE:
            scene.generation_status = StageStatus.RUNNING
        plan = plan_for(settings, scene.project.storyboard_json or {})
        if not row.references:  # chosen once per attempt: a poll or redelivery renders from the same ones
            row.references = _choose_references(s, settings, scene)
        refs = {c: r["reference_image"] for c, r in row.references.items()}
        extra = {"negative_prompt": plan.negative_prompt}
        if plan.chains_frames and scene.scene_index > 1:
            extra["first_frame"] = _first_frame(settings, s, scene)
        request = _clip_request(settings, scene, refs, extra, attempt=attempt, seed=row.seed, output=relative)
    info = render(settings, plan, request)
    with session_scope(settings.database_url) as s:
        row = _find_row(s, project_id, scene_index, attempt)
        row.clip_path = relative
        row.clip_info = {
            "size_bytes": info.path.stat().st_size,
            "frame_count": info.frame_count,
            "fps": info.fps,
            "width": info.width,
            "height": info.height,
            "generator": plan.generator,
            "appearances": dict(info.appearances),
        }
        row.cost = attempt_cost(s, project_id, scene_index, attempt)
        row.state, row.generated_at, row.error = GENERATED, datetime.now(UTC), None
        s.flush()
        return attempt_ref(row)


def _adopt_orphan(settings: Settings, session: Session, row: SceneAttempt, relative: str) -> bool:
    """Record an attempt's clip that has no record (its render finished, the write after it did not).

    Files appear only by atomic rename, so the clip is complete; rendering it again would pay twice.
    """
    path = media.absolute(settings.media_root, relative)
    if not path.is_file():
        return False
    from vidpipe_tasks.generators.probe import probe_clip  # PyAV stays off the registry path

    try:
        frames, fps, width, height = probe_clip(path)
    except Exception as exc:  # noqa: BLE001 - unreadable: render it again (replaced atomically)
        log.warning("orphan clip %s is unreadable (%s); rendering the attempt again", relative, exc)
        return False
    log.info("attempt %s of scene %s: adopting orphan clip %s", row.attempt, row.scene_index, relative)
    row.clip_path = relative
    row.clip_info = {
        "size_bytes": path.stat().st_size,
        "frame_count": frames,
        "fps": fps,
        "width": width,
        "height": height,
        "generator": settings.generator,
        "appearances": {"reconciled": "orphan clip adopted after a lost database write"},
    }
    row.cost = attempt_cost(session, row.project_id, row.scene_index, row.attempt)
    row.state, row.generated_at = GENERATED, datetime.now(UTC)
    return True


def _choose_references(session: Session, settings: Settings, scene: Scene) -> dict:
    """The registry's references for the scene's characters, as the scene manifest would record them."""
    from vidpipe_tasks.registry import select_references

    chosen = select_references(
        session,
        scene.project.manifest_id,
        scene.characters,
        usable=lambda a: usable_reference(settings, a),
        project_id=scene.project_id,
    )
    return {
        c: {"asset_id": a.id, "tag": a.tag, "source": a.source.value, "reference_image": a.reference_image}
        for c, a in chosen.items()
    }


def attempt_cost(session: Session, project_id: int, scene_index: int, attempt: int) -> float:
    """Estimated USD of the attempt's provider jobs (resubmissions included); 0 for a local generator."""
    from vidpipe_tasks.generators.remote import UNBILLED_STATES

    total = session.scalar(
        select(func.coalesce(func.sum(GenerationJob.cost_estimate), 0.0)).where(
            GenerationJob.project_id == project_id,
            GenerationJob.scene_index == scene_index,
            GenerationJob.scene_attempt == attempt,
            GenerationJob.state.not_in(UNBILLED_STATES),
        )
    )
    return round(float(total or 0.0), 4)


def record_failure(settings: Settings, payload: CandidateRef, reason: str) -> CandidateRef | None:
    """Mark an attempt failed for good; returns the failed-candidate result the chain passes on.

    None when the payload names no attempt (the policy then fails the task as usual).
    """
    try:
        project_id, scene_index, attempt = attempt_ids(payload)
    except MessageIgnored:
        return None
    with session_scope(settings.database_url) as s:
        scene = load_scene(s, project_id, scene_index)
        row = _attempt_row(s, scene, attempt, _policy(settings, scene))
        if row.state != ANALYSED:
            row.state, row.error = FAILED, reason[:2000]
            row.cost = attempt_cost(s, project_id, scene_index, attempt)
        return attempt_ref(row, failed=row.state == FAILED, reason=row.error)


def _require_manifest(scene: Scene, task: str) -> None:
    if scene.project.manifest_id is None:
        raise MessageIgnored(f"{task} for project {scene.project_id}, which has no manifest: ignored")


# -- analyse ------------------------------------------------------------------------------------------------


def analysis_input(settings: Settings, payload: CandidateRef) -> dict | None:
    """The CV worker's input for one attempt's clip; None when there is nothing to analyse.

    Nothing to analyse: the attempt failed, was analysed already (a redelivery), or the scene is registered.

    Raises:
        MessageIgnored: the attempt has no clip yet (an out-of-order or crafted message).

    """
    project_id, scene_index, attempt = attempt_ids(payload)
    with session_scope(settings.database_url) as s:
        scene = load_scene(s, project_id, scene_index)
        _require_manifest(scene, "analyze_candidate")
        row = _find_row(s, project_id, scene_index, attempt)
        if _registered(scene) or (row is not None and row.state in (FAILED, ANALYSED)):
            return None
        if row is None or row.state != GENERATED or not row.clip_path:
            raise MessageIgnored(f"analyze_candidate for attempt {attempt} of scene {scene_index}: no clip yet")
        if scene.analysis_status != StageStatus.DONE:
            scene.analysis_status = StageStatus.RUNNING
        crops = media.attempt_crops_dir(project_id, scene_index, attempt)
        return registry_request(s, settings, scene, row.clip_path, crops)


def record_analysis(
    settings: Settings, payload: CandidateRef, request: dict | None, analysis: dict | None
) -> CandidateResult:
    """Store an attempt's analysis and scores (first one wins); returns the small result the chord collects.

    Args:
        settings: the installation.
        payload: the message (project, scene, attempt).
        request: what analysis_input returned (None: nothing was analysed now).
        analysis: the CV worker's result for `request` (None with it).

    """
    project_id, scene_index, attempt = attempt_ids(payload)
    with session_scope(settings.database_url) as s:
        row = _find_row(s, project_id, scene_index, attempt)
        if row is None and payload.get("state") == "registered" and _registered(load_scene(s, project_id, scene_index)):
            # A late candidate of a scene registered meanwhile: nothing recorded, nothing to do.
            return {**_ids(project_id, scene_index, attempt), "outcome": "registered", "score": None, "reason": None}
        if row is None:
            raise MessageIgnored(f"attempt {attempt} of scene {scene_index} was never generated")
        if analysis is not None and row.state == GENERATED:
            referenced = {e["tag"] for e in request["registry"]}
            identity, adherence = judged_scores(analysis, referenced, request["declared_characters"])
            row.identity, row.adherence = identity, adherence
            row.score = composite_score(identity, adherence) if analysis.get("status") == "ok" else None
            row.summary = strip_embeddings(analysis)
            row.analysis = analysis
            row.state, row.analysed_at = ANALYSED, datetime.now(UTC)
        return _small_result(row)


def _ids(project_id: int, scene_index: int, attempt: int) -> dict:
    return {"project_id": project_id, "scene_index": scene_index, "attempt": attempt}


def _small_result(row: SceneAttempt) -> CandidateResult:
    outcome = {ANALYSED: "ok", FAILED: "failed"}.get(row.state, row.state)
    if row.state == ANALYSED and (row.summary or {}).get("status") != "ok":
        outcome = "degraded"
    return {
        "project_id": row.project_id,
        "scene_index": row.scene_index,
        "attempt": row.attempt,
        "outcome": outcome,
        "score": row.score,
        "reason": row.error,
    }


# -- pick ---------------------------------------------------------------------------------------------------


def scores_of(rows: list[SceneAttempt], attempts: range) -> list[AttemptScore]:
    """What the pick knows of attempts 1..N: an attempt without an analysis counts as failed."""
    by_attempt = {r.attempt: r for r in rows}
    scores = []
    for n in range(1, attempts.stop):
        row = by_attempt.get(n)
        if row is None or row.state != ANALYSED:
            scores.append(AttemptScore(n, failed=True))
            continue
        ok = (row.summary or {}).get("status") == "ok"
        scores.append(AttemptScore(n, analysed_ok=ok, identity=row.identity, adherence=row.adherence))
    return scores


def pick_attempt(settings: Settings, payload: PickRef) -> tuple[PickRef | KeptAttempt, Decision]:
    """After a round: keep the best attempt so far (and make it the scene's clip), or ask for another round.

    Returns:
        (the result for the next link, the decision). A kept attempt's result names it for register_entities.

    Raises:
        PermanentStageError: every attempt failed (reason "all_attempts_failed"): the scene fails.

    """
    project_id, scene_index = message_ids(payload)
    round_ = payload.get("round")
    if not isinstance(round_, int) or isinstance(round_, bool) or not 1 <= round_ <= 5:
        raise MessageIgnored(f"pick_attempt names no valid round: {round_!r}")
    with session_scope(settings.database_url) as s:
        scene = load_scene(s, project_id, scene_index)
        _require_manifest(scene, "pick_attempt")
        ids = {"project_id": project_id, "scene_index": scene_index}
        kept = s.scalar(select(SceneAttempt).where(*_scene_rows(project_id, scene_index), SceneAttempt.kept))
        if kept is not None:  # a redelivery: the decision was taken and committed
            return {**ids, "attempt": kept.attempt, "final": True}, Decision("keep", kept.attempt, "already kept")
        policy = _policy(settings, scene)
        rows = list(s.scalars(select(SceneAttempt).where(*_scene_rows(project_id, scene_index))))
        scores = scores_of(rows, policy.round_attempts(round_))
        decision = decide(policy, round_, scores)
        log.info("project %s scene %s round %s: %s", project_id, scene_index, round_, decision.reason)
        for score in scores:
            row = next((r for r in rows if r.attempt == score.attempt), None)
            if row is not None and row.state == ANALYSED:
                row.passed_gate = passes_gate(policy, score)
        if decision.action == "fail":
            if _skip_blocked(settings, rows):
                # As a blocked scene of the plain chain: no clip, and the chain goes on (VIDPIPE_CONTENT_POLICY).
                scene.generation_status = scene.analysis_status = scene.registry_status = StageStatus.SKIPPED
                return {**ids, "final": True, "skipped": True, "reason": "content_policy"}, decision
            reasons = "; ".join(f"attempt {r.attempt}: {r.error}" for r in sorted(rows, key=lambda r: r.attempt))
            raise PermanentStageError("all_attempts_failed", f"{decision.reason}: {reasons}"[:2000])
        if decision.action == "next_round":
            return {**ids, "round": round_, "final": False}, decision
        _keep(scene, next(r for r in rows if r.attempt == decision.attempt))
        return {**ids, "attempt": decision.attempt, "final": True}, decision


def _skip_blocked(settings: Settings, rows: list[SceneAttempt]) -> bool:
    """Every attempt was blocked by content policy, and VIDPIPE_CONTENT_POLICY=skip-scene."""
    blocked = [(r.error or "").startswith("content_policy") for r in rows]
    return settings.content_policy == "skip-scene" and bool(blocked) and all(blocked)


def _scene_rows(project_id: int, scene_index: int) -> tuple:
    return SceneAttempt.project_id == project_id, SceneAttempt.scene_index == scene_index


def _keep(scene: Scene, row: SceneAttempt) -> None:
    """The kept attempt becomes the scene's clip and reference record; register_entities then commits it."""
    row.kept = True
    info = row.clip_info or {}
    clip = scene.clip or Clip(scene_id=scene.id)
    clip.path, clip.size_bytes = row.clip_path, int(info.get("size_bytes", 0))
    clip.frame_count, clip.fps = int(info.get("frame_count", 0)), int(info.get("fps", scene.fps))
    clip.width, clip.height = int(info.get("width", scene.width)), int(info.get("height", scene.height))
    clip.generator, clip.appearances = str(info.get("generator", "")), dict(info.get("appearances") or {})
    scene.clip = clip
    sm = scene.scene_manifest or SceneManifest(scene_id=scene.id)
    sm.selected_reference_tags = {c: r["tag"] for c, r in (row.references or {}).items()}
    sm.manifest_json = {
        "characters": scene.characters,
        "location": scene.location,
        "references": dict(row.references or {}),
        "kept_attempt": row.attempt,
    }
    scene.scene_manifest = sm
    scene.generation_status = StageStatus.DONE
    scene.analysis_status = StageStatus.RUNNING  # register_entities accepts a scene whose analysis ran


def kept_analysis(session: Session, scene: Scene, attempt: object) -> dict:
    """The analysis of the scene's kept attempt, for register_entities (a message naming another is refused)."""
    where = (*_scene_rows(scene.project_id, scene.scene_index), SceneAttempt.kept)
    row = session.scalar(select(SceneAttempt).where(*where))
    if row is None or row.attempt != attempt or row.analysis is None:
        raise MessageIgnored(f"register_entities for scene {scene.scene_index}: attempt {attempt!r} is not kept")
    return row.analysis


def after_analysis_timeout(settings: Settings, payload: dict, reason: str, degraded: Callable[[str], dict]) -> dict:
    """An attempt whose analysis hit its hard time limit once is recorded as degraded (the scene goes on)."""
    request = analysis_input(settings, payload)
    return record_analysis(settings, payload, request, degraded(reason) if request is not None else None)


def scene_attempts(session: Session, project_id: int) -> list[SceneAttempt]:
    """Every attempt of a project, by scene and attempt (status)."""
    stmt = select(SceneAttempt).where(SceneAttempt.project_id == project_id)
    return list(session.scalars(stmt.order_by(SceneAttempt.scene_index, SceneAttempt.attempt)))
