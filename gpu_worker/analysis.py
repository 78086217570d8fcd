"""The analysis of one clip: sample frames, detect and embed faces, match the registry, cluster the rest."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from gpu_worker import continuity as cont
from gpu_worker.clustering import FaceCluster, best_face, cluster_faces, face_quality
from gpu_worker.faces.base import DetectedFace, FaceEngine
from gpu_worker.frames import sample_frames
from vidpipe_tasks import media
from vidpipe_tasks.transient import is_transient

log = logging.getLogger(__name__)

#: Faces smaller than this (pixels, box height) are too small to be a useful reference.
MIN_FACE_PX = 40
#: Margin added around a face box on each side when saving a candidate's crop.
CROP_MARGIN = 0.35


def _embed_references(request: dict, media_root: Path, engine: FaceEngine, warnings: list[str]) -> dict[str, list]:
    """Embed registry reference images that have no embedding from this engine (largest face wins)."""
    from PIL import Image

    computed = {}
    for entry in request["registry"]:
        if entry.get("embedding") is not None and entry.get("engine") == engine.name:
            continue
        if not entry.get("reference_image"):
            continue
        try:
            path = media.absolute(media_root, entry["reference_image"])
        except ValueError as exc:  # the registry row is untrusted: skip the asset, not the analysis
            warnings.append(f"reference image of {entry.get('asset_tag') or entry['tag']} refused: {exc}")
            continue
        with Image.open(path) as img:
            rgb = np.asarray(img.convert("RGB"))
        faces = engine.detect_and_embed([rgb], [-1])
        if not faces:
            warnings.append(f"no face found in the reference image of {entry.get('asset_tag') or entry['tag']}")
            continue
        largest = max(faces, key=lambda f: (f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1]))
        computed[str(entry["asset_id"])] = largest.embedding.tolist()
    return computed


def _registry_matrix(request: dict, engine: FaceEngine, computed: dict) -> tuple[list[dict], np.ndarray]:
    entries, vectors = [], []
    for entry in request["registry"]:
        vector = computed.get(str(entry["asset_id"]))
        if vector is None and entry.get("engine") == engine.name:
            vector = entry.get("embedding")
        if vector is not None:
            entries.append(entry)
            vectors.append(vector)
    return entries, np.asarray(vectors, dtype=np.float32).reshape(len(vectors), engine.embedding_dim)


def _match(faces: list[DetectedFace], entries: list[dict], matrix: np.ndarray, engine: FaceEngine):
    """One matrix product against the registry; returns per-asset matches and the unmatched faces."""
    if not faces:
        return [], []
    sims = engine.similarity(np.stack([f.embedding for f in faces]), matrix)
    grouped: dict[int, list[tuple[DetectedFace, float]]] = {}
    unmatched = []
    for i, face in enumerate(faces):
        best = int(np.argmax(sims[i])) if len(entries) else -1
        if best >= 0 and sims[i, best] >= engine.match_threshold:
            grouped.setdefault(best, []).append((face, float(sims[i, best])))
        else:
            unmatched.append(face)
    matches = []
    for idx, hits in sorted(grouped.items()):
        entry = entries[idx]
        matches.append(
            {
                "asset_id": entry["asset_id"],
                "tag": entry["tag"],
                "asset_tag": entry.get("asset_tag", entry["tag"]),
                "frames": sorted({f.frame_index for f, _ in hits}),
                "face_count": len(hits),
                "similarity": float(np.mean([s for _, s in hits])),
                "best_similarity": float(max(s for _, s in hits)),
                "embedding": np.mean([f.embedding for f, _ in hits], axis=0).tolist(),
            }
        )
    return matches, unmatched


def _save_crop(frame: np.ndarray, face: DetectedFace, target: Path) -> np.ndarray:
    """Write the face with a margin as PNG (atomically) and return the crop's pixels."""
    from PIL import Image

    h, w = frame.shape[:2]
    x1, y1, x2, y2 = face.bbox
    mx, my = int((x2 - x1) * CROP_MARGIN), int((y2 - y1) * CROP_MARGIN)
    crop = np.ascontiguousarray(frame[max(0, y1 - my) : min(h, y2 + my), max(0, x1 - mx) : min(w, x2 + mx)])
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{media.temp_prefix(target)}tmp")
    Image.fromarray(crop).save(tmp, format="PNG")
    os.replace(tmp, target)  # a re-run overwrites the same name instead of adding files
    return crop


