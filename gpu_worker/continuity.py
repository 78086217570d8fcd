"""The continuity score of a scene and its components (a component that cannot be computed is None, not 0)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

COMPONENTS = ("identity", "adherence", "cross_scene", "visual")


def identity_component(matches: list[dict]) -> float | None:
    """Mean similarity of matched faces to their reference embedding; None when nothing matched."""
    sims = [m["similarity"] for m in matches]
    return float(np.mean(sims)) if sims else None


def adherence_component(declared: list[str], referenced: set[str], matched: set[str], candidates: int) -> float | None:
    """Share of declared characters seen.

    A character counts as seen when a face matched an asset bound to it. The others with no reference
    count as seen as far as unidentified faces cover them: new-face candidates, and faces matched to an
    asset bound to no declared character (an extracted face whose character is not known yet, which
    the registry binds at commit). None when the scene declares nobody.
    """
    if not declared:
        return None
    seen = [c for c in declared if c in matched]
    waiting = [c for c in declared if c not in referenced and c not in matched]
    unidentified = candidates + len(set(matched) - set(declared))
    return (len(seen) + min(len(waiting), unidentified)) / len(declared)


def cross_scene_component(
    scene_embeddings: dict[int, np.ndarray],
    previous: list[dict],
    similarity: Callable[[np.ndarray, np.ndarray], np.ndarray],
) -> float | None:
    """Mean similarity of this scene's face of each asset to its earlier appearances in the project."""
    sims = []
    for item in previous:
        current = scene_embeddings.get(int(item["asset_id"]))
        if current is not None and item.get("embedding") is not None:
            sims.append(float(similarity(current[None, :], np.asarray([item["embedding"]], dtype=np.float32))[0, 0]))
    return float(np.mean(sims)) if sims else None


def visual_component(current: np.ndarray, previous: dict | None, embedder_name: str) -> float | None:
    """Cosine similarity (clipped to [0, 1]) of this scene's visual embedding to the previous scene's.

    None for a first scene, or when the previous scene was embedded by another model (not comparable).
    """
    if not previous or previous.get("embedding") is None or previous.get("embedder") != embedder_name:
        return None
    a = np.asarray(current, dtype=np.float32)
    b = np.asarray(previous["embedding"], dtype=np.float32)
    cos = float(a @ b / max(float(np.linalg.norm(a) * np.linalg.norm(b)), 1e-12))
    return min(1.0, max(0.0, cos))


def continuity(components: dict[str, float | None]) -> dict:
    """Combine components: the score is the mean of those present; missing ones are listed by name."""
    full = {name: components.get(name) for name in COMPONENTS}
    present = [v for v in full.values() if v is not None]
    return {
        "score": float(np.mean(present)) if present else None,
        "components": full,
        "missing": [name for name, v in full.items() if v is None],
    }
