"""Curating a registry: list, show, bind, rename, merge, reject and remove assets (each under the manifest lock)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from vidpipe_tasks import media
from vidpipe_tasks.binding import (
    RULE_OPERATOR,
    bind,
    character_name,
    manifest_characters,
    open_candidates,
    resolve_bindings,
)
from vidpipe_tasks.db.models import (
    Asset,
    AssetAppearance,
    AssetSource,
    AssetType,
    Manifest,
    Project,
    RejectedFace,
    Scene,
    SceneManifest,
)
from vidpipe_tasks.db.session import session_scope
from vidpipe_tasks.payloads import FACE_EMBEDDING_DIMS
from vidpipe_tasks.registry import character_assets, lock_manifest
from vidpipe_tasks.settings import Settings
from vidpipe_tasks.storyboard import TAG_PATTERN


class CurationRefused(ValueError):
    """The command would break a registry rule; the message says which, and what to do instead."""


class AssetInUse(CurationRefused):
    """The asset has appearances; `remove --force` removes them with it."""


def asset_problem(settings: Settings, asset: Asset) -> str | None:
    """Why an asset cannot be trusted (it is then skipped by generation and analysis), or None."""
    if asset.reference_image is not None and not media.usable_file(settings.media_root, asset.reference_image):
        return f"reference {asset.reference_image!r} is not a file inside the media root"
    if asset.face_embedding is not None:
        dim = FACE_EMBEDDING_DIMS.get(asset.face_engine or "")
        if dim is None:
            return f"face embedding of unknown engine {asset.face_engine!r}"
        if len(asset.face_embedding) != dim:
            return f"face embedding has {len(asset.face_embedding)} values, {asset.face_engine} has {dim}"
    return None


def asset_state(asset: Asset) -> str:
    """The state of an asset: "uploaded", "bound" (an extraction bound to its character) or "unbound"."""
    if asset.source == AssetSource.UPLOADED:
        return "uploaded"
    return "bound" if asset.character else "unbound"


def list_assets(settings: Settings, manifest: str | None = None) -> list[dict]:
    """Every asset (of one manifest, if named), oldest first: appearances, binding, candidates, any problem."""
    with session_scope(settings.database_url) as s:
        stmt = select(Asset, Manifest.name).join(Manifest, Asset.manifest_id == Manifest.id).order_by(Asset.id)
        if manifest is not None:
            stmt = stmt.where(Manifest.name == manifest)
        rows = s.execute(stmt).all()
        counts = dict(
            s.execute(select(AssetAppearance.asset_id, func.count()).group_by(AssetAppearance.asset_id)).all()
        )
        candidates: dict[int, list[str]] = {}
        for manifest_id in sorted({a.manifest_id for a, _ in rows}):
            candidates.update(open_candidates(s, manifest_id))
        return [_row(settings, a, name, counts.get(a.id, 0), candidates.get(a.id)) for a, name in rows]


def _row(settings: Settings, a: Asset, manifest: str, appearances: int, candidates: list[str] | None) -> dict:
    return {
        "asset_id": a.id,
        "manifest": manifest,
        "tag": a.tag,
        "name": a.name,
        "type": a.asset_type.value,
        "source": a.source.value,
        "character": a.character,
        "state": asset_state(a),
        "binding": a.binding,
        # Unbound extractions only: the characters the evidence still allows (empty: none fits).
        "candidates": candidates if a.asset_type == AssetType.CHARACTER and a.character is None else None,
        "reference_image": a.reference_image,
        "appearances": appearances,
        "problem": asset_problem(settings, a),
    }


def show_asset(settings: Settings, ref: str, manifest: str | None = None) -> dict:
    """One asset in full: its row, where it appears, and the scenes that used it as a reference."""
    asset_id = find_asset(settings, ref, manifest)
    with session_scope(settings.database_url) as s:
        asset = s.get(Asset, asset_id)
        name = s.get(Manifest, asset.manifest_id).name
        appearances = list(
            s.scalars(
                select(AssetAppearance)
                .where(AssetAppearance.asset_id == asset_id)
                .order_by(AssetAppearance.project_id, AssetAppearance.scene_index)
            )
        )
        row = _row(settings, asset, name, len(appearances), open_candidates(s, asset.manifest_id).get(asset_id))
        used = [
            (sc.project_id, sc.scene_index, c)
            for sc, sm in _scene_manifests(s, asset.manifest_id)
            for c in _uses(sm, asset_id)
        ]
        return {
            **row,
            "description": asset.description,
            "quality": asset.quality,
            "face_engine": asset.face_engine,
            "origin": {"project_id": asset.origin_project_id, "scene_index": asset.origin_scene_index},
            "appearances": [
                {
                    "project_id": p.project_id,
                    "scene_index": p.scene_index,
                    "kind": p.kind,
                    "frames": p.frames,
                    "face_count": p.face_count,
                    "similarity": p.similarity,
                }
                for p in appearances
            ],
            "used_as_reference": [{"project_id": p, "scene_index": i, "character": c} for p, i, c in used],
        }


def find_asset(settings: Settings, ref: str, manifest: str | None = None) -> int:
    """The id of the asset `ref` names: an id, or a tag (unique across manifests, or within `manifest`).

    Raises:
        LookupError: no such asset, or a tag that several manifests use (name the manifest).

    """
    with session_scope(settings.database_url) as s:
        if str(ref).isdigit():
            if s.get(Asset, int(ref)) is None:
                raise LookupError(f"no asset {ref}")
            return int(ref)
        stmt = select(Asset.id).join(Manifest, Asset.manifest_id == Manifest.id).where(Asset.tag == ref)
        if manifest is not None:
            stmt = stmt.where(Manifest.name == manifest)
        ids = list(s.scalars(stmt))
        if not ids:
            raise LookupError(f"no asset {ref!r}" + (f" in manifest {manifest!r}" if manifest else ""))
        if len(ids) > 1:
            raise LookupError(f"several manifests have an asset {ref!r}: name one with --manifest, or use the id")
        return ids[0]


@contextmanager
def _locked(settings: Settings, asset_id: int) -> Iterator[tuple[Session, Asset]]:
    """A transaction that holds the asset's manifest lock from its first statement (as the registry does)."""
    with session_scope(settings.database_url) as s:
        manifest_id = s.scalar(select(Asset.manifest_id).where(Asset.id == asset_id))
    if manifest_id is None:
        raise LookupError(f"no asset {asset_id}")
    with session_scope(settings.database_url) as s:
        lock_manifest(s, manifest_id)
        asset = s.get(Asset, asset_id)
        if asset is None:
            raise LookupError(f"no asset {asset_id}")
        yield s, asset


