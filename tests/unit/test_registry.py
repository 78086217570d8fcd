"""Registry commits: tag minting, re-match at commit, name binding, idempotency, no raw embeddings stored."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml
from sqlalchemy import func, select

from vidpipe_tasks.db.models import Asset, AssetAppearance, AssetSource, Scene, StageStatus
from vidpipe_tasks.db.session import session_scope
from vidpipe_tasks.registry import register_scene, select_references, strip_embeddings
from vidpipe_tasks.stages import _select
from vidpipe_tasks.storyboard import load_storyboard
from vidpipe_tasks.workflow import create_project

ENGINE = {"face": "dlib-offline", "metric": "euclidean", "match_threshold": 0.4, "embedder": None}
BOARD = {
    "title": "registry test",
    "manifest": {
        "name": "shared",
        "assets": [{"type": "character", "tag": "ana", "name": "Ana", "reference_image": "stock:face/t1-0"}],
    },
    "characters": [{"tag": "bo", "name": "Bo"}],
    "scenes": [
        {"description": "one", "characters": ["ana", "bo"]},
        {"description": "two", "characters": ["ana", "bo"]},
    ],
}


def face(seed: int) -> list[float]:
    # Random directions of norm 0.5: distinct seeds sit ~0.7 apart (similarity ~0.3, below threshold).
    v = np.random.default_rng(seed).normal(size=128)
    return list(0.5 * v / np.linalg.norm(v))


def new_project(settings, tmp_path: Path, board: dict = BOARD) -> int:
    path = tmp_path / f"board-{np.random.default_rng().integers(1 << 30)}.yaml"
    path.write_text(yaml.safe_dump(board))
    return create_project(settings, path, load_storyboard(path))


def analysis(candidates: list[list[float]], matches: list[dict] | None = None) -> dict:
    return {
        "status": "ok",
        "reason": None,
        "engine": ENGINE,
        "matches": matches or [],
        "candidates": [
            {
                "key": f"c{i}",
                "frames": [0, 3],
                "face_count": 2,
                "crop_path": f"crops/c{i}.png",
                "quality": 0.9,
                "bbox": [0, 0, 10, 10],
                "embedding": emb,
            }
            for i, emb in enumerate(candidates)
        ],
        "reference_embeddings": {},
        "continuity": {
            "score": 0.8,
            "components": {"identity": 0.9, "adherence": 0.7, "cross_scene": None, "visual": None},
            "missing": ["cross_scene", "visual"],
        },
    }


def generated(settings, project_id: int, scene_index: int) -> dict:
    """Record the reference selection exactly as generate_clip does (no clip rendered)."""
    with session_scope(settings.database_url) as s:
        scene = s.scalar(select(Scene).where(Scene.project_id == project_id, Scene.scene_index == scene_index))
        return _select(s, scene)[1]


def register(settings, project_id: int, scene_index: int, result: dict):
    with session_scope(settings.database_url) as s:
        scene = s.scalar(select(Scene).where(Scene.project_id == project_id, Scene.scene_index == scene_index))
        return register_scene(s, scene, result)


def count(settings, model) -> int:
    with session_scope(settings.database_url) as s:
        return s.scalar(select(func.count()).select_from(model))


def test_the_single_reference_less_character_is_bound_to_the_single_new_face(settings, tmp_path) -> None:
    pid = new_project(settings, tmp_path)
    summary = register(settings, pid, 1, analysis([face(1)]))
    assert summary.new_asset_tags == ["bo"]
    with session_scope(settings.database_url) as s:
        bo = s.scalar(select(Asset).where(Asset.tag == "bo"))
        assert (bo.source, bo.character, bo.name, bo.origin_scene_index) == (AssetSource.CLIP_EXTRACT, "bo", "Bo", 1)
        refs = select_references(s, bo.manifest_id, ["ana", "bo"])
        assert refs["bo"].id == bo.id and refs["ana"].source == AssetSource.UPLOADED


def test_ambiguous_new_faces_get_minted_tags_without_names(settings, tmp_path) -> None:
    pid = new_project(settings, tmp_path)
    summary = register(settings, pid, 1, analysis([face(1), face(2)]))
    assert summary.new_asset_tags == ["extract-001", "extract-002"]
    with session_scope(settings.database_url) as s:
        assert s.scalar(select(func.count()).where(Asset.character.is_(None), Asset.tag.like("extract-%"))) == 2


def test_registering_the_same_scene_twice_adds_nothing(settings, tmp_path) -> None:
    pid = new_project(settings, tmp_path)
    register(settings, pid, 1, analysis([face(1)]))
    before = (count(settings, Asset), count(settings, AssetAppearance))
    again = register(settings, pid, 1, analysis([face(1)]))
    assert again.new_asset_tags == ["bo"]
    assert (count(settings, Asset), count(settings, AssetAppearance)) == before


def test_a_rerun_after_a_lost_commit_marker_rematches_instead_of_duplicating(settings, tmp_path) -> None:
    pid = new_project(settings, tmp_path)
    register(settings, pid, 1, analysis([face(1)]))
    with session_scope(settings.database_url) as s:
        scene = s.scalar(select(Scene).where(Scene.project_id == pid, Scene.scene_index == 1))
        scene.scene_manifest.registered_at = None
    before = count(settings, Asset)
    register(settings, pid, 1, analysis([face(1)]))
    assert count(settings, Asset) == before


def test_the_same_new_face_seen_by_two_projects_becomes_one_asset(settings, tmp_path) -> None:
    first, second = new_project(settings, tmp_path), new_project(settings, tmp_path)
    register(settings, first, 1, analysis([face(7)]))
    # The second project's analysis ran before the first committed, so it did not match then.
    nearly_same = list(np.asarray(face(7)) + 0.01)
    summary = register(settings, second, 1, analysis([nearly_same]))
    assert summary.new_asset_tags == []
    with session_scope(settings.database_url) as s:
        kinds = s.scalars(select(AssetAppearance.kind).where(AssetAppearance.project_id == second)).all()
    assert kinds == ["match"] and count(settings, Asset) == 2  # ana + one extracted face


def test_different_new_faces_in_two_projects_never_share_a_tag(settings, tmp_path) -> None:
    first, second = new_project(settings, tmp_path), new_project(settings, tmp_path)
    # Both scenes were generated before either registered: neither had a reference for bo.
    assert generated(settings, first, 1) == generated(settings, second, 1) == {"ana": "ana"}
    a = register(settings, first, 1, analysis([face(1)]))
    b = register(settings, second, 1, analysis([face(2)]))
    assert a.new_asset_tags == ["bo"] and b.new_asset_tags == ["bo-2"]


def test_stored_analysis_has_no_raw_embeddings_and_keeps_the_score(settings, tmp_path) -> None:
    pid = new_project(settings, tmp_path)
    register(settings, pid, 1, analysis([face(1)]))
    with session_scope(settings.database_url) as s:
        sm = s.scalar(select(Scene).where(Scene.project_id == pid, Scene.scene_index == 1)).scene_manifest
        stored, score = sm.cv_analysis_json, sm.continuity_score
    assert score == 0.8
    assert "embedding" not in str(stored) and stored["candidates"][0]["registered_as"] == "bo"


def test_a_degraded_analysis_marks_the_scene_and_registers_nothing(settings, tmp_path) -> None:
    pid = new_project(settings, tmp_path)
    summary = register(settings, pid, 1, {"status": "degraded", "reason": "ClipUnreadable: bad", "engine": ENGINE})
    assert summary.degraded_reason == "ClipUnreadable: bad" and summary.continuity_score is None
    with session_scope(settings.database_url) as s:
        scene = s.scalar(select(Scene).where(Scene.project_id == pid, Scene.scene_index == 1))
        assert (scene.analysis_status, scene.registry_status) == (StageStatus.DEGRADED, StageStatus.DONE)


def test_strip_embeddings_removes_nested_arrays() -> None:
    stripped = strip_embeddings({"a": [{"embedding": [1.0] * 128, "k": 1}], "reference_embeddings": {"1": [0.0]}})
    assert stripped == {"a": [{"k": 1}]}


def test_concurrent_registrations_into_one_manifest_mint_unique_tags_and_one_asset_per_face(settings, tmp_path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    projects = [new_project(settings, tmp_path) for _ in range(4)]
    for pid in projects:
        generated(settings, pid, 1)
    # Projects 0 and 1 saw the same new face; 2 and 3 saw different ones. All commit at once.
    shared = face(42)
    inputs = [[shared], [list(np.asarray(shared) + 0.005)], [face(43)], [face(44)]]
    with ThreadPoolExecutor(max_workers=4) as pool:
        jobs = [(p, 1, analysis(c)) for p, c in zip(projects, inputs, strict=True)]
        list(pool.map(lambda args: register(settings, *args), jobs))
    with session_scope(settings.database_url) as s:
        tags = s.scalars(select(Asset.tag).where(Asset.source == AssetSource.CLIP_EXTRACT)).all()
        shared_owners = s.scalars(
            select(AssetAppearance.asset_id).where(AssetAppearance.project_id.in_(projects[:2]))
        ).all()
    assert len(tags) == len(set(tags)) == 3  # three different faces, three assets, no tag twice
    assert len(set(shared_owners)) == 1  # the shared face is one asset seen by both projects


def test_new_assets_keep_their_crop_image_embedding_and_the_next_scene_gets_this_scenes_visual(
    settings, tmp_path
) -> None:
    from vidpipe_tasks.db.models import Clip, SceneManifest
    from vidpipe_tasks.stages import analysis_request

    project = new_project(settings, tmp_path)
    generated(settings, project, 1)
    result = analysis([face(7)])
    result["engine"] = {**ENGINE, "embedder": "open_clip:tiny"}
    result["candidates"][0]["image_embedding"] = [0.25] * 32
    result["visual_embedding"] = [0.5] * 32
    register(settings, project, 1, result)
    with session_scope(settings.database_url) as s:
        asset = s.scalar(select(Asset).where(Asset.source == AssetSource.CLIP_EXTRACT))
        assert asset.image_embedding == [0.25] * 32 and asset.image_embedder == "open_clip:tiny"
        sm = s.scalar(select(SceneManifest))
        assert sm.visual_embedding == [0.5] * 32 and sm.visual_embedder == "open_clip:tiny"
        assert "visual_embedding" not in sm.cv_analysis_json
        scene2 = s.scalar(select(Scene).where(Scene.project_id == project, Scene.scene_index == 2))
        s.add(
            Clip(scene_id=scene2.id, path="c.mp4", size_bytes=1, frame_count=1, fps=1, width=1, height=1, generator="t")
        )
    request = analysis_request(settings, {"project_id": project, "scene_index": 2})
    assert request["previous_visual"] == {"scene_index": 1, "embedder": "open_clip:tiny", "embedding": [0.5] * 32}
