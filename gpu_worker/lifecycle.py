"""Per-process model lifecycle: each worker process builds and loads its face engine once, on first use."""

from __future__ import annotations

import logging
import os

from gpu_worker.faces.base import FaceEngine

log = logging.getLogger(__name__)

_ENGINES: dict[tuple[int, str], FaceEngine] = {}
_REASONS: dict[tuple[int, str], str] = {}


def get_engine(name: str = "auto") -> FaceEngine:
    """This process's loaded engine for `name` (keyed by pid so a forked child never reuses a parent's)."""
    key = (os.getpid(), name)
    if key not in _ENGINES:
        from gpu_worker.faces.choice import choose_face_engine

        engine, reason = choose_face_engine(name)
        engine.load()
        log.info("face engine %s loaded in pid %s (%s)", engine.name, os.getpid(), reason)
        _ENGINES[key], _REASONS[key] = engine, reason
    return _ENGINES[key]


def engine_reason(name: str = "auto") -> str | None:
    """Why `get_engine(name)` chose its engine, once it has."""
    return _REASONS.get((os.getpid(), name))
