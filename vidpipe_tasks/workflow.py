"""Projects as Celery chains: create from a storyboard, build the flat chain, submit, resume."""

from __future__ import annotations

import io
import shutil
from datetime import UTC, datetime
from pathlib import Path

from celery import Celery, chain
from celery.canvas import Signature
from sqlalchemy import select
from sqlalchemy.orm import Session

from vidpipe_tasks import media
from vidpipe_tasks.db.models import (
    Asset,
    AssetSource,
    AssetType,
    Manifest,
    Project,
    ProjectStatus,
    Scene,
    StageStatus,
)
from vidpipe_tasks.db.session import session_scope
from vidpipe_tasks.settings import Settings
from vidpipe_tasks.storyboard import ManifestSpec, Storyboard, load_storyboards


def _store_reference(settings: Settings, manifest_id: int, tag: str, source: str, base: Path) -> str:
    from vidpipe_tasks.generators import stock

    relative = media.upload_path(manifest_id, tag)
    target = media.absolute(settings.media_root, relative)
    target.parent.mkdir(parents=True, exist_ok=True)
    if stock.is_stock_uri(source):
        buf = io.BytesIO()
        stock.resolve_stock_uri(source).save(buf, format="PNG")
        target.write_bytes(buf.getvalue())
    else:
        from PIL import Image

        with Image.open(base / source) as img:
            img.convert("RGB").save(target, format="PNG")
    return relative


def upsert_manifest(session: Session, settings: Settings, spec: ManifestSpec, base: Path) -> Manifest:
    """Find or create the named manifest and add the storyboard's assets it lacks (stored ones are kept)."""
    manifest = session.scalar(select(Manifest).where(Manifest.name == spec.name))
    if manifest is None:
        manifest = Manifest(name=spec.name)
        session.add(manifest)
        session.flush()
    existing = {a.tag for a in session.scalars(select(Asset).where(Asset.manifest_id == manifest.id))}
    for a in spec.assets:
        if a.tag in existing:
            continue
        asset = Asset(
            manifest_id=manifest.id,
            asset_type=AssetType(a.type.upper()),
            tag=a.tag,
            name=a.name,
            character=a.tag if a.type == "character" else None,
            description=a.description,
            source=AssetSource.UPLOADED,
            quality=1.0,
        )
        if a.reference_image:
            asset.reference_image = _store_reference(settings, manifest.id, a.tag, a.reference_image, base)
        session.add(asset)
    session.flush()
    return manifest


def create_project(settings: Settings, path: Path, board: Storyboard) -> int:
    """Store a validated storyboard as a project with its scenes; nothing is queued."""
    with session_scope(settings.database_url) as s:
        manifest = upsert_manifest(s, settings, board.manifest, path.parent) if board.manifest else None
        project = Project(
            title=board.title,
            manifest_id=manifest.id if manifest else None,
            source_path=str(path),
            storyboard_json=board.model_dump(mode="json"),
        )
        s.add(project)
        s.flush()
        for index, spec in enumerate(board.scenes, start=1):
            fmt = board.clip_format(spec)
            s.add(
                Scene(
                    project_id=project.id,
                    scene_index=index,
                    description=spec.description,
                    location=spec.location,
                    characters=list(spec.characters),
                    duration_s=fmt.duration_s,
                    fps=fmt.fps,
                    width=fmt.width,
                    height=fmt.height,
                )
            )
        return project.id


def build_chain(app: Celery, project_id: int, scene_indices: list[int], with_analysis: bool) -> Signature:
    """One flat chain for a project.

    Per scene: ``generate_clip.si(ref) | analyze_clip.s() | register_entities.s()``; a project without a
    manifest gets ``generate_clip.si(ref)`` only, so nothing of it reaches the CV queue. ``.si`` keeps scene
    N+1 from receiving scene N's result, and Celery sends it only after register_entities has returned,
    which is after its transaction committed.
    """
    steps: list[Signature] = []
    for index in scene_indices:
        ref = {"project_id": project_id, "scene_index": index}
        steps.append(app.signature("vidpipe.generate_clip", args=(ref,), immutable=True))
        if with_analysis:
            steps.append(app.signature("vidpipe.analyze_clip"))
            steps.append(app.signature("vidpipe.register_entities"))
    steps.append(app.signature("vidpipe.finalize_project", args=({"project_id": project_id},), immutable=True))
    return chain(*steps)


def _pending_scenes(project: Project) -> list[int]:
    done = (StageStatus.DONE, StageStatus.SKIPPED)
    if project.manifest_id is None:
        return [s.scene_index for s in project.scenes if s.generation_status != StageStatus.DONE]
    first = next((s.scene_index for s in project.scenes if s.registry_status not in done), None)
    return [] if first is None else [s.scene_index for s in project.scenes if s.scene_index >= first]


class NothingToRun(ValueError):
    """Every scene of the project is already through its last stage."""


def enqueue_project(app: Celery, settings: Settings, project_id: int, priority: int | None = None) -> str:
    """Queue the chain from the first scene not yet through its last stage; returns the root task id.

    Used by submit and by resume: every task is idempotent, so re-running a scene that was half done
    (clip stored, analysis lost) completes it without duplicating anything.
    """
    with session_scope(settings.database_url) as s:
        project = s.get(Project, project_id)
        if project is None:
            raise LookupError(f"no project {project_id}")
        scenes = _pending_scenes(project)
        if not scenes:
            raise NothingToRun(f"project {project_id} has no scene left to run")
        with_analysis = project.manifest_id is not None
        if project.status != ProjectStatus.PENDING:
            # Committed before anything is sent: a cancelled project's tasks would otherwise stop themselves.
            project.status, project.finished_at = ProjectStatus.RUNNING, None
    result = build_chain(app, project_id, scenes, with_analysis).apply_async(
        **({} if priority is None else {"priority": priority})
    )
    while result.parent is not None:
        result = result.parent
    with session_scope(settings.database_url) as s:
        s.get(Project, project_id).chain_root_id = result.id
    return result.id


def cancel_project(settings: Settings, project_id: int) -> None:
    """Mark a project cancelled: its queued tasks stop themselves (and its chain) when a worker takes them."""
    with session_scope(settings.database_url) as s:
        project = s.get(Project, project_id)
        if project is None:
            raise LookupError(f"no project {project_id}")
        if project.status != ProjectStatus.COMPLETED:
            project.status, project.finished_at = ProjectStatus.CANCELLED, datetime.now(UTC)


def submit(app: Celery, settings: Settings, paths: list[Path], priority: int | None = None) -> list[int]:
    """Validate every storyboard first (nothing is queued if any is wrong), then store and queue each."""
    boards = load_storyboards(paths)
    ids = [create_project(settings, path, board) for path, board in boards]
    for project_id in ids:
        enqueue_project(app, settings, project_id, priority)
    return ids


def purge_queue_folder(settings: Settings) -> int:
    """Remove leftover messages of the embedded broker (they would run on the next worker start)."""
    folder = settings.broker_dir / "queue"
    count = 0
    for msg in folder.glob("*.msg") if folder.is_dir() else []:
        msg.unlink(missing_ok=True)
        count += 1
    return count


def reset_work_folder(settings: Settings) -> None:
    """Delete the embedded default's work folder (demo --fresh)."""
    shutil.rmtree(settings.home, ignore_errors=True)
