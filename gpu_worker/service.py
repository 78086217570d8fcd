"""Entry point the analyze_clip task calls: the per-process models plus the analysis, never raising."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import time
from collections.abc import Callable

from vidpipe_tasks.settings import Settings
from vidpipe_tasks.similarity import ENGINE_METRICS

log = logging.getLogger(__name__)

#: Test hook: seconds every analysis spends in a native call that ignores the soft time limit, the way a
#: hung CUDA kernel or decoder does (used by the time-limit and monitoring tests; unset in production).
NATIVE_STALL_ENV = "VIDPIPE_TEST_NATIVE_STALL_S"
#: Test hook: seconds every analysis sleeps in Python, which a soft time limit interrupts (unset in production).
PYTHON_STALL_ENV = "VIDPIPE_TEST_PYTHON_STALL_S"


def native_stall(seconds: float) -> None:
    """Sleep in one C call that no catchable signal ends, so only a hard limit (SIGKILL) ends it.

    Blocked: SIGUSR1 (prefork's soft limit), SIGALRM (the solo pool's stand-in) and SIGTERM (billiard's
    first try at a hard limit, 0.1 s before its SIGKILL). One call, not a loop: back in the interpreter,
    a soft-limit signal that another thread caught would run.
    """
    blocked = {signal.SIGUSR1, signal.SIGALRM, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    try:
        ctypes.CDLL(None).usleep(ctypes.c_uint(int(seconds * 1_000_000)))
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _test_stalls() -> None:
    """The test hooks above, when set."""
    if os.environ.get(NATIVE_STALL_ENV):
        native_stall(float(os.environ[NATIVE_STALL_ENV]))
    if os.environ.get(PYTHON_STALL_ENV):
        time.sleep(float(os.environ[PYTHON_STALL_ENV]))


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
    try:
        _test_stalls()
    except Exception as exc:  # noqa: BLE001 - a soft limit in a stall degrades the scene, as one in the analysis
        return degraded_result(f"{type(exc).__name__}: {exc}")
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
