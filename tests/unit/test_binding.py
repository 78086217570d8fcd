"""Binding extracted faces to characters: the solver's rules, the registry commit, and the scope of characters."""

from __future__ import annotations

from sqlalchemy import select

from tests.unit.test_registry import ENGINE, analysis, face, generated, new_project, register
from vidpipe_tasks.binding import (
    RULE_COOCCURRENCE,
    RULE_ELIMINATION,
    RULE_UNACCOUNTED,
    Face,
    SceneEvidence,
    solve,
)
from vidpipe_tasks.db.models import Asset, AssetAppearance, Clip, Scene, StageStatus
from vidpipe_tasks.db.session import session_scope
from vidpipe_tasks.registry import select_references

#: The two-at-once storyboard: bea and cal first appear together in scene 1, neither with a reference.
DUO = {
    "title": "two at once",
    "manifest": {
        "name": "duo",
        "assets": [{"type": "character", "tag": "ada", "name": "Ada", "reference_image": "stock:face/t1-0"}],
    },
    "characters": [{"tag": "bea", "name": "Bea"}, {"tag": "cal", "name": "Cal"}],
    "scenes": [
        {"description": "Bea and Cal arrive", "characters": ["bea", "cal"]},
        {"description": "Ada alone", "characters": ["ada"]},
        {"description": "Ada meets Cal", "characters": ["ada", "cal"]},
        {"description": "all three", "characters": ["ada", "bea", "cal"]},
    ],
}


def scene(project: int, index: int, declared: set[str], assets: set[int], referenced: set[str] = frozenset()):
    return SceneEvidence(project, index, frozenset(declared), frozenset(referenced), frozenset(assets))


def test_a_face_matched_where_one_declared_character_is_unaccounted_for_is_bound_then_the_other_by_elimination():
    faces = [Face(1, 7, None), Face(2, 7, None), Face(9, None, "ada")]
    scenes = [scene(7, 1, {"bea", "cal"}, {1, 2}), scene(7, 3, {"ada", "cal"}, {9, 2}, referenced={"ada"})]
    result = solve(faces, scenes, shared=frozenset({"ada"}))
    assert result.bound == {2: (("cal", 7), RULE_UNACCOUNTED), 1: (("bea", 7), RULE_ELIMINATION)}
    assert result.candidates == {}


def test_a_face_seen_in_two_scenes_is_bound_to_the_one_character_both_declare():
    faces = [Face(1, 7, None), Face(2, 7, None), Face(3, 7, None)]
    scenes = [scene(7, 1, {"bea", "cal"}, {1, 2}), scene(7, 2, {"bea", "dan"}, {1, 3})]
    result = solve(faces, scenes, shared=frozenset())
    assert result.bound[1] == (("bea", 7), RULE_COOCCURRENCE)
    # And with bea taken, each other face is the one character left in its scene.
    assert result.bound[2] == (("cal", 7), RULE_ELIMINATION) and result.bound[3] == (("dan", 7), RULE_ELIMINATION)


def test_two_faces_of_one_scene_with_the_same_characters_stay_unbound_and_list_their_candidates():
    faces = [Face(1, 7, None), Face(2, 7, None)]
    scenes = [scene(7, 1, {"bea", "cal"}, {1, 2}), scene(7, 2, {"bea", "cal"}, {1, 2})]
    result = solve(faces, scenes, shared=frozenset())
    assert result.bound == {}
    assert result.candidates == {1: {("bea", 7), ("cal", 7)}, 2: {("bea", 7), ("cal", 7)}}


def test_two_new_faces_for_one_unaccounted_character_bind_neither():
    faces = [Face(1, 7, None), Face(2, 7, None)]
    result = solve(faces, [scene(7, 1, {"ada", "bea"}, {1, 2}, referenced={"ada"})], shared=frozenset({"ada"}))
    assert result.bound == {} and result.candidates[1] == {("bea", 7)}


def test_another_projects_scene_constrains_only_manifest_characters():
    # Face 1 (project 7) reappears in project 8, where the generator gave 8's own "bea" the same face.
    faces = [Face(1, 7, None), Face(2, 7, None)]
    scenes = [scene(7, 1, {"bea", "cal"}, {1, 2}), scene(8, 1, {"bea"}, {1})]
    result = solve(faces, scenes, shared=frozenset())
    assert result.bound == {} and result.candidates[1] == {("bea", 7), ("cal", 7)}


