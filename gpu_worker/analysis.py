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
from gpu_worker.frames import even_indices, sample_frames
from gpu_worker.tracks import embed_tracks, link_tracks
from vidpipe_tasks import media
from vidpipe_tasks.transient import is_transient

log = logging.getLogger(__name__)

#: Faces smaller than this (pixels, box height) are too small to be a useful reference.
MIN_FACE_PX = 40
#: Margin added around a face box on each side when saving a candidate's crop.
CROP_MARGIN = 0.35
#: Sampled frames, evenly spread (at a quarter and three quarters of the sample), whose image embeddings
#: average into the scene's visual embedding: each costs one ViT pass (~85 ms on a CPU core).
SCENE_FRAMES = 2


#: Reference embeddings this process computed, by (engine, path, size, mtime): scenes of one manifest
#: in flight at once all carry references the registry has not stored yet.
_REFERENCE_CACHE: dict[tuple, list[float] | None] = {}
_REFERENCE_CACHE_MAX = 256


def _reference_embedding(path: Path, engine: FaceEngine) -> list[float] | None:
    """The largest face's embedding in a reference image (None: no face), computed once per file version."""
    from PIL import Image

    stat = path.stat()
    key = (engine.name, str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _REFERENCE_CACHE:
        with Image.open(path) as img:
            rgb = np.asarray(img.convert("RGB"))
        faces = engine.detect_and_embed([rgb], [-1])
        largest = max(faces, key=lambda f: (f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1]), default=None)
        if len(_REFERENCE_CACHE) >= _REFERENCE_CACHE_MAX:
            _REFERENCE_CACHE.pop(next(iter(_REFERENCE_CACHE)))
        _REFERENCE_CACHE[key] = largest.embedding.tolist() if largest is not None else None
    return _REFERENCE_CACHE[key]


def _embed_references(request: dict, media_root: Path, engine: FaceEngine, warnings: list[str]) -> dict[str, list]:
    """Embed registry reference images that have no embedding from this engine (largest face wins)."""
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
        vector = _reference_embedding(path, engine)
        if vector is None:
            warnings.append(f"no face found in the reference image of {entry.get('asset_tag') or entry['tag']}")
            continue
        computed[str(entry["asset_id"])] = vector
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


def _box(face: DetectedFace) -> list[int]:
    """[frame_index, x1, y1, x2, y2]: where a face was, for the report (vidpipe report) to draw."""
    return [int(face.frame_index), *(int(v) for v in face.bbox)]


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
                "boxes": [[*_box(f), round(s, 3)] for f, s in hits],
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
    Image.fromarray(crop).save(tmp, format="PNG", compress_level=1)  # lossless either way; 6 costs 5x the time
    os.replace(tmp, target)  # a re-run overwrites the same name instead of adding files
    return crop


def _candidates(clusters: list[FaceCluster], sampled, request: dict, media_root: Path) -> tuple[list[dict], list]:
    """New-face candidates with a saved best crop, and the crops' pixels (for their image embeddings)."""
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
                "boxes": [_box(f) for f in cluster.faces],
                "quality": face_quality(face, sampled.frames[0].shape),
                "embedding": cluster.centroid.tolist(),
            }
        )
    return out, crops


def _visual(sampled, request: dict, embedder, candidates: list[dict], crops: list) -> tuple:
    """One embedder batch: SCENE_FRAMES frames (their mean is the scene's visual embedding) and the crops.

    Returns:
        The scene's visual embedding and its similarity to the previous scene's (None, None without an
        embedder); each candidate gets its crop's "image_embedding".
    """
    if embedder is None:
        return None, None
    from gpu_worker.embedder import mean_embedding

    picked = [sampled.frames[i] for i in even_indices(len(sampled.frames), SCENE_FRAMES)]
    vectors = embedder.embed(picked + list(crops))
    for cand, vector in zip(candidates, vectors[len(picked) :], strict=True):
        cand["image_embedding"] = vector.tolist()
    current = mean_embedding(vectors[: len(picked)])
    if current is None:
        return None, None
    return current.tolist(), cont.visual_component(current, request.get("previous_visual"), embedder.name)


def _faces(engine: FaceEngine, sampled, declared: int) -> list[DetectedFace]:
    """Detect, track and embed the faces of the sampled frames (the best faces of each track only)."""
    boxes = engine.detect(list(sampled.frames), sampled.indices, min_faces=declared)
    boxes = [b for b in boxes if b.bbox[3] - b.bbox[1] >= MIN_FACE_PX]
    frame_of = dict(zip(sampled.indices, sampled.frames, strict=True))
    return embed_tracks(engine, frame_of, link_tracks(boxes, frame_of))


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
    faces = _faces(engine, sampled, len(request["declared_characters"]))
    progress("faces", 2, len(PROGRESS_STEPS))
    t_match = time.perf_counter()
    entries, matrix = _registry_matrix(request, engine, computed)
    matches, unmatched = _match(faces, entries, matrix, engine)
    t_cluster = time.perf_counter()
    clusters = cluster_faces(unmatched, engine.similarity, engine.match_threshold)
    candidates, crops = _candidates(clusters, sampled, request, media_root)
    t_visual = time.perf_counter()
    progress("match", 3, len(PROGRESS_STEPS))
    visual_embedding, visual = _visual(sampled, request, embedder, candidates, crops)
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
            "cluster": round((t_visual - t_cluster) * 1000, 1),
            "image_embed": round(_image_ms(embedder), 1),
            "total": round((t_end - t_start) * 1000, 1),
        },
        "faces_detected": len(faces),
        "unmatched_boxes": [b for b in map(_box, unmatched) if b not in [x for c in candidates for x in c["boxes"]]],
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
