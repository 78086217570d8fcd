"""The face-engine interface every engine (offline dlib, insightface) implements."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np


class EngineUnavailable(RuntimeError):
    """An engine cannot run on this host; the message says what is missing and how to stage it."""


@dataclass(frozen=True)
class DetectedFace:
    """One face found in one frame.

    Attributes:
        frame_index: index of the frame in the clip (not in the sampled batch).
        bbox: (x1, y1, x2, y2) in pixels of that frame, clipped to the frame.
        det_score: detector confidence (engine-specific scale, higher is better).
        embedding: identity embedding, float32, shape (engine.embedding_dim,).

    """

    frame_index: int
    bbox: tuple[int, int, int, int]
    det_score: float
    embedding: np.ndarray


@dataclass(frozen=True)
class FaceBox:
    """A detected face before its identity embedding: what tracking and `embed_faces` work on.

    Attributes:
        frame_index: index of the frame in the clip.
        bbox: (x1, y1, x2, y2) in pixels of the full-resolution frame.
        det_score: detector confidence (engine-specific scale).
        landmarks: what the engine aligns the face with (dlib: a full_object_detection; insightface:
            five keypoints), in full-resolution pixels.
    """

    frame_index: int
    bbox: tuple[int, int, int, int]
    det_score: float
    landmarks: object


class FaceEngine(Protocol):
    """Detects faces and embeds identities; constructors are cheap, `load()` does the heavy work once."""

    #: Stable engine name recorded with every stored embedding (embeddings of different engines never mix).
    name: str
    #: Length of one identity embedding.
    embedding_dim: int
    #: Two faces are the same person when `similarity` >= this value.
    match_threshold: float

    def load(self) -> None:
        """Load weights; raises EngineUnavailable with a staging hint when they are missing."""

    def detect_and_embed(self, frames: Sequence[np.ndarray], frame_indices: Sequence[int]) -> list[DetectedFace]:
        """Find and embed every face in RGB uint8 frames (H, W, 3)."""

    def detect(
        self, frames: Sequence[np.ndarray], frame_indices: Sequence[int], *, min_faces: int = 0
    ) -> list[FaceBox]:
        """Find faces without embedding them (in frame order); `min_faces` is how many the scene declares."""

    def embed_faces(self, frames: dict[int, np.ndarray], boxes: Sequence[FaceBox]) -> np.ndarray:
        """Identity embeddings (len(boxes), embedding_dim) of boxes found by `detect` in `frames` (by clip index)."""

    def similarity(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Pairwise similarity matrix (len(a), len(b)) in [0, 1]; higher means more alike."""