def asset_ids(settings) -> dict[str, int]:
    with session_scope(settings.database_url) as s:
        return {a.tag: a.id for a in s.scalars(select(Asset))}


def matched(asset_id: int, seed: int) -> dict:
    return {
        "asset_id": asset_id,
        "tag": "x",
        "frames": [0, 3],
        "face_count": 2,
        "similarity": 0.9,
        "embedding": face(seed),
    }


def characters(settings) -> dict[str, str | None]:
    with session_scope(settings.database_url) as s:
        return {a.tag: a.character for a in s.scalars(select(Asset))}


def run_duo_to_scene_3(settings, tmp_path) -> tuple[int, dict[str, int]]:
    pid = new_project(settings, tmp_path, DUO)
    assert generated(settings, pid, 1) == {}
    assert register(settings, pid, 1, analysis([face(1), face(2)])).new_asset_tags == ["extract-001", "extract-002"]
    ids = asset_ids(settings)
    assert generated(settings, pid, 2) == {"ada": "ada"}
    assert register(settings, pid, 2, analysis([], [matched(ids["ada"], 9)])).bindings == []
    assert generated(settings, pid, 3) == {"ada": "ada"}  # cal has only an unbound face: no reference yet
    return pid, ids


def test_the_two_at_once_faces_are_bound_by_the_end_of_the_scene_that_disambiguates_them(settings, tmp_path):
    pid, ids = run_duo_to_scene_3(settings, tmp_path)
    assert characters(settings) == {"ada": "ada", "extract-001": None, "extract-002": None}
    summary = register(settings, pid, 3, analysis([], [matched(ids["ada"], 9), matched(ids["extract-002"], 2)]))
    assert [(b["asset_tag"], b["character"], b["rule"]) for b in summary.bindings] == [
        ("extract-002", "cal", RULE_UNACCOUNTED),
        ("extract-001", "bea", RULE_ELIMINATION),
    ]
    assert characters(settings) == {"ada": "ada", "extract-001": "bea", "extract-002": "cal"}
    assert generated(settings, pid, 4) == {"ada": "ada", "bea": "extract-001", "cal": "extract-002"}
    with session_scope(settings.database_url) as s:
        bea = s.get(Asset, ids["extract-001"])
        assert (bea.name, bea.binding["rule"], bea.binding["scene_index"]) == ("Bea", RULE_ELIMINATION, 3)


def test_a_redelivered_disambiguating_commit_binds_nothing_twice(settings, tmp_path):
    pid, ids = run_duo_to_scene_3(settings, tmp_path)
    result = analysis([], [matched(ids["ada"], 9), matched(ids["extract-002"], 2)])
    first = register(settings, pid, 3, result)
    with session_scope(settings.database_url) as s:
        before = [(a.id, a.character, a.binding["at"]) for a in s.scalars(select(Asset).order_by(Asset.id)).all()[1:]]
    again = register(settings, pid, 3, result)
    assert again.bindings == first.bindings
    with session_scope(settings.database_url) as s:
        after = [(a.id, a.character, a.binding["at"]) for a in s.scalars(select(Asset).order_by(Asset.id)).all()[1:]]
        assert s.query(AssetAppearance).count() == 2 + 1 + 2
    assert after == before


def test_faces_that_stay_ambiguous_stay_unbound(settings, tmp_path):
    board = {**DUO, "scenes": [{"description": f"Bea and Cal, {n}", "characters": ["bea", "cal"]} for n in (1, 2)]}
    pid = new_project(settings, tmp_path, board)
    generated(settings, pid, 1)
    register(settings, pid, 1, analysis([face(1), face(2)]))
    ids = asset_ids(settings)
    generated(settings, pid, 2)
    summary = register(settings, pid, 2, analysis([], [matched(ids["extract-001"], 1), matched(ids["extract-002"], 2)]))
    assert summary.bindings == [] and characters(settings)["extract-001"] is None
    assert generated(settings, pid, 2) == {}  # neither is anyone's reference


