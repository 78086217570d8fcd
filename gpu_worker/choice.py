"""Choosing the face engine and the image embedder from settings, each with the reason for the choice."""

from __future__ import annotations

import importlib.util

from gpu_worker.embedder import STAGING_HINT as CLIP_HINT
from gpu_worker.embedder import ClipEmbedder, EmbedderUnavailable, weights_problems
from gpu_worker.faces.base import EngineUnavailable, FaceEngine
from gpu_worker.faces.dlib_engine import DlibFaceEngine
from gpu_worker.faces.insightface_engine import STAGING_HINT as INSIGHTFACE_HINT
from gpu_worker.faces.insightface_engine import InsightFaceEngine, pack_problems
from vidpipe_tasks.settings import Settings


def _missing_modules(*names: str) -> list[str]:
    return [f"python package {n!r} is not installed" for n in names if importlib.util.find_spec(n) is None]


def insightface_problems(settings: Settings) -> list[str]:
    """Why insightface cannot run here (empty: it can). Cheap: files and installed packages only."""
    return _missing_modules("onnxruntime", "insightface") + pack_problems(settings.insightface_dir)


def embedder_problems(settings: Settings) -> list[str]:
    """Why the open_clip embedder cannot run here (empty: it can)."""
    return _missing_modules("torch", "open_clip") + weights_problems(settings.clip_weights_path)


def configuration_problems(settings: Settings) -> list[str]:
    """Explicitly named engines that cannot run: a CV worker must not start with these (auto never fails)."""
    problems = []
    if settings.face_engine == "insightface":
        problems += [f"face engine insightface: {p}" for p in insightface_problems(settings)]
        if problems:
            problems.append(INSIGHTFACE_HINT)
    if settings.embedder == "open_clip":
        found = embedder_problems(settings)
        problems += [f"embedder open_clip: {p}" for p in found] + ([CLIP_HINT] if found else [])
    return problems


def _insightface(settings: Settings) -> InsightFaceEngine:
    return InsightFaceEngine(
        settings.insightface_dir,
        device=settings.cv_device,
        match_threshold=settings.insightface_threshold,
        detect_batch=settings.detect_batch,
    )


def choose_face_engine(settings: Settings) -> tuple[FaceEngine, str]:
    """Build (not load) the face engine the settings name.

    Returns:
        The engine and a one-line reason, logged at worker start and stored with every analysis.

    Raises:
        EngineUnavailable: insightface named explicitly but not staged (the message says how to stage it).
    """
    if settings.face_engine == "dlib-offline":
        return DlibFaceEngine(match_threshold=settings.dlib_threshold), "dlib-offline: configured explicitly"
    problems = insightface_problems(settings)
    if settings.face_engine == "insightface":
        if problems:
            raise EngineUnavailable(f"face engine insightface: {'; '.join(problems)}; {INSIGHTFACE_HINT}")
        return _insightface(settings), "insightface: configured explicitly"
    if not problems:
        return _insightface(settings), f"auto: insightface pack found at {settings.insightface_dir}"
    reason = f"auto: offline engine, insightface unavailable ({problems[0]})"
    return DlibFaceEngine(match_threshold=settings.dlib_threshold), reason


def choose_embedder(settings: Settings) -> tuple[ClipEmbedder | None, str]:
    """Build (not load) the image embedder, or None when there is none (visual continuity is then missing).

    Raises:
        EmbedderUnavailable: open_clip named explicitly but its weights are not staged.
    """
    if settings.embedder == "none":
        return None, "none: configured explicitly"
    problems = embedder_problems(settings)
    if problems and settings.embedder == "open_clip":
        raise EmbedderUnavailable(f"embedder open_clip: {'; '.join(problems)}; {CLIP_HINT}")
    if problems:
        return None, f"auto: no image embedder ({problems[0]})"
    embedder = ClipEmbedder(
        settings.clip_model,
        settings.clip_weights_path,
        device=settings.cv_device,
        batch_size=settings.embed_batch,
        config_dir=settings.clip_weights_path.parent,
    )
    how = "configured explicitly" if settings.embedder == "open_clip" else "auto: weights found"
    return embedder, f"open_clip {settings.clip_model}: {how} ({settings.clip_weights_path})"
