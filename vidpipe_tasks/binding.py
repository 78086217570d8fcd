"""Binding extracted faces to characters: scope of a character, the evidence of the scenes, the solver."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from vidpipe_tasks.db.models import Asset, AssetAppearance, AssetSource, AssetType, Project, Scene, SceneManifest

#: A character as the registry knows it: (tag, None) for a manifest character, shared by every project
#: of the manifest; (tag, project id) for a character only that project declares.
Key = tuple[str, int | None]

#: Binding rules, in the order the solver tries them (docs/registry.md).
RULE_UNACCOUNTED = "unaccounted"  # one scene leaves exactly one declared character unaccounted for
RULE_COOCCURRENCE = "co-occurrence"  # only the intersection over several scenes leaves one character
RULE_ELIMINATION = "elimination"  # bound faces seen with it took the other candidates
RULE_OPERATOR = "operator"  # `vidpipe assets bind`


def manifest_characters(session: Session, manifest_id: int) -> frozenset[str]:
    """Tags of the characters the manifest itself declares (uploaded, with or without a reference)."""
    stmt = select(Asset.character).where(
        Asset.manifest_id == manifest_id,
        Asset.asset_type == AssetType.CHARACTER,
        Asset.source == AssetSource.UPLOADED,
        Asset.character.is_not(None),
    )
    return frozenset(session.scalars(stmt))


def key_of(character: str, project_id: int | None, shared: frozenset[str]) -> Key:
    """The registry's key of `character` as project `project_id` names it."""
    return (character, None) if character in shared else (character, project_id)


def in_scope(asset: Asset, project_id: int, shared: frozenset[str]) -> bool:
    """Whether `asset`'s character is the character of that tag in project `project_id`.

    Manifest characters are shared; a character only a project declares is that project's own, so an
    asset bound to it counts only for the project it was extracted from.
    """
    return asset.character is not None and (asset.character in shared or asset.origin_project_id == project_id)


@dataclass(frozen=True)
class Face:
    """An extracted or uploaded asset as the solver sees it."""

    asset_id: int
    origin_project: int | None
    character: str | None


@dataclass(frozen=True)
class SceneEvidence:
    """What one registered scene says: who was declared, who had a reference, which assets were seen."""

    project_id: int
    scene_index: int
    declared: frozenset[str]
    referenced: frozenset[str]
    assets: frozenset[int]


@dataclass
class Resolution:
    """The solver's answer: new bindings (asset id -> character key and rule), and what stays open."""

    bound: dict[int, tuple[Key, str]] = field(default_factory=dict)
    #: Unbound asset id -> the characters it may still be (empty: no declared character fits).
    candidates: dict[int, frozenset[Key]] = field(default_factory=dict)


def _allowed(
    scene: SceneEvidence, face: Face, bound: dict[int, Key], shared: frozenset[str]
) -> tuple[frozenset[Key], frozenset[Key]]:
    """Characters `face` may be in `scene`, twice: declared and not rendered from a reference; then not taken.

    The second set also leaves out the characters of other bound assets seen in the scene.
    """
    taken = {bound[a] for a in scene.assets if a != face.asset_id and a in bound}
    keys = frozenset(key_of(c, scene.project_id, shared) for c in scene.declared - scene.referenced)
    return keys, keys - taken


def _candidates(
    face: Face, scenes: list[SceneEvidence], bound: dict[int, Key], shared: frozenset[str]
) -> tuple[frozenset[Key], str]:
    """The characters a face may be, and the rule that would bind it if they are one.

    Another project's scene constrains only manifest characters: there the face may be a character of
    that project (the generator can reuse a face), which says nothing about the asset's own project.
    """
    shared_keys: frozenset[Key] | None = None
    own_keys: frozenset[Key] | None = None
    rule = RULE_COOCCURRENCE
    for scene in scenes:
        declared, allowed = _allowed(scene, face, bound, shared)
        if len(allowed) == 1:
            # One scene settles it: by itself, or because bound faces seen with it took the others.
            rule = RULE_UNACCOUNTED if len(declared) == 1 or rule == RULE_UNACCOUNTED else RULE_ELIMINATION
        on_shared = frozenset(k for k in allowed if k[1] is None)
        shared_keys = on_shared if shared_keys is None else shared_keys & on_shared
        if scene.project_id == face.origin_project:
            mine = frozenset(k for k in allowed if k[1] == face.origin_project)
            own_keys = mine if own_keys is None else own_keys & mine
    return (shared_keys or frozenset()) | (own_keys or frozenset()), rule


