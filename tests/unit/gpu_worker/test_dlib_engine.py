"""The offline face engine on real faces: different people never match, the same person does."""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

import numpy as np
import pytest

from gpu_worker.faces.base import EngineUnavailable
from gpu_worker.faces.dlib_engine import DlibFaceEngine
from tests.unit.gpu_worker.conftest import composite


def embed_one(engine, image) -> np.ndarray:
    found = engine.detect_and_embed([np.asarray(image.convert("RGB"))], [0])
    assert len(found) == 1, f"expected one face, found {len(found)}"
    return found[0].embedding


def test_different_people_never_match(engine, faces) -> None:
    embeddings = {name: embed_one(engine, img) for name, img in faces.items()}
    for a, b in combinations(embeddings, 2):
        sim = engine.similarity(embeddings[a][None], embeddings[b][None])[0, 0]
        assert sim < engine.match_threshold, f"{a} and {b} matched ({sim:.3f})"


@pytest.mark.parametrize(("height", "left", "top"), [(150, 40, 30), (230, 380, 100), (120, 250, 200)])
def test_the_same_person_composited_at_another_size_and_position_matches(engine, faces, height, left, top) -> None:
    for name in ("t1-0", "tom-hanks", "astronaut"):
        reference = embed_one(engine, faces[name])
        frame = composite(faces[name], height=height, left=left, top=top)
        found = engine.detect_and_embed([frame], [7])
        assert len(found) == 1 and found[0].frame_index == 7
        x1, y1, x2, y2 = found[0].bbox
        assert left <= x2 and x1 <= left + height and top <= y2 and y1 <= top + height  # found where it was put
        sim = engine.similarity(found[0].embedding[None], reference[None])[0, 0]
        assert sim >= engine.match_threshold, f"{name} at {height}px did not match ({sim:.3f})"
        others = [embed_one(engine, faces[o]) for o in ("t1-1", "t1-5") if o != name]
        assert all(engine.similarity(found[0].embedding[None], o[None])[0, 0] < engine.match_threshold for o in others)


def test_a_frame_without_faces_gives_none(engine) -> None:
    from skimage import data

    assert engine.detect_and_embed([data.coffee()], [0]) == []


def test_missing_weights_say_what_is_missing_and_how_to_stage(tmp_path: Path) -> None:
    with pytest.raises(EngineUnavailable, match=r"missing .*dlib_face_recognition_resnet_model_v1.dat.*pip install"):
        DlibFaceEngine(models_dir=tmp_path).load()
