"""The asset registry: reference selection, the manifest write lock, and committing a scene's analysis."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from vidpipe_tasks.binding import in_scope, manifest_characters, resolve_bindings
from vidpipe_tasks.db.models import (
    Asset,
    AssetAppearance,
    AssetSource,
    AssetType,
    Manifest,
    RejectedFace,
    Scene,
    SceneManifest,
    StageStatus,
)
from vidpipe_tasks.similarity import similarity_matrix

#: Keys whose values are raw embeddings; never stored in cv_analysis_json.
EMBEDDING_KEYS = frozenset({"embedding", "reference_embeddings", "embeddings", "image_embedding", "visual_embedding"})


def character_assets(session: Session, manifest_id: int) -> list[Asset]:
    """Character assets of a manifest, oldest first."""
    stmt = select(Asset).where(Asset.manifest_id == manifest_id, Asset.asset_type == AssetType.CHARACTER)
    return list(session.scalars(stmt.order_by(Asset.id)))


def _reference_rank(asset: Asset) -> tuple:
    # Uploaded references beat extracted ones; then higher quality; then the oldest (stable choice).
    return (asset.source != AssetSource.UPLOADED, -(asset.quality or 0.0), asset.id)


def select_references(
    session: Session,
    manifest_id: int,
    characters: list[str],
    usable: Callable[[Asset], bool] | None = None,
    project_id: int | None = None,
    *,
    extracted: bool = True,
) -> dict[str, Asset]:
    """Pick the best reference asset for each character that has one (extracted assets included).

    `usable` (if given) vets each candidate reference: an asset it refuses is never chosen, so one bad
    row (a reference outside the media root) does not fail every project of its manifest.
    `project_id` (if given) applies the scope rule: a character only that project declares takes its
    references from that project's own extractions; manifest characters are shared (docs/registry.md).
    With `extracted` False only uploaded assets are chosen: progressive enrichment is off
    (VIDPIPE_ENRICHMENT), while analysis still matches against and registers extracted faces.

    Returns:
        Character tag -> chosen asset; characters with no usable reference are absent.

    """
    shared = manifest_characters(session, manifest_id) if project_id is not None else frozenset()
    by_character: dict[str, list[Asset]] = {}
    for asset in character_assets(session, manifest_id):
        if not (asset.reference_image and asset.character and (usable is None or usable(asset))):
            continue
        if not extracted and asset.source != AssetSource.UPLOADED:
            continue
        if project_id is None or in_scope(asset, project_id, shared):
            by_character.setdefault(asset.character, []).append(asset)
    return {c: min(by_character[c], key=_reference_rank) for c in characters if c in by_character}


def lock_manifest(session: Session, manifest_id: int) -> None:
    """Take the manifest's write lock for the rest of the transaction.

    An UPDATE is the first statement of the transaction: on PostgreSQL it holds the row lock, on
    SQLite it takes the database write lock; either way concurrent registrations serialise here.
    """
    session.execute(
        update(Manifest).where(Manifest.id == manifest_id).values(registry_version=Manifest.registry_version + 1)
    )


def strip_embeddings(value: object) -> object:
    """A deep copy of an analysis result without raw embedding arrays."""
    if isinstance(value, dict):
        return {k: strip_embeddings(v) for k, v in value.items() if k not in EMBEDDING_KEYS}
    if isinstance(value, list):
        return [strip_embeddings(v) for v in value]
    return copy.deepcopy(value)


@dataclass(frozen=True)
class RegistrationSummary:
    """What one scene's registration changed."""

    new_asset_tags: list[str]
    matched_tags: list[str]
    continuity_score: float | None
    degraded_reason: str | None
    #: Extracted assets bound to a character by this commit (binding events, docs/registry.md).
    bindings: list[dict]

    def as_dict(self) -> dict:
        return {
            "new_asset_tags": self.new_asset_tags,
            "matched_tags": self.matched_tags,
            "continuity_score": self.continuity_score,
            "degraded_reason": self.degraded_reason,
            "bindings": self.bindings,
        }


def summary_of(sm: SceneManifest) -> RegistrationSummary:
    analysis = sm.cv_analysis_json or {}
    matched = sorted({m.get("asset_tag") or m.get("tag") for m in analysis.get("matches", [])} - {None})
    return RegistrationSummary(
        list(sm.new_asset_tags or []), matched, sm.continuity_score, sm.degraded_reason, list(sm.bindings or [])
    )