def _candidates(clusters: list[FaceCluster], sampled, request: dict, media_root: Path, embedder=None) -> list[dict]:
    """New-face candidates with a saved best crop; with an embedder, the crops' image embeddings in one batch."""
    frame_of = dict(zip(sampled.indices, sampled.frames, strict=True))
    min_faces = 2 if len(sampled.indices) > 3 else 1  # a face in one frame only is noise
    out, crops = [], []
    for cluster in clusters:
        if len(cluster.faces) < min_faces:
            continue
        face = best_face(cluster, sampled.frames[0].shape)
        key = f"c{len(out)}"
        crop = f"{request['crops_dir']}/{key}.png"
        crops.append(_save_crop(frame_of[face.frame_index], face, media.absolute(media_root, crop)))
        out.append(
            {
                "key": key,
                "frames": cluster.frames,
                "face_count": len(cluster.faces),
                "crop_path": crop,
                "bbox": list(face.bbox),
                "quality": face_quality(face, sampled.frames[0].shape),
                "embedding": cluster.centroid.tolist(),
            }
        )
    if embedder is not None and crops:
        for cand, vector in zip(out, embedder.embed(crops), strict=True):
            cand["image_embedding"] = vector.tolist()
    return out


def _visual(sampled, request: dict, embedder) -> tuple[list[float] | None, float | None]:
    """The scene's visual embedding (mean of its frames) and its similarity to the previous scene's."""
    if embedder is None:
        return None, None
    from gpu_worker.embedder import mean_embedding

    current = mean_embedding(embedder.embed(list(sampled.frames)))
    if current is None:
        return None, None
    return current.tolist(), cont.visual_component(current, request.get("previous_visual"), embedder.name)


#: The steps an analysis reports as progress, in order.
PROGRESS_STEPS = ("decode", "faces", "match", "visual")


def _no_progress(step: str, done: int, total: int) -> None:
    return None


