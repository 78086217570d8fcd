"""Task messages are untrusted: register_entities and analyze_clip check paths, engine, shapes and scene state."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from sqlalchemy import func, select

from vidpipe_tasks import media
from vidpipe_tasks.db.models import Asset, AssetAppearance, AssetSource, AssetType, Clip, Project, Scene, StageStatus
from vidpipe_tasks.db.session import session_scope
from vidpipe_tasks.errors import MessageIgnored
from vidpipe_tasks.stages import _select, analysis_request, register_entities
from vidpipe_tasks.storyboard import load_storyboard
from vidpipe_tasks.workflow import create_project

ENGINE = {"face": "dlib-offline", "metric": "euclidean", "match_threshold": 0.4, "embedder": None}
BOARD = {
    "title": "trust",
    "manifest": {
        "name": "trusted",
        "assets": [{"type": "character", "tag": "ana", "name": "Ana", "reference_image": "stock:face/t1-0"}],
    },
    "characters": [{"tag": "bo", "name": "Bo"}],
    "scenes": [{"description": "one", "characters": ["ana", "bo"]}, {"description": "two", "characters": ["bo"]}],
}


def new_project(settings, tmp_path: Path, board: dict = BOARD) -> int:
    path = tmp_path / "board.yaml"
    path.write_text(yaml.safe_dump(board))
    return create_project(settings, path, load_storyboard(path))


def in_analysis(settings, project_id: int, scene_index: int = 1) -> None:
    """Put a scene where the chain has it when register_entities runs: clip stored, analysis running."""
    with session_scope(settings.database_url) as s:
        scene = s.scalar(select(Scene).where(Scene.project_id == project_id, Scene.scene_index == scene_index))
        s.add(
            Clip(
                scene_id=scene.id,
                path=media.clip_path(project_id, scene_index),
                size_bytes=1,
                frame_count=8,
                fps=8,
                width=64,
                height=64,
                generator="test",
                appearances={},
            )
        )
        scene.generation_status, scene.analysis_status = StageStatus.DONE, StageStatus.RUNNING


def crop(settings, project_id: int, name: str = "c0.png", scene_index: int = 1) -> str:
    relative = f"{media.crops_dir(project_id, scene_index)}/{name}"
    path = media.absolute(settings.media_root, relative)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32)).save(path)
    return relative


def vector(seed: int, dim: int = 128) -> list[float]:
    v = np.random.default_rng(seed).normal(size=dim)
    return list(0.5 * v / np.linalg.norm(v))


def payload(project_id: int, crop_path: str, **changes: object) -> dict:
    candidate = {
        "key": "c0",
        "frames": [0, 3],
        "face_count": 2,
        "crop_path": crop_path,
        "quality": 0.9,
        "embedding": vector(1),
    }
    candidate.update(changes.pop("candidate", {}))
    analysis = {
        "status": "ok",
        "reason": None,
        "engine": dict(ENGINE),
        "matches": [],
        "candidates": [candidate],
        "reference_embeddings": {},
        "continuity": {"score": 0.8},
        "warnings": [],
    }
    analysis.update(changes)
    return {"project_id": project_id, "scene_index": 1, "outcome": "ok", "analysis": analysis}


def stored(settings) -> tuple[int, int]:
    with session_scope(settings.database_url) as s:
        return (
            s.scalar(select(func.count()).select_from(Asset)),
            s.scalar(select(func.count()).select_from(AssetAppearance)),
        )


def scene_state(settings, project_id: int) -> tuple[str, str | None]:
    with session_scope(settings.database_url) as s:
        scene = s.scalar(select(Scene).where(Scene.project_id == project_id, Scene.scene_index == 1))
        return scene.analysis_status.value, scene.scene_manifest.degraded_reason if scene.scene_manifest else None


def test_a_well_formed_payload_registers_its_new_face(settings, tmp_path) -> None:
    pid = new_project(settings, tmp_path)
    in_analysis(settings, pid)
    result = register_entities(settings, payload(pid, crop(settings, pid)))
    assert result["new_asset_tags"] == ["bo"] and stored(settings) == (2, 1)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"candidate": {"crop_path": "/etc/passwd"}}, "candidates.0.crop_path: not inside the scene's crops folder"),
        (
            {"candidate": {"crop_path": "projects/1/scene-001/crops/../../../../../etc/passwd"}},
            "candidates.0.crop_path",
        ),
        ({"candidate": {"crop_path": "projects/1/scene-001/crops/missing.png"}}, "no such crop file"),
        ({"engine": {**ENGINE, "face": "my-engine"}}, "engine.face: unknown engine 'my-engine'"),
        ({"engine": {**ENGINE, "metric": "cosine"}}, "engine.metric"),
        (
            {"candidate": {"embedding": vector(1, 512)}},
            "candidates.0.embedding: 512 values, the engine's embeddings have 128",
        ),
        ({"candidate": {"embedding": [math.nan] * 128}}, "NaN or infinity"),
        ({"candidate": {"embedding": ["0.1"] * 128}}, "candidates.0.embedding[0]: not a finite number"),
        ({"matches": [{"asset_id": True, "similarity": 0.9}]}, "matches.0.asset_id"),
        ({"warnings": ["a\x00b"]}, "NUL"),
        ({"status": "great"}, "status"),
        ({"visual_embedding": [1e400]}, "NaN or infinity"),
        ({"reference_embeddings": {"1": [0.0] * 5}}, "reference_embeddings.1: 5 values"),
    ],
)
def test_a_payload_breaking_a_rule_is_rejected_with_its_reason_and_nothing_is_stored(
    settings, tmp_path, change: dict, reason: str
) -> None:
    pid = new_project(settings, tmp_path)
    in_analysis(settings, pid)
    crop(settings, pid)
    before = stored(settings)
    result = register_entities(settings, payload(pid, f"{media.crops_dir(pid, 1)}/c0.png", **change))
    assert result["new_asset_tags"] == [] and result["degraded_reason"].startswith("analysis payload rejected: ")
    assert reason in result["degraded_reason"]
    assert stored(settings) == before  # no asset, no appearance, no reference embedding
    assert scene_state(settings, pid) == ("DEGRADED", result["degraded_reason"])
    with session_scope(settings.database_url) as s:
        ana = s.scalar(select(Asset).where(Asset.tag == "ana"))
        assert ana.face_embedding is None


def test_a_crop_that_is_a_symlink_out_of_the_media_root_is_rejected(settings, tmp_path) -> None:
    pid = new_project(settings, tmp_path)
    in_analysis(settings, pid)
    outside = tmp_path / "outside.png"
    Image.new("RGB", (8, 8)).save(outside)
    link = media.absolute(settings.media_root, media.crops_dir(pid, 1)) / "c0.png"
    link.parent.mkdir(parents=True)
    link.symlink_to(outside)
    result = register_entities(settings, payload(pid, f"{media.crops_dir(pid, 1)}/c0.png"))
    assert "escapes the media root" in result["degraded_reason"] and stored(settings) == (1, 0)


def test_a_crop_of_another_scene_is_rejected(settings, tmp_path) -> None:
    pid = new_project(settings, tmp_path)
    in_analysis(settings, pid)
    other = crop(settings, pid, scene_index=2)
    result = register_entities(settings, payload(pid, other))
    assert "not inside the scene's crops folder" in result["degraded_reason"]


@pytest.mark.parametrize("ids", [{"project_id": "1", "scene_index": 1}, {"project_id": True, "scene_index": 1}, {}])
def test_a_message_without_valid_ids_is_ignored(settings, ids: dict) -> None:
    with pytest.raises(MessageIgnored):
        register_entities(settings, {**ids, "analysis": {}})
    with pytest.raises(MessageIgnored):
        analysis_request(settings, ids)


def test_messages_for_a_scene_without_a_clip_are_ignored_and_change_nothing(settings, tmp_path) -> None:
    pid = new_project(settings, tmp_path)
    crop(settings, pid)
    with pytest.raises(MessageIgnored, match="no clip yet"):
        register_entities(settings, payload(pid, f"{media.crops_dir(pid, 1)}/c0.png"))
    with pytest.raises(MessageIgnored, match="no clip yet"):
        analysis_request(settings, {"project_id": pid, "scene_index": 1})
    assert stored(settings) == (1, 0) and scene_state(settings, pid) == ("PENDING", None)
    with session_scope(settings.database_url) as s:
        assert s.get(Project, pid).status.value == "PENDING"


def test_register_entities_for_a_scene_whose_analysis_never_started_is_ignored(settings, tmp_path) -> None:
    pid = new_project(settings, tmp_path)
    in_analysis(settings, pid)
    with session_scope(settings.database_url) as s:
        s.scalar(
            select(Scene).where(Scene.project_id == pid, Scene.scene_index == 1)
        ).analysis_status = StageStatus.PENDING
    with pytest.raises(MessageIgnored, match="never started"):
        register_entities(settings, payload(pid, crop(settings, pid)))


def test_messages_for_a_project_without_a_manifest_are_ignored(settings, tmp_path) -> None:
    pid = new_project(settings, tmp_path, {"title": "plain", "scenes": [{"description": "d"}]})
    in_analysis(settings, pid)
    with pytest.raises(MessageIgnored, match="no manifest"):
        analysis_request(settings, {"project_id": pid, "scene_index": 1})


def add_bad_asset(settings, project_id: int, reference: str) -> None:
    with session_scope(settings.database_url) as s:
        manifest_id = s.get(Project, project_id).manifest_id
        s.add(
            Asset(
                manifest_id=manifest_id,
                asset_type=AssetType.CHARACTER,
                tag="evil",
                name="Evil",
                character="bo",
                source=AssetSource.UPLOADED,
                quality=1.0,
                reference_image=reference,
            )
        )


@pytest.mark.parametrize("reference", ["/etc/passwd", "../../../../etc/passwd", "manifests/1/uploads/gone.png"])
def test_an_asset_with_a_reference_outside_the_media_root_is_never_opened(settings, tmp_path, reference) -> None:
    pid = new_project(settings, tmp_path)
    add_bad_asset(settings, pid, reference)
    with session_scope(settings.database_url) as s:
        scene = s.scalar(select(Scene).where(Scene.project_id == pid, Scene.scene_index == 1))
        chosen, tags = _select(s, scene, settings)
    assert tags == {"ana": "ana"}  # bo's only reference is the bad asset: bo gets none, generation goes on
    in_analysis(settings, pid)
    request = analysis_request(settings, {"project_id": pid, "scene_index": 1})
    assert [e["asset_tag"] for e in request["registry"]] == ["ana"]


@pytest.mark.parametrize("path", ["/etc/passwd", "../x", "a/../../x", "a\x00b", "", None, 3])
def test_the_media_helper_refuses_paths_that_leave_the_root(tmp_path: Path, path: object) -> None:
    with pytest.raises(ValueError):
        media.absolute(tmp_path, path)


def test_the_media_helper_refuses_a_symlink_that_leaves_the_root(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "link").symlink_to(tmp_path)
    with pytest.raises(ValueError, match="escapes the media root"):
        media.absolute(tmp_path / "root", "link/secret.png")
    assert media.absolute(tmp_path / "root", "a/b.png") == (tmp_path / "root" / "a" / "b.png").resolve()


def test_a_bad_asset_is_listed_with_its_problem_and_removed_by_a_command(settings, tmp_path) -> None:
    import json

    from tests.helpers import run_vidpipe

    pid = new_project(settings, tmp_path)
    add_bad_asset(settings, pid, "/etc/passwd")
    listed = run_vidpipe(settings, "assets", "list", "--problems", "--json")
    assert listed.returncode == 0, listed.stderr
    ((row,),) = [json.loads(listed.stdout)]
    assert (row["tag"], row["problem"]) == ("evil", "reference '/etc/passwd' is not a file inside the media root")
    # An asset with appearances needs --force
    with session_scope(settings.database_url) as s:
        s.add(AssetAppearance(asset_id=row["asset_id"], project_id=pid, scene_index=1, kind="match", frames=[]))
    refused = run_vidpipe(settings, "assets", "remove", str(row["asset_id"]))
    assert refused.returncode == 1 and "use --force" in refused.stderr
    removed = run_vidpipe(settings, "assets", "remove", str(row["asset_id"]), "--force")
    assert removed.returncode == 0 and "removed with 1 appearance(s)" in removed.stdout
    assert stored(settings) == (1, 0)
    assert run_vidpipe(settings, "assets", "remove", str(row["asset_id"])).returncode == 1  # gone