class _Minter:
    """Mints asset tags that are unique within a manifest (runs under the manifest lock)."""

    def __init__(self, taken: set[str]) -> None:
        self.taken = set(taken)

    def mint(self, preferred: str | None) -> str:
        if preferred and preferred not in self.taken:
            return self._take(preferred)
        stem = preferred or "extract"
        pattern = re.compile(rf"^{re.escape(stem)}-(\d+)$")
        # "bo" itself counts as the first bo, so the next is "bo-2"; generic tags start at extract-001.
        first = 0 if preferred is None else 1
        n = max((int(m.group(1)) for t in self.taken if (m := pattern.match(t))), default=first) + 1
        return self._take(f"{stem}-{n:03d}" if stem == "extract" else f"{stem}-{n}")

    def _take(self, tag: str) -> str:
        self.taken.add(tag)
        return tag


def register_scene(session: Session, scene: Scene, analysis: dict) -> RegistrationSummary:
    """Commit one scene's analysis into the registry; idempotent under redelivery.

    In one transaction (the caller's): lock the manifest, store reference embeddings, re-match each
    new-entity candidate against every asset committed so far (so one face never becomes two assets),
    drop candidates an operator rejected, bind extracted assets the evidence now determines (new ones
    included), mint tags, insert assets and appearances, and record the analysis summary, the bindings
    and the continuity score.
    """
    project = scene.project
    manifest_id = project.manifest_id
    lock_manifest(session, manifest_id)
    sm = scene.scene_manifest or SceneManifest(scene_id=scene.id)
    session.add(sm)
    if sm.registered_at is not None:
        return summary_of(sm)  # a redelivered or re-run task: already committed, add nothing
    degraded = analysis.get("status") != "ok"
    new_tags: list[str] = []
    bindings: list[dict] = []
    if not degraded:
        assets = character_assets(session, manifest_id)
        _store_reference_embeddings(assets, analysis)
        _record_matches(session, scene, analysis, assets)
        new_tags, bindings = _register_candidates(session, scene, analysis, assets)
        if analysis.get("visual_embedding") is not None:
            sm.visual_embedding = list(analysis["visual_embedding"])
            sm.visual_embedder = analysis["engine"].get("embedder")
    continuity = analysis.get("continuity") or {}
    sm.cv_analysis_json = strip_embeddings(analysis)
    sm.continuity_score = continuity.get("score")
    sm.degraded_reason = analysis.get("reason") if degraded else None
    sm.new_asset_tags = new_tags
    sm.bindings = bindings
    sm.registered_at = datetime.now(UTC)
    scene.analysis_status = StageStatus.DEGRADED if degraded else StageStatus.DONE
    scene.registry_status = StageStatus.DONE
    return summary_of(sm)


def _store_reference_embeddings(assets: list[Asset], analysis: dict) -> None:
    engine = analysis["engine"]["face"]
    by_id = {a.id: a for a in assets}
    for asset_id, embedding in (analysis.get("reference_embeddings") or {}).items():
        asset = by_id.get(int(asset_id))
        if asset is not None and (asset.face_embedding is None or asset.face_engine != engine):
            asset.face_embedding, asset.face_engine = list(embedding), engine


def _upsert_appearance(session: Session, scene: Scene, asset: Asset, kind: str, item: dict) -> None:
    stmt = select(AssetAppearance).where(
        AssetAppearance.asset_id == asset.id,
        AssetAppearance.project_id == scene.project_id,
        AssetAppearance.scene_index == scene.scene_index,
    )
    row = session.scalar(stmt)
    if row is None:
        row = AssetAppearance(asset_id=asset.id, project_id=scene.project_id, scene_index=scene.scene_index)
        session.add(row)
    row.kind = kind
    row.frames = list(item.get("frames", []))
    row.face_count = int(item.get("face_count", 0))
    row.similarity = item.get("similarity")
    row.embedding = item.get("embedding")


def _record_matches(session: Session, scene: Scene, analysis: dict, assets: list[Asset]) -> None:
    by_id = {a.id: a for a in assets}
    for match in analysis.get("matches", []):
        asset = by_id.get(int(match["asset_id"]))
        if asset is not None:
            match["asset_tag"] = asset.tag
            _upsert_appearance(session, scene, asset, "match", match)


def _rematch(candidate: dict, assets: list[Asset], engine: dict) -> tuple[Asset | None, float]:
    comparable = [a for a in assets if a.face_embedding is not None and a.face_engine == engine["face"]]
    best, sim = _nearest(candidate, [a.face_embedding for a in comparable], engine)
    return (comparable[best] if best is not None else None), sim