def _follow_up(s: Session, manifest_id: int) -> list[dict]:
    """Bindings an edit makes possible (e.g. binding one face settles the other by elimination)."""
    return resolve_bindings(s, manifest_id, character_assets(s, manifest_id), None)


def _declared_by(s: Session, asset: Asset, character: str) -> bool:
    """Whether `character` is a character this asset may be: a manifest character or its project's own."""
    if character in manifest_characters(s, asset.manifest_id):
        return True
    project = s.get(Project, asset.origin_project_id) if asset.origin_project_id else None
    board = (project.storyboard_json if project else None) or {}
    return character in {c["tag"] for c in board.get("characters", [])}


def bind_asset(settings: Settings, asset_id: int, character: str) -> list[dict]:
    """Bind an extracted asset to a character by hand; returns the bindings made (this one first).

    Raises:
        CurationRefused: an upload, not a character asset, or a character its project cannot name.

    """
    with _locked(settings, asset_id) as (s, asset):
        if asset.asset_type != AssetType.CHARACTER or asset.source == AssetSource.UPLOADED:
            raise CurationRefused(f"asset {asset_id} ({asset.tag}) is not an extracted face; only those are bound")
        if not _declared_by(s, asset, character):
            raise CurationRefused(
                f"{character!r} is neither a manifest character nor one of project {asset.origin_project_id}'s own"
            )
        name = character_name(s, asset.manifest_id, character, asset.origin_project_id)
        event = bind(asset, character, name, RULE_OPERATOR, None)
        return [event, *_follow_up(s, asset.manifest_id)]


