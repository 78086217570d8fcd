"""`vidpipe assets` rules: bind and rename move references, merge keeps appearances, reject stops re-extraction."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sqlalchemy import func, select

from tests.helpers import run_vidpipe
from tests.unit.test_binding import DUO, asset_ids, characters, matched
from tests.unit.test_registry import analysis, face, generated, new_project, register
from vidpipe_tasks.curation import (
    AssetInUse,
    CurationRefused,
    bind_asset,
    list_assets,
    merge_assets,
    reject_asset,
    remove_asset,
    rename_asset,
    show_asset,
)
from vidpipe_tasks.db.models import Asset, AssetAppearance, RejectedFace, Scene
from vidpipe_tasks.db.session import session_scope


def duo_scene_1(settings, tmp_path) -> tuple[int, dict[str, int]]:
    """The two-at-once project after scene 1: two unbound faces, extract-001 and extract-002."""
    pid = new_project(settings, tmp_path, DUO)
    generated(settings, pid, 1)
    register(settings, pid, 1, analysis([face(1), face(2)]))
    return pid, asset_ids(settings)


def appearances(settings, asset_id: int) -> list[tuple[int, int]]:
    with session_scope(settings.database_url) as s:
        rows = s.execute(
            select(AssetAppearance.project_id, AssetAppearance.scene_index).where(AssetAppearance.asset_id == asset_id)
        )
        return sorted(tuple(r) for r in rows)


def test_unbound_faces_are_listed_with_the_characters_they_may_be(settings, tmp_path) -> None:
    duo_scene_1(settings, tmp_path)
    rows = {r["tag"]: r for r in list_assets(settings, "duo")}
    assert (rows["extract-001"]["state"], rows["extract-001"]["candidates"]) == ("unbound", ["bea", "cal"])
    assert rows["ada"]["state"] == "uploaded" and rows["ada"]["candidates"] is None


def test_binding_one_face_by_hand_binds_the_other_by_elimination_and_both_become_references(settings, tmp_path):
    pid, ids = duo_scene_1(settings, tmp_path)
    events = bind_asset(settings, ids["extract-002"], "cal")
    assert [(e["asset_tag"], e["character"], e["rule"]) for e in events] == [
        ("extract-002", "cal", "operator"),
        ("extract-001", "bea", "elimination"),
    ]
    assert generated(settings, pid, 4) == {"ada": "ada", "bea": "extract-001", "cal": "extract-002"}


def test_bind_refuses_a_character_the_assets_project_cannot_name_and_an_upload(settings, tmp_path) -> None:
    _, ids = duo_scene_1(settings, tmp_path)
    with pytest.raises(CurationRefused, match="neither a manifest character"):
        bind_asset(settings, ids["extract-001"], "zed")
    with pytest.raises(CurationRefused, match="not an extracted face"):
        bind_asset(settings, ids["ada"], "bea")
    assert characters(settings)["extract-001"] is None


def test_rename_changes_the_tag_references_are_chosen_by_and_the_scenes_that_recorded_it(settings, tmp_path):
    pid, ids = duo_scene_1(settings, tmp_path)
    bind_asset(settings, ids["extract-001"], "bea")
    assert generated(settings, pid, 4)["bea"] == "extract-001"
    assert "1 scene reference(s) updated" in rename_asset(settings, ids["extract-001"], "bea-face", "Bea")
    with session_scope(settings.database_url) as s:
        sm = s.scalar(select(Scene).where(Scene.project_id == pid, Scene.scene_index == 4)).scene_manifest
        assert sm.selected_reference_tags["bea"] == "bea-face"
        assert sm.manifest_json["references"]["bea"]["tag"] == "bea-face"
    assert generated(settings, pid, 4)["bea"] == "bea-face"
    with pytest.raises(CurationRefused, match="already has an asset 'ada'"):
        rename_asset(settings, ids["extract-001"], "ada")
    with pytest.raises(CurationRefused, match="is not a tag"):
        rename_asset(settings, ids["extract-001"], "Not A Tag")
    with pytest.raises(CurationRefused, match="is an upload"):
        rename_asset(settings, ids["ada"], "ada-2")


def test_merge_keeps_every_appearance_of_both_assets(settings, tmp_path) -> None:
    pid, ids = duo_scene_1(settings, tmp_path)
    generated(settings, pid, 2)
    # Scene 2 saw the first face twice over (as both extracts): the merged asset keeps one row for it.
    register(settings, pid, 2, analysis([], [matched(ids["extract-001"], 1), matched(ids["extract-002"], 2)]))
    generated(settings, pid, 3)
    register(settings, pid, 3, analysis([], [matched(ids["extract-002"], 2)]))
    before = set(appearances(settings, ids["extract-001"])) | set(appearances(settings, ids["extract-002"]))
    message = merge_assets(settings, ids["extract-002"], ids["extract-001"])
    assert "3 appearance(s) moved" in message
    assert appearances(settings, ids["extract-001"]) == sorted(before) == [(pid, 1), (pid, 2), (pid, 3)]
    assert appearances(settings, ids["extract-002"]) == []
    with session_scope(settings.database_url) as s:
        assert s.get(Asset, ids["extract-002"]) is None
        rows = select(AssetAppearance).where(AssetAppearance.asset_id == ids["extract-001"])
        row = s.scalar(rows.order_by(AssetAppearance.scene_index).limit(1))
        assert row.scene_index == 1 and row.face_count == 4  # both faces of scene 1 are now one asset's


def test_merge_refuses_assets_bound_to_different_characters(settings, tmp_path) -> None:
    _, ids = duo_scene_1(settings, tmp_path)
    bind_asset(settings, ids["extract-001"], "bea")  # and extract-002 is cal by elimination
    with pytest.raises(CurationRefused, match="bind or rename first"):
        merge_assets(settings, ids["extract-002"], ids["extract-001"])


def test_a_rejected_face_is_never_extracted_again_as_new(settings, tmp_path) -> None:
    pid, ids = duo_scene_1(settings, tmp_path)
    assert "rejected" in reject_asset(settings, ids["extract-002"], reason="a poster on the wall")
    generated(settings, pid, 2)
    again = list(np.asarray(face(2)) + 0.01)  # the same face in a later scene
    summary = register(settings, pid, 2, analysis([again, face(5)]))
    assert summary.new_asset_tags == ["extract-003"]  # only the other face is new
    with session_scope(settings.database_url) as s:
        assert s.scalar(select(func.count()).select_from(RejectedFace)) == 1
        stored = s.scalar(select(Scene).where(Scene.project_id == pid, Scene.scene_index == 2)).scene_manifest
        assert stored.cv_analysis_json["candidates"][0]["rejected_as"] == "extract-002"
        assert s.scalar(select(Asset).where(Asset.tag == "extract-002")) is None


def test_remove_refuses_an_asset_in_use_unless_forced(settings, tmp_path) -> None:
    _, ids = duo_scene_1(settings, tmp_path)
    with pytest.raises(AssetInUse, match="use --force"):
        remove_asset(settings, ids["extract-001"])
    assert appearances(settings, ids["extract-001"]) != []
    assert "removed with 1 appearance(s)" in remove_asset(settings, ids["extract-001"], force=True)
    assert appearances(settings, ids["extract-001"]) == []
    with pytest.raises(LookupError):
        remove_asset(settings, ids["extract-001"])


def test_show_lists_where_an_asset_appears_and_which_scenes_used_it(settings, tmp_path) -> None:
    pid, ids = duo_scene_1(settings, tmp_path)
    bind_asset(settings, ids["extract-002"], "cal")
    generated(settings, pid, 3)
    info = show_asset(settings, str(ids["extract-002"]))
    assert [(a["scene_index"], a["kind"]) for a in info["appearances"]] == [(1, "new")]
    assert info["used_as_reference"] == [{"project_id": pid, "scene_index": 3, "character": "cal"}]
    assert (info["state"], info["binding"]["rule"]) == ("bound", "operator")


def test_the_assets_commands_run_from_the_command_line(settings, tmp_path) -> None:
    duo_scene_1(settings, tmp_path)
    listed = run_vidpipe(settings, "assets", "list", "--unbound", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [r["tag"] for r in json.loads(listed.stdout)] == ["extract-001", "extract-002"]
    bound = run_vidpipe(settings, "assets", "bind", "extract-001", "bea", "--manifest", "duo")
    assert bound.returncode == 0, bound.stderr
    assert bound.stdout.splitlines() == [
        f"asset {asset_ids(settings)['extract-001']} (extract-001) bound to bea (operator)",
        f"asset {asset_ids(settings)['extract-002']} (extract-002) bound to cal (elimination)",
    ]
    shown = run_vidpipe(settings, "assets", "show", "extract-002")
    assert shown.returncode == 0 and "bound to cal (elimination)" in shown.stdout
    refused = run_vidpipe(settings, "assets", "merge", "extract-001", "extract-002")
    assert refused.returncode == 1 and "bind or rename first" in refused.stderr
