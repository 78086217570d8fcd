"""The trust boundary of register_entities: what an analysis payload must be before anything of it is stored."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import TypedDict

from vidpipe_tasks import media
from vidpipe_tasks.similarity import ENGINE_METRICS

#: Identity embedding length per face engine (dlib's ResNet descriptor; insightface's ArcFace models).
FACE_EMBEDDING_DIMS: dict[str, int] = {"dlib-offline": 128, "insightface": 512}
#: Bounds on what one scene's analysis may carry.
MAX_MATCHES, MAX_CANDIDATES, MAX_FRAMES_LISTED = 256, 64, 10_000
MAX_IMAGE_EMBEDDING_DIM = 4096
MAX_STRING_CHARS, MAX_NODES, MAX_DEPTH = 10_000, 200_000, 12
_CROP_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}\.png$")


class PayloadRejected(ValueError):
    """The payload breaks a rule; the message says which (one line)."""


def _number(value: object, where: str, low: float | None = None, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise PayloadRejected(f"{where}: not a finite number")
    if (low is not None and value < low) or (high is not None and value > high):
        raise PayloadRejected(f"{where}: {value} is outside [{low}, {high}]")
    return float(value)


def _integer(value: object, where: str, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise PayloadRejected(f"{where}: not an integer >= {low}")
    return value


def _vector(value: object, where: str, dim: int | None = None) -> None:
    if not isinstance(value, list) or not value:
        raise PayloadRejected(f"{where}: not a list of numbers")
    if dim is not None and len(value) != dim:
        raise PayloadRejected(f"{where}: {len(value)} values, the engine's embeddings have {dim}")
    if len(value) > MAX_IMAGE_EMBEDDING_DIM:
        raise PayloadRejected(f"{where}: more than {MAX_IMAGE_EMBEDDING_DIM} values")
    for i, x in enumerate(value):
        _number(x, f"{where}[{i}]")


def _items(value: object, where: str, limit: int) -> list[dict]:
    if not isinstance(value, list) or len(value) > limit or not all(isinstance(v, dict) for v in value):
        raise PayloadRejected(f"{where}: not a list of at most {limit} objects")
    return value


def check_json_values(value: object) -> None:
    """Bounded size and depth; strings without NUL or lone surrogates; numbers finite (PostgreSQL JSON safe)."""
    stack, nodes = [(value, 1)], 0
    while stack:
        item, depth = stack.pop()
        nodes += 1
        if nodes > MAX_NODES or depth > MAX_DEPTH:
            raise PayloadRejected(f"analysis: more than {MAX_NODES} values or nested deeper than {MAX_DEPTH}")
        if isinstance(item, dict):
            stack.extend((k, depth + 1) for k in item)
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
        elif isinstance(item, str):
            if len(item) > MAX_STRING_CHARS or "\x00" in item or any("\ud800" <= c <= "\udfff" for c in item):
                raise PayloadRejected("analysis: a string is too long or holds a NUL or lone surrogate")
        elif isinstance(item, float) and not math.isfinite(item):
            raise PayloadRejected("analysis: NaN or infinity")
        elif item is not None and not isinstance(item, bool | int | float):
            raise PayloadRejected(f"analysis: unexpected value of type {type(item).__name__}")


def _engine(analysis: dict) -> tuple[str, int]:
    engine = analysis.get("engine")
    if not isinstance(engine, dict):
        raise PayloadRejected("engine: missing")
    face = engine.get("face")
    if face not in FACE_EMBEDDING_DIMS:
        raise PayloadRejected(f"engine.face: unknown engine {face!r}; known: {sorted(FACE_EMBEDDING_DIMS)}")
    if engine.get("metric") != ENGINE_METRICS[face]:
        raise PayloadRejected(f"engine.metric: {face} compares by {ENGINE_METRICS[face]!r}")
    _number(engine.get("match_threshold"), "engine.match_threshold", 0.0, 1.0)
    embedder = engine.get("embedder")
    if embedder is not None and not isinstance(embedder, str):
        raise PayloadRejected("engine.embedder: not a name")
    return face, FACE_EMBEDDING_DIMS[face]


def check_crop_path(media_root: Path, crops_dir: str, value: object, where: str) -> None:
    """A candidate's crop: a PNG directly inside the scene's crops folder, inside the media root, present."""
    if not isinstance(value, str) or not value.startswith(f"{crops_dir}/"):
        raise PayloadRejected(f"{where}: not inside the scene's crops folder {crops_dir}/")
    if not _CROP_NAME.match(value.removeprefix(f"{crops_dir}/")):
        raise PayloadRejected(f"{where}: not a crop file name (letters, digits, _ or -, then .png)")
    try:
        path = media.absolute(media_root, value)
    except ValueError as exc:
        raise PayloadRejected(f"{where}: {exc}") from None
    if path.parent != media.absolute(media_root, crops_dir) or not path.is_file():
        raise PayloadRejected(f"{where}: no such crop file in the scene's crops folder")


def _matches(analysis: dict, dim: int) -> None:
    for i, match in enumerate(_items(analysis.get("matches", []), "matches", MAX_MATCHES)):
        _integer(match.get("asset_id"), f"matches.{i}.asset_id", 1)
        _frames(match, f"matches.{i}")
        _number(match.get("similarity"), f"matches.{i}.similarity")
        if match.get("embedding") is not None:
            _vector(match["embedding"], f"matches.{i}.embedding", dim)


def _frames(item: dict, where: str) -> None:
    frames = item.get("frames", [])
    if not isinstance(frames, list) or len(frames) > MAX_FRAMES_LISTED:
        raise PayloadRejected(f"{where}.frames: not a list of at most {MAX_FRAMES_LISTED} frame numbers")
    for frame in frames:
        _integer(frame, f"{where}.frames")
    _integer(item.get("face_count", 0), f"{where}.face_count")


def _candidates(analysis: dict, dim: int, media_root: Path, crops_dir: str) -> None:
    keys = set()
    for i, cand in enumerate(_items(analysis.get("candidates", []), "candidates", MAX_CANDIDATES)):
        where = f"candidates.{i}"
        key = cand.get("key")
        if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", key) or key in keys:
            raise PayloadRejected(f"{where}.key: missing, malformed or repeated")
        keys.add(key)
        check_crop_path(media_root, crops_dir, cand.get("crop_path"), f"{where}.crop_path")
        _vector(cand.get("embedding"), f"{where}.embedding", dim)
        if cand.get("image_embedding") is not None:
            _vector(cand["image_embedding"], f"{where}.image_embedding")
        if cand.get("quality") is not None:
            _number(cand["quality"], f"{where}.quality")
        _frames(cand, where)


def check_analysis(analysis: object, media_root: Path, crops_dir: str) -> None:
    """Validate a register_entities analysis before anything of it is stored.

    Args:
        analysis: the payload's "analysis" (untrusted: it arrived in a message).
        media_root: the media root.
        crops_dir: the scene's crops folder, relative to the media root (media.crops_dir).

    Raises:
        PayloadRejected: the first rule broken.

    """
    if not isinstance(analysis, dict):
        raise PayloadRejected("analysis: not an object")
    check_json_values(analysis)
    if analysis.get("status") not in ("ok", "degraded"):
        raise PayloadRejected(f"status: {analysis.get('status')!r} is neither 'ok' nor 'degraded'")
    if analysis.get("reason") is not None and not isinstance(analysis["reason"], str):
        raise PayloadRejected("reason: not text")
    continuity = analysis.get("continuity") or {}
    if not isinstance(continuity, dict):
        raise PayloadRejected("continuity: not an object")
    if continuity.get("score") is not None:
        _number(continuity["score"], "continuity.score")
    if analysis["status"] != "ok":
        return  # a degraded analysis stores only its summary and reason
    _, dim = _engine(analysis)
    refs = analysis.get("reference_embeddings") or {}
    if not isinstance(refs, dict) or len(refs) > MAX_MATCHES:
        raise PayloadRejected(f"reference_embeddings: not an object of at most {MAX_MATCHES} entries")
    for asset_id, vector in refs.items():
        if not asset_id.isdigit():
            raise PayloadRejected(f"reference_embeddings: key {asset_id!r} is not an asset id")
        _vector(vector, f"reference_embeddings.{asset_id}", dim)
    _matches(analysis, dim)
    _candidates(analysis, dim, media_root, crops_dir)
    if analysis.get("visual_embedding") is not None:
        _vector(analysis["visual_embedding"], "visual_embedding")


def rejected_analysis(reason: str) -> dict:
    """What is registered instead of a rejected payload: a degraded scene whose reason says why."""
    return {
        "status": "degraded",
        "reason": f"analysis payload rejected: {reason}",
        "engine": {},
        "matches": [],
        "candidates": [],
        "reference_embeddings": {},
        "warnings": [],
        "continuity": {"score": None, "components": {}, "missing": []},
    }


# -- the messages of quality attempts (docs/quality.md): ids and paths only, checked on arrival -----------------


class CandidateRef(TypedDict, total=False):
    """generate_candidate's argument (from the chain) and result (analyze_candidate's argument)."""

    project_id: int
    scene_index: int
    #: 1..20: round r's candidates are (r - 1) * K + 1 .. r * K.
    attempt: int
    epoch: int
    #: The attempt's clip, relative to the media root (in its result).
    clip_path: str | None
    #: "generated", "analysed", "failed", or "registered" (the scene was registered meanwhile).
    state: str
    #: Present on a failed attempt: analysis is skipped and the pick counts it as failed.
    failed: bool
    reason: str | None


class CandidateResult(TypedDict):
    """analyze_candidate's result: what a chord collects (the pick reads the database, not these)."""

    project_id: int
    scene_index: int
    attempt: int
    #: "ok", "degraded" (the analysis degraded), "failed", or the attempt's state.
    outcome: str
    score: float | None
    reason: str | None


class PickRef(TypedDict, total=False):
    """pick_attempt's argument; with `final` False it is also its result (the next round follows)."""

    project_id: int
    scene_index: int
    round: int
    epoch: int
    final: bool


class KeptAttempt(TypedDict, total=False):
    """pick_attempt's result once it keeps an attempt: register_entities' argument.

    Its analysis is read from scene_attempts, never from the message.
    """

    project_id: int
    scene_index: int
    attempt: int
    final: bool
    epoch: int
