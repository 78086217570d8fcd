"""Offline face engine: dlib's HOG detector, 5-point alignment and ResNet descriptors from face_recognition_models."""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from gpu_worker.faces.base import DetectedFace, EngineUnavailable, FaceBox
from vidpipe_tasks.similarity import similarity_matrix

_MODEL_FILES = ("shape_predictor_5_face_landmarks.dat", "dlib_face_recognition_resnet_model_v1.dat")
_STAGING_HINT = (
    "install the offline face weights with `pip install face_recognition_models dlib-bin` "
    "(they ship inside the package; nothing is downloaded at run time)"
)


def default_models_dir() -> Path | None:
    """The models folder of the installed face_recognition_models package, found without importing it."""
    # Importing the package needs pkg_resources; the spec alone gives its folder.
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(spec.submodule_search_locations[0]) / "models"


def dlib_problems(models_dir: Path | None = None) -> list[str]:
    """Why the offline engine cannot run here (empty: it can); files and packages only, nothing loaded."""
    folder = models_dir or default_models_dir()
    if folder is None:
        return ["python package 'face_recognition_models' is not installed"]
    problems = [f"missing {f} in {folder}" for f in _MODEL_FILES if not (folder / f).is_file()]
    if importlib.util.find_spec("dlib") is None:
        problems.append("python package 'dlib' (dlib-bin) is not installed")
    return problems


class DlibFaceEngine:
    """HOG detection plus 128-d dlib descriptors; same person when the euclidean distance is below 0.6."""

    name = "dlib-offline"
    embedding_dim = 128

    def __init__(
        self,
        *,
        models_dir: Path | None = None,
        upsample: int | None = None,
        match_threshold: float = 0.4,
        detect_height: int = 360,
    ):
        """Store parameters only; `load()` does the work.

        Args:
            models_dir: folder with the dlib model files (default: the face_recognition_models package).
            upsample: HOG upsampling; None picks 0 for frames at least 360 px high (faces there are
                about 90 px, which HOG finds as they are) and 1 for smaller frames.
            match_threshold: similarity (1 - distance) at or above which two faces are one person.
            detect_height: `detect` runs HOG on frames scaled to this height (HOG's cost grows with the
                pixel count; landmarks and descriptors still use the full frame).
        """
        self.models_dir = models_dir
        self.upsample = upsample
        self.detect_height = detect_height
        self.match_threshold = match_threshold
        self.timings_ms = {"detect": 0.0, "embed": 0.0}
        self._detector = self._shape = self._recognizer = None

    def load(self) -> None:
        """Load the detector and models once; raise EngineUnavailable saying what is missing."""
        if self._recognizer is not None:
            return
        problems = dlib_problems(self.models_dir)
        if problems:
            raise EngineUnavailable(f"dlib-offline: {'; '.join(problems)}; {_STAGING_HINT}")
        folder = self.models_dir or default_models_dir()
        try:
            import dlib
        except ImportError as exc:
            raise EngineUnavailable(f"dlib-offline: dlib is not importable ({exc}); {_STAGING_HINT}") from exc
        self._detector = dlib.get_frontal_face_detector()
        self._shape = dlib.shape_predictor(str(folder / _MODEL_FILES[0]))
        self._recognizer = dlib.face_recognition_model_v1(str(folder / _MODEL_FILES[1]))

    def _upsample_for(self, frame: np.ndarray) -> int:
        return self.upsample if self.upsample is not None else (0 if frame.shape[0] >= 360 else 1)

    def detect_and_embed(self, frames: Sequence[np.ndarray], frame_indices: Sequence[int]) -> list[DetectedFace]:
        """Detect, align and embed every face; adds to `timings_ms` per stage."""
        self.load()
        faces = []
        for frame, index in zip(frames, frame_indices, strict=True):
            frame = np.ascontiguousarray(frame, dtype=np.uint8)
            t0 = time.perf_counter()
            rects, scores, _ = self._detector.run(frame, self._upsample_for(frame), 0.0)
            shapes = [self._shape(frame, r) for r in rects]
            t1 = time.perf_counter()
            for rect, score, shape in zip(rects, scores, shapes, strict=True):
                embedding = np.asarray(self._recognizer.compute_face_descriptor(frame, shape), dtype=np.float32)
                faces.append(DetectedFace(index, _clip_box(rect, frame.shape), float(score), embedding))
            t2 = time.perf_counter()
            self.timings_ms["detect"] += (t1 - t0) * 1000
            self.timings_ms["embed"] += (t2 - t1) * 1000
        return faces

    def detect(
        self, frames: Sequence[np.ndarray], frame_indices: Sequence[int], *, min_faces: int = 0
    ) -> list[FaceBox]:
        """HOG at about `detect_height`; again at full resolution when no frame shows `min_faces` faces."""
        self.load()
        t0 = time.perf_counter()
        boxes = self._detect_at(frames, frame_indices, self.detect_height)
        if _most_per_frame(boxes) < min_faces and frames and frames[0].shape[0] > self.detect_height:
            boxes = self._detect_at(frames, frame_indices, None)  # small faces the scaled pass missed
        self.timings_ms["detect"] += (time.perf_counter() - t0) * 1000
        return boxes

    def _detect_at(self, frames: Sequence[np.ndarray], indices: Sequence[int], height: int | None) -> list[FaceBox]:
        import dlib

        boxes = []
        for frame, index in zip(frames, indices, strict=True):
            frame = np.ascontiguousarray(frame, dtype=np.uint8)
            small, scale = _scaled(frame, height)
            rects, scores, _ = self._detector.run(small, self._upsample_for(small), 0.0)
            for rect, score in zip(rects, scores, strict=True):
                full = dlib.rectangle(
                    *(round(v * scale) for v in (rect.left(), rect.top(), rect.right(), rect.bottom()))
                )
                boxes.append(FaceBox(index, _clip_box(full, frame.shape), float(score), self._shape(frame, full)))
        return boxes

    def embed_faces(self, frames: dict[int, np.ndarray], boxes: Sequence[FaceBox]) -> np.ndarray:
        """Dlib descriptors of `boxes` from their full-resolution frames (the 5-point shapes `detect` found)."""
        self.load()
        t0 = time.perf_counter()
        vectors = [
            np.asarray(
                self._recognizer.compute_face_descriptor(np.ascontiguousarray(frames[b.frame_index]), b.landmarks),
                dtype=np.float32,
            )
            for b in boxes
        ]
        self.timings_ms["embed"] += (time.perf_counter() - t0) * 1000
        return np.stack(vectors) if vectors else np.zeros((0, self.embedding_dim), np.float32)

    def similarity(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """1 - euclidean distance, clipped to [0, 1]."""
        return similarity_matrix(a, b, "euclidean")


def _clip_box(rect, shape: tuple[int, ...]) -> tuple[int, int, int, int]:  # noqa: ANN001 - dlib.rectangle
    h, w = shape[:2]
    return max(0, rect.left()), max(0, rect.top()), min(w, rect.right()), min(h, rect.bottom())


def _scaled(frame: np.ndarray, height: int | None) -> tuple[np.ndarray, float]:
    """The frame at about `height` rows (never enlarged) and the factor back to full resolution."""
    if height is None or frame.shape[0] <= height:
        return frame, 1.0
    import cv2

    scale = frame.shape[0] / height
    size = (round(frame.shape[1] / scale), height)
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA), scale


def _most_per_frame(boxes: Sequence[FaceBox]) -> int:
    counts: dict[int, int] = {}
    for box in boxes:
        counts[box.frame_index] = counts.get(box.frame_index, 0) + 1
    return max(counts.values(), default=0)
