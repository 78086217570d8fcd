"""Entry point the analyze_clip task calls: the per-process models plus the analysis, never raising."""

from __future__ import annotations

import logging
from collections.abc import Callable

from vidpipe_tasks.settings import Settings
from vidpipe_tasks.similarity import ENGINE_METRICS

log = logging.getLogger(__name__)


def analyze_for_registry(
    request: dict, settings: Settings, progress: Callable[[str, int, int], None] | None = None
) -> dict:
    """Analyse one clip for the registry; models that cannot load degrade the scene, not the project.

    Returns:
        The analysis result; its "engine" entry names the engines, why each was chosen, and the metric
        and match threshold the registry uses to re-match candidates at commit time.

    """
    from gpu_worker.analysis import analyze_clip_safely, degraded_result
    from gpu_worker.lifecycle import get_models

    try:
        models = get_models(settings)
    except Exception as exc:  # noqa: BLE001 - any model failure degrades the scene (invariant 5)
        log.exception("CV models unavailable (face engine %r)", settings.face_engine)
        return degraded_result(f"CV models unavailable: {type(exc).__name__}: {exc}")
    options = {"embedder": models.embedder, "max_frames": settings.analysis_max_frames}
    if progress is not None:
        options["progress"] = progress
    result = analyze_clip_safely(request, settings.media_root, models.engine, **options)
    result.setdefault("engine", {})
    result["engine"].update(
        models.describe(),
        metric=ENGINE_METRICS[models.engine.name],
        match_threshold=float(models.engine.match_threshold),
    )
    return result