def analyze_clip(
    request: dict,
    media_root: Path,
    engine: FaceEngine,
    *,
    embedder=None,
    max_frames: int = 12,
    progress: Callable[[str, int, int], None] = _no_progress,
) -> dict:
    """Analyse one clip against the registry (raises on failure; see analyze_clip_safely).

    Args:
        request: JSON from the task: project_id, scene_index, clip_path (relative to media_root),
            declared_characters, registry entries, previous_appearances and crops_dir.
        media_root: root of every relative path.
        engine: a face engine (loaded once per process by gpu_worker.lifecycle).
        embedder: an image embedder (gpu_worker.embedder.ClipEmbedder) or None; without one the
            visual continuity component is recorded as missing.
        max_frames: frames to sample.
        progress: called as (step, done, total) after each of PROGRESS_STEPS (the task forwards it to
            Flower and the result backend).

    Returns:
        JSON: status, engine, frames, timings_ms, matches, candidates (with crop paths), small
        embeddings for the registry, warnings and the continuity score with its components.
    """
    t_start = time.perf_counter()
    warnings: list[str] = []
    engine.timings_ms = {"detect": 0.0, "embed": 0.0}
    if embedder is not None:
        embedder.timings_ms = {"image_embed": 0.0}
    sampled = sample_frames(media.absolute(media_root, request["clip_path"]), max_frames=max_frames)
    progress("decode", 1, len(PROGRESS_STEPS))
    computed = _embed_references(request, media_root, engine, warnings)
    engine.timings_ms = {"detect": 0.0, "embed": 0.0}  # reference embedding is not per-frame work
    faces = engine.detect_and_embed(list(sampled.frames), sampled.indices)
    progress("faces", 2, len(PROGRESS_STEPS))
    faces = [f for f in faces if f.bbox[3] - f.bbox[1] >= MIN_FACE_PX]
    t_match = time.perf_counter()
    entries, matrix = _registry_matrix(request, engine, computed)
    matches, unmatched = _match(faces, entries, matrix, engine)
    t_cluster = time.perf_counter()
    clusters = cluster_faces(unmatched, engine.similarity, engine.match_threshold)
    candidates = _candidates(clusters, sampled, request, media_root, embedder)
    t_visual, crop_embed_ms = time.perf_counter(), _image_ms(embedder)
    progress("match", 3, len(PROGRESS_STEPS))
    visual_embedding, visual = _visual(sampled, request, embedder)
    progress("visual", 4, len(PROGRESS_STEPS))
    t_end = time.perf_counter()
    referenced = {e["tag"] for e in entries}
    components = {
        "identity": cont.identity_component(matches),
        "adherence": cont.adherence_component(
            request["declared_characters"], referenced, {m["tag"] for m in matches}, len(candidates)
        ),
        "cross_scene": cont.cross_scene_component(
            {m["asset_id"]: np.asarray(m["embedding"], dtype=np.float32) for m in matches},
            request.get("previous_appearances", []),
            engine.similarity,
        ),
        "visual": visual,  # None without an embedder or a previous scene: recorded as missing, not as zero
    }
    return {
        "status": "ok",
        "reason": None,
        "engine": {"face": engine.name, "embedder": embedder.name if embedder is not None else None},
        "frames": {
            "sampled": len(sampled.indices),
            "indices": sampled.indices,
            "frame_count": sampled.frame_count,
            "fps": sampled.fps,
            "width": sampled.width,
            "height": sampled.height,
        },
        "timings_ms": {
            "decode": round(sampled.decode_ms, 1),
            "detect": round(engine.timings_ms["detect"], 1),
            "embed": round(engine.timings_ms["embed"], 1),
            "match": round((t_cluster - t_match) * 1000, 2),
            "cluster": round((t_visual - t_cluster) * 1000 - crop_embed_ms, 1),
            "image_embed": round(_image_ms(embedder), 1),
            "total": round((t_end - t_start) * 1000, 1),
        },
        "faces_detected": len(faces),
        "matches": matches,
        "candidates": candidates,
        "reference_embeddings": computed,
        "visual_embedding": visual_embedding,
        "warnings": warnings,
        "continuity": cont.continuity(components),
    }


def _image_ms(embedder) -> float:
    return embedder.timings_ms["image_embed"] if embedder is not None else 0.0


def degraded_result(reason: str) -> dict:
    """The result of an analysis that could not run: the scene is marked degraded and the chain goes on."""
    return {
        "status": "degraded",
        "reason": reason,
        "engine": {"face": None, "embedder": None},
        "matches": [],
        "candidates": [],
        "reference_embeddings": {},
        "warnings": [],
        "continuity": cont.continuity({}),
    }


def analyze_clip_safely(request: dict, media_root: Path, engine: FaceEngine, **options: Any) -> dict:
    """analyze_clip (same options) whose failures become a degraded result with the reason.

    An infrastructure error (broker, result backend, database) is raised instead: it says nothing about the
    media or the model, and the task policy retries it; recorded as degraded it would be permanent.
    """
    try:
        return analyze_clip(request, media_root, engine, **options)
    except Exception as exc:  # noqa: BLE001 - a failed analysis must never fail the project
        if is_transient(exc):
            raise
        log.warning("analysis of %s degraded: %s", request.get("clip_path"), exc, exc_info=True)
        return degraded_result(f"{type(exc).__name__}: {exc}")