def solve(faces: Iterable[Face], scenes: Iterable[SceneEvidence], shared: frozenset[str]) -> Resolution:
    """Bind every unbound face whose character the evidence determines; repeat until nothing changes.

    Assumptions (docs/registry.md): every face seen in a scene is one of its declared characters; a
    character rendered from a reference is not a new face; two assets seen in one scene are two
    characters. A face whose candidates come down to one character is bound to it, unless another face
    seen in a scene with it comes down to the same character in the same pass (then neither is).
    """
    faces = list(faces)
    by_scene = list(scenes)
    bound: dict[int, Key] = {
        f.asset_id: key_of(f.character, f.origin_project, shared) for f in faces if f.character is not None
    }
    seen_in = {f.asset_id: [s for s in by_scene if f.asset_id in s.assets] for f in faces}
    result = Resolution()
    for pass_no in range(len(faces) + 1):
        proposals: dict[int, tuple[Key, str]] = {}
        for face in (f for f in faces if f.asset_id not in bound):
            if not seen_in[face.asset_id]:
                continue
            cands, rule = _candidates(face, seen_in[face.asset_id], bound, shared)
            result.candidates[face.asset_id] = cands
            if len(cands) == 1:
                rule = RULE_ELIMINATION if pass_no and rule == RULE_COOCCURRENCE else rule
                proposals[face.asset_id] = (next(iter(cands)), rule)
        accepted = {a: p for a, p in proposals.items() if not _clashes(a, p[0], proposals, seen_in[a])}
        if not accepted:
            break
        for asset_id, (key, rule) in accepted.items():
            bound[asset_id] = key
            result.bound[asset_id] = (key, rule)
            result.candidates.pop(asset_id, None)
    return result


def _clashes(asset_id: int, key: Key, proposals: dict, scenes: list[SceneEvidence]) -> bool:
    """Another face seen in a scene with this one comes down to the same character: both stay open."""
    return any(
        other != asset_id and k == key and any(other in s.assets for s in scenes) for other, (k, _) in proposals.items()
    )


def referenced_characters(sm: SceneManifest | None, uploaded: frozenset[str]) -> frozenset[str]:
    """Characters that had a reference when the scene's clip was generated.

    A scene whose selection was not recorded (a clip made elsewhere) counts the manifest's uploaded
    references (`uploaded`): those are the only ones certain to have existed at generation.
    """
    if sm is not None and "references" in (sm.manifest_json or {}):
        return frozenset((sm.selected_reference_tags or {}).keys())
    return uploaded


def _uploaded_references(session: Session, manifest_id: int) -> frozenset[str]:
    stmt = select(Asset.character).where(
        Asset.manifest_id == manifest_id,
        Asset.source == AssetSource.UPLOADED,
        Asset.reference_image.is_not(None),
        Asset.character.is_not(None),
    )
    return frozenset(session.scalars(stmt))


def _component(rows: list[tuple[int, int, int]], seed: set[int]) -> set[int]:
    """The unbound faces linked to `seed` through scenes they share (only those can change on this evidence)."""
    scenes_of: dict[int, set[tuple[int, int]]] = {}
    faces_in: dict[tuple[int, int], set[int]] = {}
    for asset_id, project_id, scene_index in rows:
        scenes_of.setdefault(asset_id, set()).add((project_id, scene_index))
        faces_in.setdefault((project_id, scene_index), set()).add(asset_id)
    found, todo = set(), [a for a in seed if a in scenes_of]
    while todo:
        face = todo.pop()
        if face not in found:
            found.add(face)
            todo.extend(other for key in scenes_of[face] for other in faces_in[key] if other not in found)
    return found


def load_evidence(
    session: Session, manifest_id: int, unbound: Iterable[int], seed: set[int] | None = None
) -> list[SceneEvidence]:
    """The evidence of every registered scene in which one of the `unbound` assets appears.

    With `seed` (the assets seen in the scene being committed), only the unbound faces linked to them
    through shared scenes are considered: nothing new is known about the others. Reads the session's
    pending appearances too (autoflush), so the scene being committed is included.
    """
    unbound = list(unbound)
    if not unbound:
        return []
    stmt = select(AssetAppearance.asset_id, AssetAppearance.project_id, AssetAppearance.scene_index)
    rows = [tuple(r) for r in session.execute(stmt.where(AssetAppearance.asset_id.in_(unbound))).all()]
    if seed is not None:
        linked = _component(rows, seed)
        rows = [r for r in rows if r[0] in linked]
    keys = {(p, i) for _, p, i in rows}
    if not keys:
        return []
    projects = {p for p, _ in keys}
    seen: dict[tuple[int, int], set[int]] = {k: set() for k in keys}
    for asset_id, project_id, scene_index in session.execute(stmt.where(AssetAppearance.project_id.in_(projects))):
        if (project_id, scene_index) in seen:
            seen[(project_id, scene_index)].add(asset_id)
    uploaded = _uploaded_references(session, manifest_id)
    scenes = session.scalars(
        select(Scene).where(Scene.project_id.in_(projects)).options(selectinload(Scene.scene_manifest))
    )
    return [
        SceneEvidence(
            scene.project_id,
            scene.scene_index,
            frozenset(scene.characters or []),
            referenced_characters(scene.scene_manifest, uploaded),
            frozenset(seen[(scene.project_id, scene.scene_index)]),
        )
        for scene in scenes
        if (scene.project_id, scene.scene_index) in seen
    ]


