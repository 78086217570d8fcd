"""Today's faster analysis decides what the f20fb52 analysis decided, on the bench clips and the demo storyboards.

The two sample the same evenly spaced frames but may pick different motion frames (one decode pass reads
motion from luma instead of a scaled RGB probe), so frame lists are compared on the frames both sampled.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gpu_worker.analysis import analyze_clip
from tests.analysis_cases import render_bench_scenes, render_demo_scenes
from tests.reference.analysis_f20fb52 import analyze_clip as baseline_analyze_clip


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    root = tmp_path_factory.mktemp("equivalence")
    return root, render_bench_scenes(root, 2, (1280, 720), 8.0, 24) + render_demo_scenes(root)


def _on(frames: list[int], common: set[int]) -> list[int]:
    return sorted(set(frames) & common)


def test_matches_and_candidates_are_the_same_as_the_baseline_on_every_case(cases, engine) -> None:
    root, requests = cases
    assert len(requests) >= 6, "bench scenes and the demo's scenes with a manifest"
    for request in requests:
        old = baseline_analyze_clip(dict(request, crops_dir=f"{request['crops_dir']}-old"), root, engine)
        new = analyze_clip(request, root, engine)
        where = request["clip_path"]
        assert old["status"] == new["status"] == "ok", where
        common = set(old["frames"]["indices"]) & set(new["frames"]["indices"])
        assert len(common) >= 8, where  # the evenly spaced frames at least
        assert [m["asset_id"] for m in new["matches"]] == [m["asset_id"] for m in old["matches"]], where
        for a, b in zip(old["matches"], new["matches"], strict=True):
            assert _on(b["frames"], common) == _on(a["frames"], common), (where, a["tag"])
            assert b["best_similarity"] >= engine.match_threshold
        assert len(new["candidates"]) == len(old["candidates"]), where
        for a, b in zip(old["candidates"], new["candidates"], strict=True):
            assert _on(b["frames"], common) == _on(a["frames"], common), where
            same_person = engine.similarity(np.asarray([a["embedding"]]), np.asarray([b["embedding"]]))[0, 0]
            assert same_person >= engine.match_threshold, (where, float(same_person))
