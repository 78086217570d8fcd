"""Choosing a face engine by name from configuration, with the reason for the choice."""

from __future__ import annotations

from gpu_worker.faces.base import FaceEngine
from gpu_worker.faces.dlib_engine import DlibFaceEngine

ENGINE_NAMES = ("auto", "dlib-offline")


def choose_face_engine(name: str = "auto") -> tuple[FaceEngine, str]:
    """Build (not load) the engine configuration names.

    Returns:
        The engine and a one-line reason for the choice, logged at worker start and stored with analyses.

    Raises:
        ValueError: for an unknown name.
    """
    if name == "dlib-offline":
        return DlibFaceEngine(), "configured explicitly"
    if name == "auto":
        # insightface (GPU) joins here behind the same interface; until then auto means the offline engine.
        return DlibFaceEngine(), "auto: offline engine (weights ship with face_recognition_models)"
    raise ValueError(f"unknown face engine {name!r}; choose one of {list(ENGINE_NAMES)}")
