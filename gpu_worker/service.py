"""Entry point the analyze_clip task calls: the per-process engine plus the analysis, never raising."""

from __future__ import annotations

import logging

from vidpipe_tasks.settings import Settings
from vidpipe_tasks.similarity import ENGINE_METRICS

log = logging.getLogger(__name__)


def analyze_for_registry(request: dict, settings: Settings) -> dict:
    """Analyse one clip for the registry; an engine that cannot load degrades the scene, not the project.

    Returns:
        The analysis result; its "engine" entry also names the metric and match threshold the
        registry uses to re-match candidates at commit time.

    """
    from gpu_worker.analysis import analyze_clip_safely, degraded_result
    from gpu_worker.lifecycle import engine_reason, get_engine

    try:
        engine = get_engine(settings.face_engine)
    except Exception as exc:  # noqa: BLE001 - any engine failure degrades the scene (invariant 5)
        log.exception("face engine %r unavailable", settings.face_engine)
        return degraded_result(f"face engine unavailable: {type(exc).__name__}: {exc}")
    result = analyze_clip_safely(request, settings.media_root, engine, max_frames=settings.analysis_max_frames)
    result.setdefault("engine", {})
    result["engine"].update(
        face=engine.name,
        choice=engine_reason(settings.face_engine),
        metric=ENGINE_METRICS[engine.name],
        match_threshold=float(engine.match_threshold),
    )
    return result
