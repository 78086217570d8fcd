"""Cross-scene face consistency from known embeddings, recorded at finalize; the enrichment switch."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from tests.unit.test_registry import analysis, face, new_project, register
from vidpipe_tasks import media
from vidpipe_tasks.consistency import CharacterFace, face_consistency, project_faces
from vidpipe_tasks.db.models import Asset, Project, Scene
from vidpipe_tasks.db.session import session_scope
from vidpipe_tasks.stages import _select, finalize_project

ARC = "insightface"  # cosine


def faces(character: str, *per_scene: tuple[int, list[float]], engine: str = ARC) -> list[CharacterFace]:
    return [CharacterFace(character, scene, engine, tuple(vector)) for scene, vector in per_scene]


def test_the_score_is_the_mean_over_characters_of_the_mean_cosine_of_their_cross_scene_pairs() -> None:
    measured = face_consistency(
        [
            # a: scenes 1 and 2 alike (1.0), scene 3 orthogonal to both (0, 0): mean of three pairs = 1/3.
            *faces("a", (1, [1, 0]), (2, [2, 0]), (3, [0, 1])),
            # b: one pair at cos = 0.6.
            *faces("b", (1, [1, 0]), (4, [0.6, 0.8])),
        ]
    )
    assert measured["characters"]["a"] == {
        "score": pytest.approx(1 / 3),
        "scenes": [1, 2, 3],
        "pairs": 3,
        "engine": ARC,
    }
    assert measured["characters"]["b"]["score"] == pytest.approx(0.6)
    assert measured["score"] == pytest.approx((1 / 3 + 0.6) / 2)


def test_faces_in_the_same_scene_are_never_paired_and_a_one_scene_character_does_not_count() -> None:
    measured = face_consistency(
        [*faces("a", (1, [1, 0]), (1, [0, 1]), (2, [1, 0])), *faces("c", (1, [1, 0]), (1, [1, 0]))]
    )
    assert measured["characters"]["a"]["pairs"] == 2  # (1a, 2) and (1b, 2), not (1a, 1b)
    assert measured["characters"]["a"]["score"] == pytest.approx(0.5)
    assert "c" not in measured["characters"]
    assert measured["score"] == pytest.approx(0.5)


def test_dlib_faces_compare_on_its_euclidean_scale_and_nothing_recurring_gives_none() -> None:
    measured = face_consistency(faces("a", (1, [0.0, 0.0]), (2, [0.3, 0.4]), engine="dlib-offline"))
    assert measured["score"] == pytest.approx(1 - 0.5)
    assert face_consistency(faces("a", (1, [1.0, 0.0]))) == {"score": None, "characters": {}}


def test_finalize_records_the_consistency_of_the_faces_analysis_attributed_to_each_character(
    settings, tmp_path
) -> None:
    pid = new_project(settings, tmp_path)
    register(settings, pid, 1, analysis([face(1)]))  # bo's first face becomes asset "bo"
    with session_scope(settings.database_url) as s:
        bo = s.scalar(select(Asset).where(Asset.tag == "bo"))
        ana = s.scalar(select(Asset).where(Asset.tag == "ana"))
        bo_id, ana_id = bo.id, ana.id
    drifted = list(np.asarray(face(1)) + 0.1 * np.asarray(face(7)))
    ana_face = {
        "asset_id": ana_id,
        "tag": "ana",
        "frames": [0],
        "face_count": 1,
        "similarity": 0.9,
        "embedding": face(3),
    }
    bo_match = {"asset_id": bo_id, "tag": "bo", "frames": [0], "face_count": 2, "similarity": 0.8, "embedding": drifted}
    register(settings, pid, 2, analysis([], matches=[bo_match, ana_face]))
    finalize_project(settings, pid)
    expected_bo = 1 - float(np.linalg.norm(np.asarray(face(1)) - np.asarray(drifted)))
    with session_scope(settings.database_url) as s:
        project = s.get(Project, pid)
        # ana is matched only in scene 2: one scene, no pair; bo's two scenes give the score.
        assert project.face_consistency == pytest.approx(expected_bo, abs=1e-5)
        assert set(project.face_consistency_detail["characters"]) == {"bo"}
        assert [f.character for f in project_faces(s, pid)] == ["bo", "bo", "ana"]


def test_without_enrichment_extracted_faces_are_never_chosen_as_references(settings, tmp_path: Path) -> None:
    pid = new_project(settings, tmp_path)
    register(settings, pid, 1, analysis([face(1)]))
    crop = media.absolute(settings.media_root, "crops/c0.png")  # the extracted asset's reference exists
    crop.parent.mkdir(parents=True, exist_ok=True)
    crop.write_bytes(b"png")

    def chosen(with_settings) -> dict:
        with session_scope(settings.database_url) as s:
            scene = s.scalar(select(Scene).where(Scene.project_id == pid, Scene.scene_index == 2))
            return _select(s, scene, with_settings)[1]

    assert chosen(replace(settings, enrichment=False)) == {"ana": "ana"}
    assert chosen(settings) == {"ana": "ana", "bo": "bo"}  # the default: enrichment on