def rename_asset(settings: Settings, asset_id: int, tag: str, name: str | None = None) -> str:
    """Give an asset a new tag (and display name); the scenes that recorded it as a reference follow.

    Raises:
        CurationRefused: not a tag, a tag the manifest already has, or an upload (storyboards name it).

    """
    if not re.fullmatch(TAG_PATTERN, tag):
        raise CurationRefused(f"{tag!r} is not a tag (lowercase letters, digits, '_' and '-', a letter first)")
    with _locked(settings, asset_id) as (s, asset):
        if asset.source == AssetSource.UPLOADED:
            # Storyboards name uploads by tag: a renamed upload would be uploaded again by the next submission.
            raise CurationRefused(f"asset {asset_id} ({asset.tag}) is an upload: its tag is the storyboard's")
        clash = s.scalar(select(Asset.id).where(Asset.manifest_id == asset.manifest_id, Asset.tag == tag))
        if clash is not None and clash != asset_id:
            raise CurationRefused(f"manifest already has an asset {tag!r} (id {clash})")
        old = asset.tag
        asset.tag = tag
        if name:
            asset.name = name
        elif asset.name == f"Unknown ({old})":
            asset.name = f"Unknown ({tag})"
        changed = _repoint_references(s, asset.manifest_id, asset_id, asset)
        return f"asset {asset_id} renamed {old} -> {tag}" + (
            f"; {changed} scene reference(s) updated" if changed else ""
        )


def _scene_manifests(s: Session, manifest_id: int) -> list[tuple[Scene, SceneManifest]]:
    stmt = (
        select(Scene, SceneManifest)
        .join(SceneManifest, SceneManifest.scene_id == Scene.id)
        .join(Project, Scene.project_id == Project.id)
        .where(Project.manifest_id == manifest_id)
    )
    return list(s.execute(stmt).all())


def _uses(sm: SceneManifest, asset_id: int) -> list[str]:
    """Characters for which a scene recorded `asset_id` as its reference."""
    refs = (sm.manifest_json or {}).get("references", {})
    return [c for c, r in refs.items() if r.get("asset_id") == asset_id]


def _repoint_references(s: Session, manifest_id: int, asset_id: int, target: Asset) -> int:
    """Make scenes that recorded `asset_id` as a reference name `target` instead; returns how many changed."""
    changed = 0
    for _scene, sm in _scene_manifests(s, manifest_id):
        characters = _uses(sm, asset_id)
        if not characters:
            continue
        refs = {**sm.manifest_json["references"]}
        tags = {**(sm.selected_reference_tags or {})}
        for c in characters:
            refs[c] = {**refs[c], "asset_id": target.id, "tag": target.tag}
            tags[c] = target.tag
        sm.manifest_json = {**sm.manifest_json, "references": refs}
        sm.selected_reference_tags = tags
        changed += 1
    return changed


def merge_assets(settings: Settings, source_id: int, target_id: int) -> str:
    """Fold `source` into `target`: its appearances move to `target` (same-scene ones combine), it goes.

    Raises:
        CurationRefused: the same asset, different manifests, an upload as the source, or two assets
            bound to different characters.

    """
    if source_id == target_id:
        raise CurationRefused("an asset cannot be merged into itself")
    with _locked(settings, source_id) as (s, source):
        target = s.get(Asset, target_id)
        if target is None:
            raise LookupError(f"no asset {target_id}")
        if target.manifest_id != source.manifest_id:
            raise CurationRefused(f"assets {source_id} and {target_id} belong to different manifests")
        if source.source == AssetSource.UPLOADED:
            raise CurationRefused(f"asset {source_id} ({source.tag}) is an upload; merge extractions into it instead")
        if source.character and target.character and source.character != target.character:
            raise CurationRefused(
                f"{source.tag} is {source.character} and {target.tag} is {target.character}; bind or rename first"
            )
        if target.character is None and source.character is not None:
            name = character_name(s, target.manifest_id, source.character, target.origin_project_id)
            bind(target, source.character, name, RULE_OPERATOR, None)
        moved = _move_appearances(s, source_id, target_id)
        _repoint_references(s, source.manifest_id, source_id, target)
        tag = source.tag
        s.delete(source)
        s.flush()
        _follow_up(s, target.manifest_id)
        return f"asset {source_id} ({tag}) merged into {target_id} ({target.tag}): {moved} appearance(s) moved"


