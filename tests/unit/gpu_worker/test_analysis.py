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


def test_against_an_empty_registry_both_faces_become_candidates_and_nothing_degrades(rendered, engine) -> None:
    # A manifest with no assets yet (every character reference-less): there is nothing to match against.
    result = analyze_clip({**request(), "registry": [], "crops_dir": "crops-empty"}, rendered, engine, max_frames=8)
    assert result["status"] == "ok", result.get("reason")
    assert result["matches"] == [] and len(result["candidates"]) == 2


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


def _overlap(a: list[int], b: list[int]) -> bool:
    return a[0] == b[0] and a[1] < b[3] and b[1] < a[3] and a[2] < b[4] and b[2] < a[4]


def test_every_detected_face_is_stored_as_one_box_on_a_sampled_frame_for_the_report(rendered, engine) -> None:
    result = strip_embeddings(analyze_clip(request(), rendered, engine, max_frames=8))
    (ana,), (bo,) = result["matches"], result["candidates"]
    match_boxes, cand_boxes = ana["boxes"], bo["boxes"]
    assert len(match_boxes) == ana["face_count"] and sorted({b[0] for b in match_boxes}) == ana["frames"]
    assert len(cand_boxes) == bo["face_count"] and sorted({b[0] for b in cand_boxes}) == bo["frames"]
    assert all(s >= engine.match_threshold for *_, s in match_boxes)
    every = [b[:5] for b in match_boxes] + cand_boxes + result["unmatched_boxes"]
    assert len(every) == result["faces_detected"]
    frames = result["frames"]
    for frame, x1, y1, x2, y2 in every:
        assert frame in frames["indices"] and 0 <= x1 < x2 <= frames["width"] and 0 <= y1 < y2 <= frames["height"]
    # Ana and the unknown face are two people side by side: no box of one covers the other.
    assert not any(_overlap(a, b) for a in match_boxes for b in cand_boxes)


def test_a_failure_becomes_a_degraded_result_with_its_reason(rendered, engine) -> None:
    broken = {**request(), "clip_path": "missing.mp4"}
    result = analyze_clip_safely(broken, rendered, engine)
    assert result["status"] == "degraded" and "ClipUnreadable" in result["reason"]
    assert result["continuity"]["score"] is None and len(result["continuity"]["missing"]) == 4


def test_an_infrastructure_error_during_analysis_is_raised_for_a_retry_never_recorded_as_degraded(
    rendered, engine
) -> None:
    import redis

    def backend_down(step: str, done: int, total: int) -> None:
        raise redis.exceptions.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    with pytest.raises(redis.exceptions.ConnectionError):
        analyze_clip_safely(request(), rendered, engine, progress=backend_down)


@pytest.fixture(scope="module")
def tiny_embedder(tmp_path_factory):
    from gpu_worker.embedder import ClipEmbedder
    from tests.tiny_clip import write_tiny_clip

    name, config_dir, weights = write_tiny_clip(tmp_path_factory.mktemp("clip"))
    embedder = ClipEmbedder(name, weights, device="cpu", batch_size=4, config_dir=config_dir)
    embedder.load()
    return embedder


def test_with_an_embedder_the_scene_and_new_face_crops_get_image_embeddings(rendered, engine, tiny_embedder) -> None:
    first = analyze_clip(request(), rendered, engine, embedder=tiny_embedder)
    assert first["engine"]["embedder"] == tiny_embedder.name
    assert len(first["visual_embedding"]) == tiny_embedder.dim
    assert first["candidates"] and all(len(c["image_embedding"]) == tiny_embedder.dim for c in first["candidates"])
    assert first["timings_ms"]["image_embed"] > 0
    # No previous scene: visual continuity is missing, not zero.
    assert first["continuity"]["components"]["visual"] is None and "visual" in first["continuity"]["missing"]


def test_visual_continuity_compares_with_the_previous_scene_of_the_same_embedder(
    rendered, engine, tiny_embedder
) -> None:
    first = analyze_clip(request(), rendered, engine, embedder=tiny_embedder)
    same = {"scene_index": 1, "embedder": tiny_embedder.name, "embedding": first["visual_embedding"]}
    again = analyze_clip({**request(), "previous_visual": same}, rendered, engine, embedder=tiny_embedder)
    assert again["continuity"]["components"]["visual"] == pytest.approx(1.0, abs=1e-4)
    opposite = {**same, "embedding": [-v for v in first["visual_embedding"]]}
    far = analyze_clip({**request(), "previous_visual": opposite}, rendered, engine, embedder=tiny_embedder)
    assert far["continuity"]["components"]["visual"] == 0.0
    other = {**same, "embedder": "open_clip:another-model"}
    skipped = analyze_clip({**request(), "previous_visual": other}, rendered, engine, embedder=tiny_embedder)
    assert skipped["continuity"]["components"]["visual"] is None


def test_without_an_embedder_visual_continuity_is_recorded_as_missing(rendered, engine) -> None:
    result = analyze_clip(request(), rendered, engine)
    assert result["engine"]["embedder"] is None and result["visual_embedding"] is None
    assert "visual" in result["continuity"]["missing"]
    assert all("image_embedding" not in c for c in result["candidates"])


def test_an_analysis_reports_each_step_as_progress_in_order(rendered, engine) -> None:
    from gpu_worker.analysis import PROGRESS_STEPS

    seen = []
    analyze_clip(request(), rendered, engine, progress=lambda step, done, total: seen.append((step, done, total)))
    assert seen == [(step, i, len(PROGRESS_STEPS)) for i, step in enumerate(PROGRESS_STEPS, start=1)]
