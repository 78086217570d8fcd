"""The analysis end to end on a rendered clip: registered face matched, unknown face becomes one candidate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gpu_worker.analysis import analyze_clip, analyze_clip_safely
from vidpipe_tasks.generators.base import CharacterSpec, ClipRequest
from vidpipe_tasks.generators.procedural import ProceduralGenerator
from vidpipe_tasks.registry import strip_embeddings


@pytest.fixture(scope="module")
def rendered(tmp_path_factory, faces) -> Path:
    root = tmp_path_factory.mktemp("media")
    (root / "refs").mkdir()
    faces["t1-0"].save(root / "refs" / "ana.png")
    ProceduralGenerator().generate(
        ClipRequest(
            project_id=1,
            scene_index=2,
            description="test",
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


def request() -> dict:
    return {
        "project_id": 1,
        "scene_index": 2,
        "clip_path": "clip.mp4",
        "declared_characters": ["ana", "bo"],
        "registry": [
            {"asset_id": 5, "tag": "ana", "embedding": None, "engine": None, "reference_image": "refs/ana.png"}
        ],
        "previous_appearances": [],
        "crops_dir": "crops",
    }


def test_registered_face_matches_and_the_unknown_face_becomes_one_candidate_with_a_crop(rendered, engine) -> None:
    result = analyze_clip(request(), rendered, engine, max_frames=8)
    assert result["status"] == "ok"
    assert [m["tag"] for m in result["matches"]] == ["ana"]
    assert len(result["candidates"]) == 1
    crop = rendered / result["candidates"][0]["crop_path"]
    with Image.open(crop) as img:
        assert len(engine.detect_and_embed([np.asarray(img.convert("RGB"))], [0])) == 1
    assert set(result["reference_embeddings"]) == {"5"}
    assert result["continuity"]["components"]["adherence"] == 1.0
    assert result["continuity"]["score"] is not None and "visual" in result["continuity"]["missing"]


def test_a_rerun_writes_the_same_crop_instead_of_a_new_one(rendered, engine) -> None:
    analyze_clip(request(), rendered, engine, max_frames=8)
    assert sorted(p.name for p in (rendered / "crops").iterdir()) == ["c0.png"]


def test_stripped_result_holds_no_embedding_sized_arrays(rendered, engine) -> None:
    stripped = strip_embeddings(analyze_clip(request(), rendered, engine, max_frames=8))

    def longest(value) -> int:
        if isinstance(value, dict):
            return max((longest(v) for v in value.values()), default=0)
        if isinstance(value, list):
            own = len(value) if value and all(isinstance(v, float) for v in value) else 0
            return max([own, *(longest(v) for v in value)])
        return 0

    assert longest(stripped) < 16


def test_a_failure_becomes_a_degraded_result_with_its_reason(rendered, engine) -> None:
    broken = {**request(), "clip_path": "missing.mp4"}
    result = analyze_clip_safely(broken, rendered, engine)
    assert result["status"] == "degraded" and "ClipUnreadable" in result["reason"]
    assert result["continuity"]["score"] is None and len(result["continuity"]["missing"]) == 4
