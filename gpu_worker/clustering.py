"""Grouping unmatched faces across frames into new-entity candidates, each with its best face."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from gpu_worker.faces.base import DetectedFace


@dataclass
class FaceCluster:
    """Faces believed to be one person."""

    faces: list[DetectedFace] = field(default_factory=list)

    @property
    def centroid(self) -> np.ndarray:
        return np.mean([f.embedding for f in self.faces], axis=0)

    @property
    def frames(self) -> list[int]:
        return sorted({f.frame_index for f in self.faces})


def cluster_faces(
    faces: list[DetectedFace], similarity: Callable[[np.ndarray, np.ndarray], np.ndarray], threshold: float
) -> list[FaceCluster]:
    """Greedy centroid clustering in frame order: join the most similar cluster at or above `threshold`.

    Deterministic for a given input order; one person seen across frames forms one cluster because
    descriptors of the same face vary far less than the match threshold.
    """
    clusters: list[FaceCluster] = []
    for face in sorted(faces, key=lambda f: (f.frame_index, f.bbox)):
        if clusters:
            sims = similarity(face.embedding[None, :], np.stack([c.centroid for c in clusters]))[0]
            best = int(np.argmax(sims))
            if sims[best] >= threshold:
                clusters[best].faces.append(face)
                continue
        clusters.append(FaceCluster([face]))
    return clusters


def face_quality(face: DetectedFace, frame_shape: tuple[int, ...]) -> float:
    """Larger, more confident faces away from the frame border make better references (0..1)."""
    h, w = frame_shape[:2]
    x1, y1, x2, y2 = face.bbox
    area = (x2 - x1) * (y2 - y1) / float(w * h)
    margin = min(x1, y1, w - x2, h - y2) / float(min(w, h))
    border = 1.0 if margin > 0.02 else 0.5
    confidence = 1.0 / (1.0 + np.exp(-face.det_score))
    return float(min(1.0, 4.0 * area) * confidence * border)


def best_face(cluster: FaceCluster, frame_shape: tuple[int, ...]) -> DetectedFace:
    return max(cluster.faces, key=lambda f: (face_quality(f, frame_shape), -f.frame_index))