def faces_of(assets: Iterable[Asset]) -> list[Face]:
    return [Face(a.id, a.origin_project_id, a.character) for a in assets]


def character_names(storyboard: dict) -> dict[str, str]:
    """Character tag -> display name from a stored storyboard."""
    assets = (storyboard.get("manifest") or {}).get("assets", [])
    return {c["tag"]: c["name"] for c in [*assets, *storyboard.get("characters", [])]}


def character_name(session: Session, manifest_id: int, character: str, project_id: int | None) -> str:
    """A character's display name: the manifest's own, else the declaring project's storyboard, else the tag."""
    uploaded = session.scalar(
        select(Asset.name).where(
            Asset.manifest_id == manifest_id, Asset.source == AssetSource.UPLOADED, Asset.character == character
        )
    )
    if uploaded:
        return uploaded
    project = session.get(Project, project_id) if project_id is not None else None
    return character_names((project.storyboard_json if project else None) or {}).get(character, character)


def bind(asset: Asset, character: str, name: str, rule: str, where: tuple[int, int] | None) -> dict:
    """Set an asset's character (its reference selection and adherence follow); returns the binding event."""
    asset.character, asset.name = character, name
    asset.binding = {
        "rule": rule,
        "project_id": where[0] if where else None,
        "scene_index": where[1] if where else None,
        "at": datetime.now(UTC).isoformat(),
    }
    return {"asset_id": asset.id, "asset_tag": asset.tag, "character": character, "rule": rule}


def resolve_bindings(
    session: Session, manifest_id: int, assets: list[Asset], where: tuple[int, int] | None
) -> list[dict]:
    """Bind every unbound extracted asset of the manifest that the evidence now determines.

    Runs under the manifest's write lock (the registry commit, or a curation command), so concurrent
    projects of one manifest never bind on stale evidence. `where` is the (project, scene) being
    committed, recorded with each binding: only the faces linked to what that scene saw are weighed
    (nothing new is known about the others). None for a curation command: every face is weighed.

    Returns:
        One event per binding made: asset id and tag, character, rule.

    """
    unbound = [a.id for a in assets if a.character is None and a.source == AssetSource.CLIP_EXTRACT]
    seed = None
    if where is not None and unbound:
        seen_here = select(AssetAppearance.asset_id).where(
            AssetAppearance.project_id == where[0], AssetAppearance.scene_index == where[1]
        )
        seed = set(session.scalars(seen_here))
    scenes = load_evidence(session, manifest_id, unbound, seed)
    if not scenes:
        return []
    shared = manifest_characters(session, manifest_id)
    resolution = solve(faces_of(assets), scenes, shared)
    by_id = {a.id: a for a in assets}
    events = []
    for asset_id, ((character, _scope), rule) in resolution.bound.items():  # in the order they were made
        asset = by_id[asset_id]
        name = character_name(session, manifest_id, character, asset.origin_project_id)
        events.append(bind(asset, character, name, rule, where))
    return events


def open_candidates(session: Session, manifest_id: int) -> dict[int, list[str]]:
    """Unbound extracted assets of a manifest -> the characters each may still be (empty: none fits)."""
    stmt = select(Asset).where(Asset.manifest_id == manifest_id, Asset.asset_type == AssetType.CHARACTER)
    assets = list(session.scalars(stmt.order_by(Asset.id)))
    unbound = [a.id for a in assets if a.character is None and a.source == AssetSource.CLIP_EXTRACT]
    scenes = load_evidence(session, manifest_id, unbound)
    resolution = solve(faces_of(assets), scenes, manifest_characters(session, manifest_id))
    # What the solver would bind now (e.g. after an operator's edit) is a candidate too, until a commit binds it.
    found = {a: sorted(c for c, _ in keys) for a, keys in resolution.candidates.items()}
    found.update({a: [key[0]] for a, (key, _) in resolution.bound.items()})
    return {a: found.get(a, []) for a in unbound}
