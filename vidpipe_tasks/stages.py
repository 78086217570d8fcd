"""The work of each task as plain functions (no broker needed): generate, prepare analysis, register, finalize."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, object_session

from vidpipe_tasks import media
from vidpipe_tasks.binding import in_scope, manifest_characters
from vidpipe_tasks.consistency import face_consistency, project_faces
from vidpipe_tasks.db.models import (
    Asset,
    AssetAppearance,
    Clip,
    Project,
    ProjectStatus,
    Scene,
    SceneManifest,
    StageStatus,
)
from vidpipe_tasks.db.session import session_scope
from vidpipe_tasks.errors import MessageIgnored, PermanentStageError, ProjectCancelled
from vidpipe_tasks.generators.base import CharacterSpec, ClipRequest
from vidpipe_tasks.generators.dispatch import GenerationPlan, plan_for, render, save_last_frame
from vidpipe_tasks.registry import character_assets, register_scene, select_references
from vidpipe_tasks.settings import Settings

log = logging.getLogger(__name__)


def load_scene(session: Session, project_id: int, scene_index: int) -> Scene:
    scene = session.scalar(select(Scene).where(Scene.project_id == project_id, Scene.scene_index == scene_index))
    if scene is None:
        raise LookupError(f"project {project_id} has no scene {scene_index}")
    if scene.project.status == ProjectStatus.CANCELLED:
        raise ProjectCancelled(f"project {project_id} was cancelled")
    return scene


def scene_ref(scene: Scene) -> dict:
    """The JSON payload that travels between tasks: ids and paths only."""
    return {
        "project_id": scene.project_id,
        "scene_index": scene.scene_index,
        "manifest_id": scene.project.manifest_id,
        "clip_path": scene.clip.path if scene.clip else None,
    }


def _complete_clip(settings: Settings, scene: Scene) -> bool:
    clip = scene.clip
    if clip is None:
        return False
    if not media.usable_file(settings.media_root, clip.path):
        return False  # missing, or a path that is not ours to open: render it again
    return media.absolute(settings.media_root, clip.path).stat().st_size == clip.size_bytes


def _mark_generated(scene: Scene) -> None:
    scene.generation_status = StageStatus.DONE
    if scene.project.manifest_id is None:
        scene.analysis_status = scene.registry_status = StageStatus.SKIPPED


def _select(session: Session, scene: Scene, settings: Settings | None = None) -> tuple[dict, dict]:
    """Choose references and record them in the scene manifest (manifest projects only)."""
    project = scene.project
    if project.manifest_id is None:
        return {}, {}
    usable = None if settings is None else lambda a: usable_reference(settings, a)
    extracted = settings is None or settings.enrichment  # VIDPIPE_ENRICHMENT=0: uploaded references only
    chosen = select_references(
        session, project.manifest_id, scene.characters, usable=usable, project_id=project.id, extracted=extracted
    )
    sm = scene.scene_manifest or SceneManifest(scene_id=scene.id)
    sm.selected_reference_tags = {c: a.tag for c, a in chosen.items()}
    sm.manifest_json = {
        "characters": scene.characters,
        "location": scene.location,
        "references": {
            c: {"asset_id": a.id, "tag": a.tag, "source": a.source.value, "reference_image": a.reference_image}
            for c, a in chosen.items()
        },
    }
    session.add(sm)
    return chosen, sm.selected_reference_tags


def generate_scene(settings: Settings, project_id: int, scene_index: int) -> dict:
    """Select references from the registry and render the scene's clip; reuse a complete stored clip.

    With a remote generator this runs once per poll: it raises JobPending while the provider job runs
    (the task policy re-queues it without holding a worker slot) and returns once the clip is stored.
    """
    with session_scope(settings.database_url) as s:
        scene = load_scene(s, project_id, scene_index)
        _remove_temps_of_killed_attempts(settings, media.scene_dir(project_id, scene_index))
        if scene.clip is None:
            _adopt_orphan_clip(settings, scene)
        if _complete_clip(settings, scene):
            log.info("project %s scene %s: reusing stored clip %s", project_id, scene_index, scene.clip.path)
            _mark_generated(scene)
            return scene_ref(scene)
        if scene.project.status == ProjectStatus.PENDING:
            scene.project.status = ProjectStatus.RUNNING
        scene.generation_status = StageStatus.RUNNING
        plan = plan_for(settings, scene.project.storyboard_json or {})
        request = _scene_clip_request(settings, s, scene, plan)
    try:
        info = render(settings, plan, request)
    except PermanentStageError as exc:
        if exc.reason == "content_policy" and settings.content_policy == "skip-scene":
            return _skip_scene(settings, project_id, scene_index, exc)
        raise
    with session_scope(settings.database_url) as s:
        scene = load_scene(s, project_id, scene_index)
        clip = scene.clip or Clip(scene_id=scene.id)
        clip.path = media.clip_path(project_id, scene_index)
        clip.size_bytes = info.path.stat().st_size
        clip.frame_count, clip.fps, clip.width, clip.height = info.frame_count, info.fps, info.width, info.height
        clip.generator, clip.appearances = plan.generator, dict(info.appearances)
        scene.clip = clip
        _mark_generated(scene)
        s.flush()
        return scene_ref(scene)


def _remove_temps_of_killed_attempts(settings: Settings, folder: str) -> None:
    removed = media.remove_stale_temps(settings.media_root, folder, older_than_s=settings.lease_ttl)
    if removed:
        log.info("removed %d temp file(s) of an interrupted attempt in %s: %s", len(removed), folder, removed)


def _adopt_orphan_clip(settings: Settings, scene: Scene) -> None:
    """Record a clip file that has no row, instead of rendering (and paying for) the scene again.

    Files appear only by atomic rename, so the render finished; the database write after it did not.
    """
    relative = media.clip_path(scene.project_id, scene.scene_index)
    path = media.absolute(settings.media_root, relative)
    if not path.is_file():
        return
    from vidpipe_tasks.generators.probe import probe_clip  # PyAV stays off the registry path

    try:
        frames, fps, width, height = probe_clip(path)
    except Exception as exc:  # unreadable: render it again (the generator replaces it atomically)
        log.warning("orphan clip %s is unreadable (%s); rendering the scene again", relative, exc)
        return
    log.info("project %s scene %s: adopting orphan clip %s", scene.project_id, scene.scene_index, relative)
    scene.clip = Clip(
        scene_id=scene.id,
        path=relative,
        size_bytes=path.stat().st_size,
        frame_count=frames,
        fps=fps,
        width=width,
        height=height,
        generator=settings.generator,
        appearances={"reconciled": "orphan clip adopted after a lost database write"},
    )


def _scene_clip_request(settings: Settings, session: Session, scene: Scene, plan: GenerationPlan) -> ClipRequest:
    """The clip request; while a provider job is in flight, from the references it was submitted with."""
    in_flight = plan.is_remote and _job_in_flight(session, scene)
    if in_flight and scene.scene_manifest is not None:
        # Polling again: the registry may have grown since the submission; keep what the job was sent.
        refs = {c: r["reference_image"] for c, r in scene.scene_manifest.manifest_json.get("references", {}).items()}
    else:
        chosen, _ = _select(session, scene, settings)
        refs = {c: a.reference_image for c, a in chosen.items()}
    extra = {"negative_prompt": plan.negative_prompt}
    if plan.chains_frames and scene.scene_index > 1:
        extra["first_frame"] = _first_frame(settings, session, scene)
    return _clip_request(settings, scene, refs, extra)


def _job_in_flight(session: Session, scene: Scene) -> bool:
    from vidpipe_tasks.generators.remote import ACTIVE_STATES, current_job

    job = current_job(session, scene.project_id, scene.scene_index)
    return job is not None and job.state in (*ACTIVE_STATES, "succeeded")


def _first_frame(settings: Settings, session: Session, scene: Scene) -> str | None:
    """Scene N-1's last frame as a PNG beside this scene's clip (None when the previous clip is missing)."""
    previous = session.scalar(
        select(Scene).where(Scene.project_id == scene.project_id, Scene.scene_index == scene.scene_index - 1)
    )
    if previous is None or previous.clip is None or not _complete_clip(settings, previous):
        return None
    clip = media.absolute(settings.media_root, previous.clip.path)
    folder = media.scene_dir(scene.project_id, scene.scene_index)
    dest = media.absolute(settings.media_root, f"{folder}/first_frame.png")
    return str(save_last_frame(clip, dest))


def _skip_scene(settings: Settings, project_id: int, scene_index: int, exc: PermanentStageError) -> dict:
    """Content policy with VIDPIPE_CONTENT_POLICY=skip-scene: the scene has no clip and the chain goes on."""
    log.warning("project %s scene %s skipped: %s", project_id, scene_index, exc)
    with session_scope(settings.database_url) as s:
        scene = load_scene(s, project_id, scene_index)
        scene.generation_status = StageStatus.SKIPPED
        scene.analysis_status = scene.registry_status = StageStatus.SKIPPED
        return {**scene_ref(scene), "skipped": True, "reason": exc.reason, "detail": exc.detail}


def _clip_request(
    settings: Settings,
    scene: Scene,
    refs: dict[str, str | None],
    extra: dict | None = None,
    *,
    attempt: int = 1,
    seed: int | None = None,
    output: str | None = None,
) -> ClipRequest:
    characters = tuple(
        CharacterSpec(
            tag=c,
            reference_image=media.absolute(settings.media_root, refs[c]) if refs.get(c) else None,
        )
        for c in scene.characters
    )
    return ClipRequest(
        project_id=scene.project_id,
        scene_index=scene.scene_index,
        description=scene.description,
        location=scene.location,
        characters=characters,
        duration_s=scene.duration_s,
        fps=scene.fps,
        width=scene.width,
        height=scene.height,
        output_path=media.absolute(settings.media_root, output or media.clip_path(scene.project_id, scene.scene_index)),
        seed=scene.project_id if seed is None else seed,
        attempt=attempt,
        extra=extra or {},
    )


def analysis_request(settings: Settings, ref: dict) -> dict | None:
    """Build the CV worker's input from the registry: what to look for and where to write crops.

    Returns None for a scene already registered (a duplicate delivery).

    Raises:
        MessageIgnored: the scene has no clip yet (an out-of-order delivery) or the message is malformed.

    """
    project_id, scene_index = message_ids(ref)
    with session_scope(settings.database_url) as s:
        scene = load_scene(s, project_id, scene_index)
        _require_generated(scene, "analyze_clip")
        if scene.scene_manifest is not None and scene.scene_manifest.registered_at is not None:
            # A redelivery after the scene was committed: nothing to analyse, and no finished state to touch.
            return None
        scene.analysis_status = StageStatus.RUNNING
        crops = media.crops_dir(scene.project_id, scene.scene_index)
        _remove_temps_of_killed_attempts(settings, crops)
        return registry_request(s, settings, scene, scene.clip.path, crops)


def registry_request(session: Session, settings: Settings, scene: Scene, clip_path: str, crops_dir: str) -> dict:
    """The CV worker's input for one clip of `scene`: the registry as committed now, and where crops go."""
    s = session
    shared = manifest_characters(s, scene.project.manifest_id)
    registry = [
        {
            "asset_id": a.id,
            # The storyboard character the asset depicts: adherence is judged per character.
            "tag": _analysis_tag(a, scene.project_id, shared),
            "asset_tag": a.tag,
            "embedding": a.face_embedding,
            "engine": a.face_engine,
            "reference_image": a.reference_image,
        }
        for a in character_assets(s, scene.project.manifest_id)
        if usable_reference(settings, a) and (a.reference_image or a.face_embedding)
    ]
    previous = s.scalars(
        select(AssetAppearance).where(
            AssetAppearance.project_id == scene.project_id,
            AssetAppearance.scene_index < scene.scene_index,
            AssetAppearance.embedding.is_not(None),
        )
    )
    return {
        "project_id": scene.project_id,
        "scene_index": scene.scene_index,
        "clip_path": clip_path,
        "previous_visual": _previous_visual(s, scene),
        "declared_characters": list(scene.characters),
        "registry": registry,
        "previous_appearances": [
            {"asset_id": p.asset_id, "scene_index": p.scene_index, "embedding": p.embedding} for p in previous
        ],
        "crops_dir": crops_dir,
    }


