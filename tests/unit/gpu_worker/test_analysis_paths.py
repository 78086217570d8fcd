"""The CV side opens only media-root paths, and what it produces passes the registry's payload checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpu_worker.analysis import analyze_clip, analyze_clip_safely
from vidpipe_tasks.generators.base import CharacterSpec, ClipRequest
from vidpipe_tasks.generators.procedural import ProceduralGenerator
from vidpipe_tasks.payloads import check_analysis
from vidpipe_tasks.similarity import ENGINE_METRICS

CROPS = "projects/1/scene-002/crops"


@pytest.fixture(scope="module")
def media_root(tmp_path_factory, faces) -> Path:
    root = tmp_path_factory.mktemp("root") / "media"
    (root / "refs").mkdir(parents=True)
    faces["t1-0"].save(root / "refs" / "ana.png")
    faces["t1-1"].save(root.parent / "outside.png")
    ProceduralGenerator().generate(
        ClipRequest(
            project_id=1,
            scene_index=2,
            description="paths",
            location="quay",
            characters=(CharacterSpec("ana", root / "refs" / "ana.png"), CharacterSpec("bo")),
            duration_s=2,
            fps=12,
            width=640,
            height=360,
            output_path=root / "clip.mp4",
        )
    )
    return root


def request(**changes: object) -> dict:
    entry = {"asset_id": 5, "tag": "ana", "embedding": None, "engine": None, "reference_image": "refs/ana.png"}
    base = {
        "project_id": 1,
        "scene_index": 2,
        "clip_path": "clip.mp4",
        "declared_characters": ["ana", "bo"],
        "registry": [entry],
        "previous_appearances": [],
        "crops_dir": CROPS,
    }
    return {**base, **changes}


@pytest.mark.parametrize("bad", ["../outside.png", "/etc/hostname", str(Path("/") / "tmp" / "x.png")])
def test_a_registry_reference_outside_the_media_root_is_skipped_with_a_warning(media_root, engine, bad) -> None:
    evil = {"asset_id": 6, "tag": "bo", "embedding": None, "engine": None, "reference_image": bad}
    result = analyze_clip(request(registry=[request()["registry"][0], evil]), media_root, engine, max_frames=8)
    assert result["status"] == "ok" and set(result["reference_embeddings"]) == {"5"}
    assert any("reference image of bo refused" in w for w in result["warnings"])


def test_a_clip_path_outside_the_media_root_degrades_the_scene_without_opening_it(media_root, engine) -> None:
    result = analyze_clip_safely(request(clip_path="../outside.png"), media_root, engine)
    assert result["status"] == "degraded" and "escapes the media root" in result["reason"]


def test_a_crops_dir_outside_the_media_root_degrades_the_scene(media_root, engine) -> None:
    result = analyze_clip_safely(request(crops_dir="../elsewhere"), media_root, engine, max_frames=8)
    assert result["status"] == "degraded" and "escapes the media root" in result["reason"]
    assert not (media_root.parent / "elsewhere").exists()


def test_a_real_analysis_passes_the_registry_payload_checks(media_root, engine) -> None:
    result = analyze_clip(request(), media_root, engine, max_frames=8)
    result["engine"].update(metric=ENGINE_METRICS[engine.name], match_threshold=float(engine.match_threshold))
    assert result["candidates"]  # the invented face: a crop path the checks must accept
    check_analysis(result, media_root, CROPS)
