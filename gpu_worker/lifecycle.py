"""Per-process model lifecycle: each CV worker process builds and loads its models once, then reuses them."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from gpu_worker.faces.base import EngineUnavailable, FaceEngine
from vidpipe_tasks.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class CvModels:
    """The loaded models of one worker process and why each was chosen."""

    engine: FaceEngine
    engine_choice: str
    embedder: object | None  # gpu_worker.embedder.ClipEmbedder; typed loosely so this module stays light
    embedder_choice: str

    def describe(self) -> dict:
        """What analyses record under "engine" (besides metric and threshold)."""
        return {
            "face": self.engine.name,
            "choice": self.engine_choice,
            "embedder": self.embedder.name if self.embedder is not None else None,
            "embedder_choice": self.embedder_choice,
        }


_MODELS: dict[tuple[int, Settings], CvModels] = {}


def _load_embedder(settings: Settings):
    from gpu_worker.choice import choose_embedder

    embedder, reason = choose_embedder(settings)  # raises when named explicitly and not staged
    if embedder is None:
        return None, reason
    try:
        embedder.load()
    except EngineUnavailable as exc:
        if settings.embedder == "open_clip":
            raise
        # auto: an embedder that cannot load leaves visual continuity missing, never fails the worker.
        log.warning("image embedder unavailable: %s", exc)
        return None, f"auto: image embedder failed to load ({exc})"
    return embedder, reason


def get_models(settings: Settings) -> CvModels:
    """This process's loaded models (keyed by pid so a forked child never reuses its parent's).

    Raises:
        EngineUnavailable: a model named explicitly in the settings cannot load.
    """
    key = (os.getpid(), settings)
    if key not in _MODELS:
        from gpu_worker.choice import choose_face_engine

        engine, engine_choice = choose_face_engine(settings)
        engine.load()
        embedder, embedder_choice = _load_embedder(settings)
        models = CvModels(engine, engine_choice, embedder, embedder_choice)
        log.info(
            "pid %s: face engine %s (%s); image embedder %s (%s)",
            os.getpid(),
            engine.name,
            engine_choice,
            models.describe()["embedder"],
            embedder_choice,
        )
        _MODELS[key] = models
    return _MODELS[key]