def _analysis_tag(asset: Asset, project_id: int, shared: frozenset[str]) -> str:
    """The character an asset stands for in this project's analysis (docs/registry.md, scope)."""
    if in_scope(asset, project_id, shared):
        return asset.character
    # Unbound: its own tag. Another project's own character of the same tag is someone else: a tag no one declares.
    return asset.tag if asset.character is None else f"{asset.tag}@project-{asset.origin_project_id}"


def _previous_visual(session: Session, scene: Scene) -> dict | None:
    """The previous scene's visual embedding, for visual continuity (None for a first or degraded scene)."""
    previous = session.scalar(
        select(SceneManifest)
        .join(Scene, SceneManifest.scene_id == Scene.id)
        .where(Scene.project_id == scene.project_id, Scene.scene_index == scene.scene_index - 1)
    )
    if previous is None or previous.visual_embedding is None:
        return None
    return {
        "scene_index": scene.scene_index - 1,
        "embedder": previous.visual_embedder,
        "embedding": previous.visual_embedding,
    }


def register_entities(settings: Settings, payload: dict) -> dict:
    """Commit the analysis of one scene in one transaction, then return (the next scene may start).

    The payload arrived in a message: a scene in the wrong state ignores it (MessageIgnored), and an
    analysis that breaks the rules of vidpipe_tasks.payloads is registered as a degraded scene with the
    reason, storing nothing of it.
    """
    project_id, scene_index = message_ids(payload)
    with session_scope(settings.database_url) as s:
        scene = load_scene(s, project_id, scene_index)
        analysis = _trusted_analysis(settings, scene, payload)
        summary = register_scene(s, scene, analysis)
    return {"project_id": project_id, "scene_index": scene_index, **summary.as_dict()}