def _nearest(candidate: dict, vectors: list[list[float]], engine: dict) -> tuple[int | None, float]:
    """Index of the vector most like the candidate's face if it is a match, and the best similarity."""
    if not vectors or candidate.get("embedding") is None:
        return None, 0.0
    sims = similarity_matrix(np.asarray([candidate["embedding"]]), np.asarray(vectors), engine["metric"])[0]
    best = int(np.argmax(sims))
    return (best if sims[best] >= engine["match_threshold"] else None), float(sims[best])


def _rejected_as(session: Session, manifest_id: int, candidate: dict, engine: dict) -> str | None:
    """The tag a candidate's face was rejected as (`vidpipe assets reject`), or None."""
    rows = session.execute(
        select(RejectedFace.asset_tag, RejectedFace.embedding).where(
            RejectedFace.manifest_id == manifest_id, RejectedFace.face_engine == engine["face"]
        )
    ).all()
    best, _ = _nearest(candidate, [e for _, e in rows], engine)
    return rows[best][0] if best is not None else None


def _register_candidates(session: Session, scene: Scene, analysis: dict, assets: list[Asset]) -> tuple[list, list]:
    """Re-match, drop rejected faces, insert the rest, bind what the evidence allows, then mint tags.

    Returns:
        The tags of the new assets and the binding events of this commit.

    """
    engine = analysis["engine"]
    manifest_id = scene.project.manifest_id
    taken = set(session.scalars(select(Asset.tag).where(Asset.manifest_id == manifest_id)))
    # A rejected face's tag is not handed out again: the operator's record keeps naming that face.
    taken |= set(session.scalars(select(RejectedFace.asset_tag).where(RejectedFace.manifest_id == manifest_id)))
    minter = _Minter(taken)
    fresh: list[tuple[dict, str]] = []
    for cand in analysis.get("candidates", []):
        origin = f"p{scene.project_id}-s{scene.scene_index}-{cand['key']}"
        asset, sim = _rematch(cand, assets, engine)
        if asset is not None:
            cand.update(rematched_to=asset.tag, rematched_asset_id=asset.id, rematch_similarity=round(sim, 4))
            kind = "new" if asset.origin_key == origin else "match"
            _upsert_appearance(session, scene, asset, kind, {**cand, "similarity": sim})
        elif (rejected := _rejected_as(session, manifest_id, cand, engine)) is not None:
            cand["rejected_as"] = rejected  # an operator said this face is no asset: never mint it again
        else:
            fresh.append((cand, origin))
    inserted = [(cand, _new_asset(session, scene, cand, origin, engine)) for cand, origin in fresh]
    for cand, asset in inserted:
        assets.append(asset)
        _upsert_appearance(session, scene, asset, "new", cand)
    bindings = resolve_bindings(session, manifest_id, assets, (scene.project_id, scene.scene_index))
    new_tags = []
    for cand, asset in inserted:
        # A face bound in the scene that introduced it takes the character's tag; the rest stay extract-NNN.
        asset.tag = minter.mint(asset.character)
        if asset.character is None:
            asset.name = f"Unknown ({asset.tag})"
        cand["registered_as"] = asset.tag
        new_tags.append(asset.tag)
    for event in bindings:
        asset = next(a for a in assets if a.id == event["asset_id"])
        event.update(asset_tag=asset.tag, new=any(a is asset for _, a in inserted))
    return new_tags, bindings


def _new_asset(session: Session, scene: Scene, cand: dict, origin: str, engine: dict) -> Asset:
    """Insert an unbound extracted asset under a provisional tag (minted once binding is decided)."""
    image = cand.get("image_embedding")
    asset = Asset(
        manifest_id=scene.project.manifest_id,
        asset_type=AssetType.CHARACTER,
        tag=f"~{origin}",
        name="Unknown",
        character=None,
        description=f"extracted from project {scene.project_id} scene {scene.scene_index}",
        source=AssetSource.CLIP_EXTRACT,
        reference_image=cand["crop_path"],
        face_embedding=list(cand["embedding"]),
        face_engine=engine["face"],
        image_embedding=list(image) if image is not None else None,
        image_embedder=engine.get("embedder") if image is not None else None,
        quality=cand.get("quality"),
        origin_project_id=scene.project_id,
        origin_scene_index=scene.scene_index,
        origin_key=origin,
    )
    session.add(asset)
    session.flush()
    return asset