BOARD_SCOPE = {
    "title": "scope",
    "manifest": {
        "name": "shared-scope",
        "assets": [
            {"type": "character", "tag": "ana", "name": "Ana", "reference_image": "stock:face/t1-0"},
            {"type": "character", "tag": "cy", "name": "Cy"},  # a manifest character with no reference yet
        ],
    },
    "characters": [{"tag": "bo", "name": "Bo"}],
    "scenes": [
        {"description": "one", "characters": ["ana", "bo"]},
        {"description": "two", "characters": ["ana", "cy"]},
    ],
}


def test_a_projects_own_character_never_takes_another_projects_face_of_the_same_tag(settings, tmp_path):
    first, second = new_project(settings, tmp_path, BOARD_SCOPE), new_project(settings, tmp_path, BOARD_SCOPE)
    generated(settings, first, 1)
    assert register(settings, first, 1, analysis([face(1)])).new_asset_tags == ["bo"]
    assert generated(settings, first, 2) == {"ana": "ana"}
    assert generated(settings, second, 1) == {"ana": "ana"}  # first's bo is first's own: not second's bo
    with session_scope(settings.database_url) as s:
        bo = s.scalar(select(Asset).where(Asset.tag == "bo"))
        assert set(select_references(s, bo.manifest_id, ["bo"], project_id=first)) == {"bo"}
        assert select_references(s, bo.manifest_id, ["bo"], project_id=second) == {}


def test_a_manifest_characters_extracted_face_is_shared_by_every_project(settings, tmp_path):
    first, second = new_project(settings, tmp_path, BOARD_SCOPE), new_project(settings, tmp_path, BOARD_SCOPE)
    generated(settings, first, 2)
    assert register(settings, first, 2, analysis([face(3)])).new_asset_tags == ["cy-2"]  # "cy" is the upload's tag
    assert generated(settings, second, 2) == {"ana": "ana", "cy": "cy-2"}


def test_the_analysis_of_another_project_sees_its_own_character_under_a_tag_nobody_declares(settings, tmp_path):
    from vidpipe_tasks.stages import analysis_request

    first, second = new_project(settings, tmp_path, BOARD_SCOPE), new_project(settings, tmp_path, BOARD_SCOPE)
    generated(settings, first, 1)
    register(settings, first, 1, analysis([face(1)]))
    (settings.media_root / "crops").mkdir(parents=True, exist_ok=True)
    (settings.media_root / "crops" / "c0.png").write_bytes(b"crop")  # the extracted face's crop, as analysis left it
    with session_scope(settings.database_url) as s:
        sc = s.scalar(select(Scene).where(Scene.project_id == second, Scene.scene_index == 1))
        s.add(Clip(scene_id=sc.id, path="c.mp4", size_bytes=1, frame_count=1, fps=1, width=1, height=1, generator="t"))
        sc.generation_status = StageStatus.DONE
    entries = {
        e["asset_tag"]: e["tag"]
        for e in analysis_request(settings, {"project_id": second, "scene_index": 1})["registry"]
    }
    assert entries["bo"] == f"bo@project-{first}"


def test_commit_time_rematches_and_bindings_appear_in_status_json(settings, tmp_path):
    import numpy as np

    from tests.unit.test_registry import BOARD
    from vidpipe_tasks.cli.status import load_status

    first, second = new_project(settings, tmp_path, BOARD), new_project(settings, tmp_path, BOARD)
    generated(settings, first, 1)
    generated(settings, second, 1)
    register(settings, first, 1, analysis([face(7)]))
    # The second project's analysis ran before the first committed: its candidate is re-matched at commit.
    register(settings, second, 1, analysis([list(np.asarray(face(7)) + 0.01)]))
    bo = asset_ids(settings)["bo"]
    (scene,) = [sc for sc in load_status(settings, second)["scenes"] if sc["scene_index"] == 1]
    assert [(r["candidate"], r["asset_id"], r["asset_tag"]) for r in scene["rematches"]] == [("c0", bo, "bo")]
    assert scene["rematches"][0]["similarity"] >= ENGINE["match_threshold"] and scene["new_asset_tags"] == []
    (scene,) = [sc for sc in load_status(settings, first)["scenes"] if sc["scene_index"] == 1]
    assert scene["bindings"] == [
        {"asset_id": bo, "asset_tag": "bo", "character": "bo", "rule": RULE_UNACCOUNTED, "new": True}
    ]
