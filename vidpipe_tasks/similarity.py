"""Identity similarity shared by the CV worker and the registry (numpy only, no model imports)."""

from __future__ import annotations

import numpy as np

#: Metric per face engine: how its embeddings compare. Scores are in [0, 1], higher is more alike.
ENGINE_METRICS: dict[str, str] = {"dlib-offline": "euclidean", "insightface": "cosine"}


def similarity_matrix(a: np.ndarray, b: np.ndarray, metric: str) -> np.ndarray:
    """Pairwise similarity (len(a), len(b)) as one matrix product.

    Args:
        a: (n, d) embeddings.
        b: (m, d) embeddings.
        metric: "euclidean" (1 - distance, dlib's descriptors) or "cosine" (ArcFace).

    Returns:
        (n, m) float32 similarities clipped to [0, 1].

    """
    a, b = np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32)
    if a.size == 0 or b.size == 0:  # before reshape: numpy cannot infer -1 for an empty array
        return np.zeros((len(a), len(b)), dtype=np.float32)
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    if metric == "cosine":
        an = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
        bn = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
        sim = an @ bn.T
    elif metric == "euclidean":
        sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
        sim = 1.0 - np.sqrt(np.maximum(sq, 0.0))
    else:
        raise ValueError(f"unknown metric {metric!r}; expected 'euclidean' or 'cosine'")
    return np.clip(sim, 0.0, 1.0).astype(np.float32)