def message_ids(payload: object) -> tuple[int, int]:
    """The (project id, scene index) a task message names; anything else is refused."""
    if not isinstance(payload, dict):
        raise MessageIgnored("message payload is not an object")
    ids = payload.get("project_id"), payload.get("scene_index")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in ids):
        raise MessageIgnored(f"message names no valid project and scene: {ids!r}")
    return ids


def _require_generated(scene: Scene, task: str) -> None:
    # A chain built by workflow.build_chain never sends these; a crafted or stale message must not fail the project.
    if scene.project.manifest_id is None:
        raise MessageIgnored(f"{task} for project {scene.project_id}, which has no manifest: ignored")
    if scene.clip is None:  # stored in the same transaction that marks generation done
        raise MessageIgnored(f"{task} for scene {scene.scene_index} of project {scene.project_id}: no clip yet")


def _trusted_analysis(settings: Settings, scene: Scene, payload: dict) -> dict:
    """The payload's analysis if it passes the checks, else a degraded stand-in (logged) storing nothing of it."""
    from vidpipe_tasks.payloads import PayloadRejected, check_analysis, rejected_analysis

    _require_generated(scene, "register_entities")
    registered = scene.scene_manifest is not None and scene.scene_manifest.registered_at is not None
    if not registered and scene.analysis_status != StageStatus.RUNNING:
        raise MessageIgnored(f"register_entities for scene {scene.scene_index}: its analysis never started")
    if "attempt" in payload:
        # Quality attempts (vidpipe_tasks.candidates): the kept attempt's analysis, from its own crops folder.
        from vidpipe_tasks.candidates import kept_analysis

        analysis = kept_analysis(session_of(scene), scene, payload["attempt"])
        crops = media.attempt_crops_dir(scene.project_id, scene.scene_index, payload["attempt"])
    else:
        analysis, crops = payload.get("analysis"), media.crops_dir(scene.project_id, scene.scene_index)
    try:
        check_analysis(analysis, settings.media_root, crops)
    except PayloadRejected as exc:
        log.error("project %s scene %s: analysis payload rejected: %s", scene.project_id, scene.scene_index, exc)
        return rejected_analysis(str(exc))
    return analysis


