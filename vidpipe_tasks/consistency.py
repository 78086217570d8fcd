"""Cross-scene face consistency of a project: how alike each recurring character looks from scene to scene."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from itertools import combinations

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from vidpipe_tasks.db.models import Asset, AssetAppearance, Scene
from vidpipe_tasks.similarity import ENGINE_METRICS, similarity_matrix


@dataclass(frozen=True)
class CharacterFace:
    """A character's mean face in one scene, as analysis recorded it (one asset appearance)."""

    character: str
    scene_index: int
    engine: str
    embedding: tuple[float, ...]


def face_consistency(faces: Iterable[CharacterFace]) -> dict:
    """VGoT-style cross-shot face consistency over a project's faces.

    Per character (and face engine: embeddings of two engines are not comparable), the mean identity
    similarity of every pair of its faces seen in different scenes; the project's score is the mean over
    the characters that have at least one such pair. Similarity is the engine's own [0, 1] scale
    (vidpipe_tasks.similarity): cosine for insightface (ArcFace, as VGoT), 1 - euclidean distance for dlib.

    Returns:
        {"score": float or None (no character seen in two scenes), "characters": {tag: {"score", "scenes",
        "pairs", "engine"}}}; no embeddings.

    """
    groups: dict[tuple[str, str], list[CharacterFace]] = {}
    for face in faces:
        if face.engine in ENGINE_METRICS:
            groups.setdefault((face.character, face.engine), []).append(face)
    characters: dict[str, dict] = {}
    for (character, engine), items in sorted(groups.items()):
        sims = _cross_scene_similarities(items, ENGINE_METRICS[engine])
        if not sims:
            continue
        key = character if character not in characters else f"{character} ({engine})"
        characters[key] = {
            "score": float(np.mean(sims)),
            "scenes": sorted({f.scene_index for f in items}),
            "pairs": len(sims),
            "engine": engine,
        }
    scores = [c["score"] for c in characters.values()]
    return {"score": float(np.mean(scores)) if scores else None, "characters": characters}


def _cross_scene_similarities(items: list[CharacterFace], metric: str) -> list[float]:
    matrix = similarity_matrix(
        np.asarray([f.embedding for f in items]), np.asarray([f.embedding for f in items]), metric
    )
    return [
        float(matrix[i, j])
        for i, j in combinations(range(len(items)), 2)
        if items[i].scene_index != items[j].scene_index
    ]


def project_faces(session: Session, project_id: int) -> list[CharacterFace]:
    """The faces analysis attributed to a declared character of each registered scene of a project.

    An appearance counts for the storyboard character its asset depicts (`Asset.character`), and only in a
    scene that declares that character: unbound new faces and undeclared extras are left out.
    """
    scenes = {sc.scene_index: sc for sc in session.scalars(select(Scene).where(Scene.project_id == project_id))}
    rows = session.execute(
        select(AssetAppearance.scene_index, AssetAppearance.embedding, Asset.character)
        .join(Asset, Asset.id == AssetAppearance.asset_id)
        .where(AssetAppearance.project_id == project_id, AssetAppearance.embedding.is_not(None))
        .order_by(AssetAppearance.scene_index, AssetAppearance.id)
    )
    faces = []
    for scene_index, embedding, character in rows:
        scene = scenes.get(scene_index)
        engine = _scene_engine(scene)
        if scene is None or engine is None or character is None or character not in scene.characters:
            continue
        faces.append(CharacterFace(character, scene_index, engine, tuple(embedding)))
    return faces


def _scene_engine(scene: Scene | None) -> str | None:
    analysis = (scene.scene_manifest.cv_analysis_json if scene and scene.scene_manifest else None) or {}
    return (analysis.get("engine") or {}).get("face")
