"""Face tracks (best faces embedded, untrusted tracks embedded in full) and dlib detection at 360 px."""

from __future__ import annotations

import numpy as np

from gpu_worker.faces.base import FaceBox
from gpu_worker.tracks import embed_tracks, link_tracks
from tests.unit.gpu_worker.conftest import composite


def hd(face, *, height: int, left: int, top: int) -> np.ndarray:
    return composite(face, height=height, left=left, top=top, size=(1280, 720)).copy()


def iou(a: tuple, b: tuple) -> float:
    w = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    return w * h / (area(a) + area(b) - w * h)


def test_hog_at_360_px_finds_a_720p_face_where_full_resolution_finds_it(engine, faces) -> None:
    frame = hd(faces["t1-0"], height=200, left=500, top=200)
    (low,) = engine.detect([frame], [0])
    (full,) = engine._detect_at([frame], [0], None)
    assert iou(low.bbox, full.bbox) >= 0.5, (low.bbox, full.bbox)  # HOG's window scales differ a little
    (vector,) = engine.embed_faces({0: frame}, [low])
    reference = engine.detect_and_embed([np.asarray(faces["t1-0"].convert("RGB"))], [0])[0].embedding
    assert engine.similarity(vector[None], reference[None])[0, 0] >= engine.match_threshold


def test_fewer_faces_than_declared_retries_at_full_resolution(engine, faces, monkeypatch) -> None:
    frame = hd(faces["t1-0"], height=200, left=500, top=200)
    heights = []
    real = engine._detect_at

    def spy(frames, indices, height):
        heights.append(height)
        return real(frames, indices, height)

    monkeypatch.setattr(engine, "_detect_at", spy)
    engine.detect([frame], [0], min_faces=1)
    engine.detect([frame], [0], min_faces=2)  # the scene declares two; only one is on screen
    assert heights == [360, 360, None]


def test_one_face_moving_across_frames_is_one_track_embedding_its_first_and_last_faces(
    engine, faces, monkeypatch
) -> None:
    frames = {i: hd(faces["t1-0"], height=220, left=300 + 40 * i, top=200) for i in range(6)}
    boxes = engine.detect(list(frames.values()), list(frames))
    tracks = link_tracks(boxes, frames)
    assert len(boxes) >= 4 and len(tracks) == 1 and len(tracks[0].boxes) == len(boxes)
    embedded = []
    real = engine.embed_faces
    monkeypatch.setattr(engine, "embed_faces", lambda fr, bs: embedded.append(len(bs)) or real(fr, bs))
    found = embed_tracks(engine, frames, tracks)
    assert embedded == [2, 0] and len(found) == len(boxes)
    assert all(np.array_equal(f.embedding, found[0].embedding) for f in found)


def test_two_people_are_two_tracks_and_a_new_face_in_the_same_place_keeps_its_own_identity(engine, faces) -> None:
    both = {i: hd(faces["t1-0"], height=220, left=100, top=200) for i in range(3)}
    for i in both:
        both[i][200:440, 800:1040] = hd(faces["t1-1"], height=220, left=800, top=200)[200:440, 800:1040]
    assert len(link_tracks(engine.detect(list(both.values()), list(both)), both)) == 2
    swap = {
        0: hd(faces["t1-0"], height=180, left=500, top=200),
        1: hd(faces["tom-hanks"], height=180, left=500, top=200),
    }
    # Linked or not (thumbnails cannot tell faces apart), the two people keep their own embeddings.
    found = embed_tracks(engine, swap, link_tracks(engine.detect(list(swap.values()), list(swap)), swap))
    assert len(found) == 2
    assert engine.similarity(found[0].embedding[None], found[1].embedding[None])[0, 0] < engine.match_threshold


def test_a_track_whose_ends_disagree_gets_every_face_embedded(engine, faces, monkeypatch) -> None:
    frames = {i: hd(faces["t1-0"], height=220, left=300 + 40 * i, top=200) for i in range(4)}
    tracks = link_tracks(engine.detect(list(frames.values()), list(frames)), frames)
    (track,) = tracks
    assert len(track.boxes) >= 3
    # Make the ends disagree: a tracking error (two people linked) must not spread one embedding.
    monkeypatch.setattr(engine, "match_threshold", 1.01)
    embedded = []
    real = engine.embed_faces
    monkeypatch.setattr(engine, "embed_faces", lambda fr, bs: embedded.append(len(bs)) or real(fr, bs))
    found = embed_tracks(engine, frames, tracks)
    assert embedded == [2, len(track.boxes) - 2] and len(found) == len(track.boxes)


def test_no_boxes_no_tracks_no_faces(engine) -> None:
    assert link_tracks([], {}) == [] and embed_tracks(engine, {}, []) == []
    box = FaceBox(0, (0, 0, 50, 50), 1.0, None)
    assert len(link_tracks([box], {0: np.zeros((100, 100, 3), np.uint8)})) == 1
