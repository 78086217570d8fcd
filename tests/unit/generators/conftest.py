"""Shared fixtures for generator tests: a dlib face engine configured like the CV worker."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

#: The CV worker's rule: two descriptors are the same person when their distance is below this.
MATCH_DISTANCE = 0.6


@dataclass(frozen=True)
class Face:
    """One detected face: dlib's box (left, top, right, bottom) and its 128-d descriptor."""

    box: tuple[int, int, int, int]
    descriptor: np.ndarray

    def distance(self, other: Face | np.ndarray) -> float:
        descriptor = other.descriptor if isinstance(other, Face) else other
        return float(np.linalg.norm(self.descriptor - descriptor))


class FaceEngine:
    """dlib HOG frontal detector (upsample 1) plus 5-point landmarks and the ResNet descriptor."""

    def __init__(self) -> None:
        dlib = pytest.importorskip("dlib")
        spec = importlib.util.find_spec("face_recognition_models")
        if spec is None or not spec.submodule_search_locations:
            pytest.skip("face_recognition_models is not installed")
        models = Path(list(spec.submodule_search_locations)[0]) / "models"
        self._dlib = dlib
        self._detector = dlib.get_frontal_face_detector()
        self._shape = dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat"))
        self._encoder = dlib.face_recognition_model_v1(str(models / "dlib_face_recognition_resnet_model_v1.dat"))

    def faces(self, rgb: np.ndarray) -> list[Face]:
        """Detect faces in an RGB uint8 image, sorted left to right."""
        rgb = np.ascontiguousarray(rgb[..., :3], dtype=np.uint8)
        found = []
        for rect in self._detector(rgb, 1):
            shape = self._shape(rgb, rect)
            descriptor = np.array(self._encoder.compute_face_descriptor(rgb, shape))
            found.append(Face((rect.left(), rect.top(), rect.right(), rect.bottom()), descriptor))
        return sorted(found, key=lambda face: face.box[0])

    def single_face(self, rgb: np.ndarray) -> Face:
        faces = self.faces(rgb)
        assert len(faces) == 1, f"expected exactly one face, found {len(faces)}: {[f.box for f in faces]}"
        return faces[0]


@pytest.fixture(scope="session")
def face_engine() -> FaceEngine:
    return FaceEngine()
