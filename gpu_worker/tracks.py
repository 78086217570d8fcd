"""Face tracks across the sampled frames, so a clip embeds a few faces of each track, not every detection.

Identity embedding is the costliest CPU stage (dlib: ~55 ms a face), and the faces of one track are
one person. A track links a box to the nearest box of an earlier frame when it is close in position and
size and looks alike (a grey thumbnail correlation: it rejects background and very different faces, but
cannot tell faces apart reliably). Each track then embeds its first and last faces: a track that
switched identity (a cut from one close-up to another at the same place) has ends of two people. When
those embeddings disagree (below the engine's match threshold) the track is not trusted and
every face in it is embedded, as without tracking.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from gpu_worker.faces.base import DetectedFace, FaceBox, FaceEngine

#: Largest centre shift between linked boxes, in face widths (sampled frames are ~0.7 s apart).
MAX_SHIFT = 1.5
#: Largest size ratio between linked boxes.
MAX_SIZE_RATIO = 1.5
#: Smallest correlation of the two boxes' 16x16 grey thumbnails (a different face at the same place fails).
MIN_LOOKALIKE = 0.5
_THUMB = 16


@dataclass
class Track:
    """Boxes believed to be one face across frames, in frame order, with their thumbnails."""

    boxes: list[FaceBox] = field(default_factory=list)
    thumbs: list[np.ndarray] = field(default_factory=list)


def _thumb(frame: np.ndarray, box: FaceBox) -> np.ndarray:
    x1, y1, x2, y2 = box.bbox
    crop = frame[y1:y2, x1:x2]
    rows = np.linspace(0, crop.shape[0] - 1, _THUMB).astype(int)
    cols = np.linspace(0, crop.shape[1] - 1, _THUMB).astype(int)
    thumb = crop[np.ix_(rows, cols)].mean(axis=2).ravel()  # grey of the sampled pixels only
    thumb = thumb - thumb.mean()
    return thumb / max(float(np.linalg.norm(thumb)), 1e-6)


def _size(box: FaceBox) -> float:
    return float(max(box.bbox[2] - box.bbox[0], box.bbox[3] - box.bbox[1], 1))


def _shift(a: FaceBox, b: FaceBox) -> float:
    """Centre distance in face widths, or inf when the sizes differ too much to be one face."""
    sa, sb = _size(a), _size(b)
    if max(sa, sb) / min(sa, sb) > MAX_SIZE_RATIO:
        return float("inf")
    ca = np.array([(a.bbox[0] + a.bbox[2]) / 2, (a.bbox[1] + a.bbox[3]) / 2])
    cb = np.array([(b.bbox[0] + b.bbox[2]) / 2, (b.bbox[1] + b.bbox[3]) / 2])
    return float(np.linalg.norm(ca - cb) / max(sa, sb))


def link_tracks(boxes: Sequence[FaceBox], frames: dict[int, np.ndarray]) -> list[Track]:
    """Greedy frame-by-frame linking: each box joins the closest eligible track not yet extended in its frame."""
    tracks: list[Track] = []
    for index in sorted({b.frame_index for b in boxes}):
        here = [b for b in boxes if b.frame_index == index]
        thumbs = [_thumb(frames[index], b) for b in here]
        pairs = []
        for i, box in enumerate(here):
            for t, track in enumerate(tracks):
                shift = _shift(track.boxes[-1], box)
                if shift <= MAX_SHIFT and float(track.thumbs[-1] @ thumbs[i]) >= MIN_LOOKALIKE:
                    pairs.append((shift, i, t))
        used_boxes, used_tracks = set(), set()
        for _, i, t in sorted(pairs):
            if i not in used_boxes and t not in used_tracks:
                used_boxes.add(i), used_tracks.add(t)
                tracks[t].boxes.append(here[i])
                tracks[t].thumbs.append(thumbs[i])
        tracks += [Track([b], [thumbs[i]]) for i, b in enumerate(here) if i not in used_boxes]
    return tracks


def _picks(track: Track) -> list[int]:
    """Positions in the track of the faces to embed: its first and its last.

    The ends, not the best faces: a track that switched identity once has a different person at each
    end, so the agreement check catches it with two embeddings (a bad end face only costs speed: the
    check fails and every face is embedded).
    """
    return sorted({0, len(track.boxes) - 1})


def _mean(vectors: np.ndarray) -> np.ndarray:
    mean = vectors.mean(axis=0)
    norms = np.linalg.norm(vectors, axis=1)
    if np.allclose(norms, 1.0, atol=1e-3):  # unit embeddings (cosine engines) stay unit length
        mean = mean / max(float(np.linalg.norm(mean)), 1e-12)
    return mean.astype(np.float32)


def embed_tracks(engine: FaceEngine, frames: dict[int, np.ndarray], tracks: list[Track]) -> list[DetectedFace]:
    """Every box as a DetectedFace: a trusted track's faces share the mean of its picked faces' embeddings."""
    if not tracks:
        return []
    picks = [_picks(t) for t in tracks]
    flat = [t.boxes[i] for t, chosen in zip(tracks, picks, strict=True) for i in chosen]
    vectors = iter(engine.embed_faces(frames, flat))
    picked = [np.stack([next(vectors) for _ in chosen]) for chosen in picks]
    untrusted = [k for k, v in enumerate(picked) if len(v) > 1 and not _agree(engine.similarity, v, engine)]
    rest = [(k, i) for k in untrusted for i in range(len(tracks[k].boxes)) if i not in picks[k]]
    extra = dict(zip(rest, engine.embed_faces(frames, [tracks[k].boxes[i] for k, i in rest]), strict=True))
    faces = []
    for k, track in enumerate(tracks):
        shared = None if k in untrusted else _mean(picked[k])
        for i, box in enumerate(track.boxes):
            vector = (
                shared if shared is not None else (picked[k][picks[k].index(i)] if i in picks[k] else extra[(k, i)])
            )
            faces.append(DetectedFace(box.frame_index, box.bbox, box.det_score, vector))
    return sorted(faces, key=lambda f: (f.frame_index, f.bbox))


def _agree(similarity: Callable[[np.ndarray, np.ndarray], np.ndarray], vectors: np.ndarray, engine) -> bool:  # noqa: ANN001
    return bool(similarity(vectors[:1], vectors[1:]).min() >= engine.match_threshold)