def session_of(obj: object) -> Session:
    session = object_session(obj)
    if session is None:
        raise RuntimeError("object is not attached to a session")
    return session


def usable_reference(settings: Settings, asset: object) -> bool:
    """Whether an asset's stored reference may be opened: none, or a file inside the media root (else logged)."""
    ref = getattr(asset, "reference_image", None)
    if ref is None or media.usable_file(settings.media_root, ref):
        return True
    log.warning("asset %s: reference %r is not a file inside the media root; skipped", asset.tag, ref)
    return False


def finalize_project(settings: Settings, project_id: int) -> dict:
    """Mark a project completed once every scene is through its last stage."""
    with session_scope(settings.database_url) as s:
        project = s.get(Project, project_id)
        if project is None:
            raise LookupError(f"no project {project_id}")
        if project.status == ProjectStatus.CANCELLED:
            raise ProjectCancelled(f"project {project_id} was cancelled")
        finished = all(
            sc.registry_status in (StageStatus.DONE, StageStatus.SKIPPED)
            # SKIPPED generation: a scene content policy blocked, with VIDPIPE_CONTENT_POLICY=skip-scene.
            and sc.generation_status in (StageStatus.DONE, StageStatus.SKIPPED)
            for sc in project.scenes
        )
        # The chain's last link: a scene still unfinished here means the chain lost work; say so.
        project.status = ProjectStatus.COMPLETED if finished else ProjectStatus.FAILED
        if project.manifest_id is not None:  # recomputed from the registry on every run: idempotent
            measured = face_consistency(project_faces(s, project_id))
            project.face_consistency, project.face_consistency_detail = measured["score"], measured
        project.finished_at = project.finished_at if project.finished_at and finished else datetime.now(UTC)
        result = {
            "project_id": project_id,
            "status": project.status.value,
            "face_consistency": project.face_consistency,
        }
    if finished and settings.export_on_finish:  # after the commit: a failed export never fails the project
        from vidpipe_tasks.export import export_final

        result["export"] = export_final(settings, project_id)
    return result


#: Which scene stage a task's failure marks FAILED.
_STAGE_OF_TASK = {
    "vidpipe.generate_clip": "generation_status",
    "vidpipe.analyze_clip": "analysis_status",
    "vidpipe.register_entities": "registry_status",
}


def mark_failed(settings: Settings, project_id: int, scene_index: int | None, task_name: str, reason: str) -> None:
    """Record that a task failed for good: its scene stage and the project become FAILED (cancelled stays).

    The first failure's reason is kept: a project already FAILED is left as it is.
    """
    with session_scope(settings.database_url) as s:
        project = s.get(Project, project_id)
        ended = (ProjectStatus.CANCELLED, ProjectStatus.COMPLETED, ProjectStatus.FAILED)
        if project is None or project.status in ended:
            return
        log.error("project %s failed in %s (scene %s): %s", project_id, task_name, scene_index, reason)
        project.status, project.finished_at = ProjectStatus.FAILED, datetime.now(UTC)
        field = _STAGE_OF_TASK.get(task_name)
        scene = next((sc for sc in project.scenes if sc.scene_index == scene_index), None)
        if field and scene is not None:
            setattr(scene, field, StageStatus.FAILED)
            scene.failure_reason = reason[:2000]