def _move_appearances(s: Session, source_id: int, target_id: int) -> int:
    """Re-point the source's appearances to the target; in a scene where both appear, combine the rows."""
    rows = list(s.scalars(select(AssetAppearance).where(AssetAppearance.asset_id == source_id)))
    for row in rows:
        there = s.scalar(
            select(AssetAppearance).where(
                AssetAppearance.asset_id == target_id,
                AssetAppearance.project_id == row.project_id,
                AssetAppearance.scene_index == row.scene_index,
            )
        )
        if there is None:
            row.asset_id = target_id
            continue
        there.frames = sorted(set(there.frames or []) | set(row.frames or []))
        there.face_count = (there.face_count or 0) + (row.face_count or 0)
        there.similarity = max((v for v in (there.similarity, row.similarity) if v is not None), default=None)
        s.delete(row)
    s.flush()
    return len(rows)


def reject_asset(settings: Settings, asset_id: int, reason: str = "") -> str:
    """Reject an extracted face: remember it so the registry never mints it as new again, and remove it.

    Its embedding and its per-scene embeddings are kept as rejected faces of the manifest; the asset
    and its appearances go (so a scene's later face like it is neither matched nor registered).

    Raises:
        CurationRefused: an upload (remove it from the manifest instead), or no face embedding.

    """
    with _locked(settings, asset_id) as (s, asset):
        if asset.source == AssetSource.UPLOADED:
            raise CurationRefused(f"asset {asset_id} ({asset.tag}) is an upload; use `vidpipe assets remove`")
        if asset.face_embedding is None or asset.face_engine is None:
            raise CurationRefused(f"asset {asset_id} ({asset.tag}) has no face embedding to reject")
        vectors = [asset.face_embedding]
        dim = len(asset.face_embedding)
        for row in s.scalars(select(AssetAppearance).where(AssetAppearance.asset_id == asset_id)):
            if row.embedding is not None and len(row.embedding) == dim and row.embedding not in vectors:
                vectors.append(row.embedding)
        for vector in vectors:
            s.add(
                RejectedFace(
                    manifest_id=asset.manifest_id,
                    face_engine=asset.face_engine,
                    embedding=list(vector),
                    asset_tag=asset.tag,
                    reason=reason,
                )
            )
        used = _delete(s, asset)
        kept = f"{len(vectors)} face embedding(s) kept"
        return f"asset {asset_id} ({asset.tag}) rejected: {kept}, {used} appearance(s) removed"


def _delete(s: Session, asset: Asset) -> int:
    used = s.scalar(select(func.count()).select_from(AssetAppearance).where(AssetAppearance.asset_id == asset.id))
    s.execute(AssetAppearance.__table__.delete().where(AssetAppearance.asset_id == asset.id))
    s.delete(asset)
    return used


def remove_asset(settings: Settings, asset_id: int, force: bool = False) -> str:
    """Delete an asset from its registry (its files stay); with `force`, also one that has appearances.

    Raises:
        LookupError: no such asset.
        AssetInUse: it has appearances and `force` is not set.

    """
    with _locked(settings, asset_id) as (s, asset):
        used = s.scalar(select(func.count()).select_from(AssetAppearance).where(AssetAppearance.asset_id == asset_id))
        if used and not force:
            raise AssetInUse(f"asset {asset_id} ({asset.tag}) appears in {used} scene(s); use --force to remove it")
        tag = asset.tag
        _delete(s, asset)
        return f"asset {asset_id} ({tag}) removed" + (f" with {used} appearance(s)" if used else "")
