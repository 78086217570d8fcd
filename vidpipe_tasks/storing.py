"""Storing validated storyboards: a whole batch in one transaction, manifests and assets upserted safely."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from vidpipe_tasks import media
from vidpipe_tasks.db.models import Asset, AssetSource, AssetType, Manifest, Project, Scene
from vidpipe_tasks.db.session import session_scope
from vidpipe_tasks.inputs import StoryboardInput
from vidpipe_tasks.settings import Settings
from vidpipe_tasks.storyboard import ManifestSpec, Storyboard, StoryboardError


class BatchNotStored(RuntimeError):
    """Storing a batch failed (media root, database); the transaction was rolled back and nothing is stored."""


def insert_ignoring_conflict(session: Session, model: type, values: dict, keys: list[str]) -> bool:
    """INSERT ... ON CONFLICT (keys) DO NOTHING on PostgreSQL or SQLite; True when this call inserted the row.

    On PostgreSQL a concurrent insert of the same key makes this wait for the other transaction and then do
    nothing (or insert, if that one rolled back); on SQLite the database write lock serialises writers.
    """
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    stmt = insert(model).values(**values).on_conflict_do_nothing(index_elements=keys).returning(model.id)
    return session.execute(stmt).scalar() is not None


def _write_png(image: object, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, target)  # a reader never sees half a file


def _store_reference(settings: Settings, manifest_id: int, tag: str, source: str, base: Path) -> str:
    """Copy a reference into the media root as PNG, decoding it again within the limits; returns its path."""
    from vidpipe_tasks.generators import stock
    from vidpipe_tasks.references import open_verified, resolve_reference

    relative = media.upload_path(manifest_id, tag)
    target = media.absolute(settings.media_root, relative)
    if stock.is_stock_uri(source):
        _write_png(stock.resolve_stock_uri(source), target)
    else:
        limits = settings.input_limits
        # Resolved and verified again: the file may have changed since validation.
        with open_verified(resolve_reference(base, source, limits.reference_roots), limits) as img:
            _write_png(img.convert("RGB"), target)
    return relative


def upsert_manifest(
    session: Session, settings: Settings, spec: ManifestSpec, base: Path, name: str = "", written: list | None = None
) -> Manifest:
    """Find or create the named manifest and add the storyboard's assets it lacks (stored ones are kept).

    Safe when several submissions create the same manifest at once: the manifest is inserted with ON
    CONFLICT DO NOTHING, then its row is locked (the lock registry.lock_manifest takes to commit a scene)
    while its tags are read and the missing assets inserted, so two submissions never insert the same tag.

    Args:
        session: the batch's session.
        settings: the installation.
        spec: the storyboard's manifest.
        base: the storyboard's folder (relative references resolve against it).
        name: how problems name the storyboard.
        written: reference files stored so far (appended to), removed by the caller if the batch fails.

    Raises:
        StoryboardError: a reference no longer resolves or decodes.

    """
    from vidpipe_tasks.references import ReferenceRefused

    insert_ignoring_conflict(session, Manifest, {"name": spec.name, "registry_version": 0}, ["name"])
    # The manifest's row lock, without bumping registry_version (that counts registry commits): FOR UPDATE
    # waits for a registration or another submission holding it. SQLite has no FOR UPDATE; there the
    # INSERT above already took the database write lock for the rest of the transaction.
    manifest = session.scalar(select(Manifest).where(Manifest.name == spec.name).with_for_update())
    existing = set(session.scalars(select(Asset.tag).where(Asset.manifest_id == manifest.id)))
    for i, a in enumerate(spec.assets):
        if a.tag in existing:
            continue
        reference = None
        if a.reference_image:
            try:
                reference = _store_reference(settings, manifest.id, a.tag, a.reference_image, base)
            except ReferenceRefused as exc:
                raise StoryboardError([(name, f"manifest.asset {i + 1}.reference_image", str(exc))]) from None
            if written is not None:
                written.append(media.absolute(settings.media_root, reference))
        values = {
            "manifest_id": manifest.id,
            "asset_type": AssetType(a.type.upper()),
            "tag": a.tag,
            "name": a.name,
            "character": a.tag if a.type == "character" else None,
            "description": a.description,
            "source": AssetSource.UPLOADED,
            "quality": 1.0,
            "reference_image": reference,
        }
        insert_ignoring_conflict(session, Asset, values, ["manifest_id", "tag"])
        existing.add(a.tag)
    return manifest


def add_project(session: Session, board: Storyboard, manifest: Manifest | None, source: str) -> int:
    """Add a project and its scenes to the session (nothing is committed or queued); returns its id."""
    project = Project(
        title=board.title,
        manifest_id=manifest.id if manifest else None,
        source_path=source,
        storyboard_json=board.model_dump(mode="json"),
    )
    session.add(project)
    session.flush()
    for index, spec in enumerate(board.scenes, start=1):
        fmt = board.clip_format(spec)
        session.add(
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
    session.flush()
    return project.id


def store_inputs(
    settings: Settings, inputs: Sequence[StoryboardInput], sources: Sequence[str] | None = None
) -> list[int]:
    """Store every storyboard as a project in ONE transaction: all of them, or none (nothing is queued).

    `sources` overrides what each project records as its source (default: each input's `source`).

    Manifests are upserted first, in name order, so that two batches sharing manifests take their locks
    in the same order (no deadlock on PostgreSQL); then the projects, in input order.

    Raises:
        StoryboardError: a reference changed since validation (nothing stored).
        BatchNotStored: the media root or the database failed (nothing stored).

    """
    sources = list(sources) if sources is not None else [i.source for i in inputs]
    written: list[Path] = []
    try:
        with session_scope(settings.database_url) as s:
            try:
                manifests: dict[str, Manifest] = {}
                for item in sorted((i for i in inputs if i.board.manifest), key=lambda i: i.board.manifest.name):
                    spec = item.board.manifest
                    manifests[spec.name] = upsert_manifest(s, settings, spec, item.path.parent, item.source, written)
                return [
                    add_project(s, i.board, manifests.get(i.board.manifest.name) if i.board.manifest else None, source)
                    for i, source in zip(inputs, sources, strict=True)
                ]
            except BaseException:
                # Removed while this transaction still holds the manifest locks: no other submission can
                # have stored a file of the same name in between.
                for path in written:
                    path.unlink(missing_ok=True)
                raise
    except (OSError, SQLAlchemyError) as exc:
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:500]
        raise BatchNotStored(f"nothing was stored or queued: {reason}") from exc
