"""The report page: how stored faces are labelled, that the page needs nothing outside itself, and escaping."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

from PIL import Image

from tests.conftest import DATA
from vidpipe_tasks.report import build_report, write_report
from vidpipe_tasks.report.data import GrowthPoint, Picture, ProjectData, Recognition, SceneData, _boxes
from vidpipe_tasks.report.images import data_uri
from vidpipe_tasks.report.render import render_html
from vidpipe_tasks.storyboard import load_storyboard
from vidpipe_tasks.workflow import create_project

ANALYSIS = {
    "matches": [{"asset_tag": "mara", "tag": "mara", "boxes": [[3, 10, 20, 50, 60, 0.912], [9, 12, 20, 52, 60, 0.88]]}],
    "candidates": [
        {"key": "c0", "registered_as": "wren", "boxes": [[3, 100, 20, 140, 60]]},
        {"key": "c1", "rematched_to": "extract-001", "boxes": [[9, 200, 20, 240, 60]]},
        {"key": "c2", "boxes": [[9, 300, 20, 340, 60]]},
    ],
    "unmatched_boxes": [[3, 400, 20, 440, 60]],
}


def test_each_stored_face_box_is_labelled_by_what_the_analysis_and_the_commit_made_of_it() -> None:
    labelled = {(b.frame, b.bbox[0]): (b.kind, b.label) for b in _boxes(ANALYSIS)}
    assert labelled == {
        (3, 10): ("match", "mara 0.91"),
        (9, 12): ("match", "mara 0.88"),
        (3, 100): ("new", "wren new"),
        (9, 200): ("rematch", "extract-001 re-match"),
        (9, 300): ("candidate", "new candidate"),
        (3, 400): ("unmatched", "unmatched"),
    }


def test_an_analysis_stored_before_boxes_were_recorded_gives_no_boxes() -> None:
    assert _boxes({"matches": [{"asset_tag": "mara", "frames": [1, 2]}], "candidates": [{"key": "c0"}]}) == []


def test_boxes_name_assets_by_their_tag_today_after_a_rename() -> None:
    from types import SimpleNamespace as Row

    from vidpipe_tasks.report.data import _current_tags

    assets = {
        5: Row(tag="mara-renamed", origin_key=None),
        9: Row(tag="wren", origin_key="p1-s2-c0"),  # was extract-001 when scene 2 registered it
    }
    analysis = {
        "matches": [{**ANALYSIS["matches"][0], "asset_id": 5}],
        "candidates": [{"key": "c0", "registered_as": "extract-001", "boxes": [[3, 100, 20, 140, 60]]}],
    }
    labels = [b.label for b in _boxes(_current_tags(analysis, Row(project_id=1, scene_index=2), assets))]
    assert labels == ["mara-renamed 0.91", "mara-renamed 0.88", "wren new"]


def scene(**overrides) -> SceneData:
    values = dict(
        index=1,
        description="Mara <script>alert(1)</script> & Jonas",
        location="lighthouse",
        characters=["mara"],
        stages={"generation": "DONE", "analysis": "DEGRADED", "registry": "DONE"},
        clip_path="clip.mp4",
        frame_size=(640, 360),
        frame_indices=[3, 9],
        analysed=True,
        boxes=_boxes(ANALYSIS),
        references=[Picture("refs/mara.png", "mara", "mara ← mara (uploaded)")],
        new_assets=[Picture("crops/c0.png", "wren", "wren: Wren")],
        recognitions=[Recognition("mara", "match", 0.9, 2)],
        continuity_score=0.5,
        components={"identity": 0.9, "adherence": 0.1, "cross_scene": None, "visual": None},
        analysis_ms={"decode": 12.5},
        task_seconds={"analyse": 1.25},
        engine="dlib-offline",
        degraded_reason="ClipUnreadable: cannot decode",
        failure_reason=None,
    )
    return SceneData(**{**values, **overrides})


def project(*scenes: SceneData) -> ProjectData:
    return ProjectData(
        1, "The <b>Keepers</b>", "COMPLETED", "demo", None, None, list(scenes), [GrowthPoint("start", 2, [])]
    )


def tiny_uri() -> str:
    return data_uri(Image.new("RGB", (8, 8), (200, 10, 10)), 8)


def test_the_page_inlines_every_image_and_refers_to_nothing_outside_itself() -> None:
    page = render_html(project(scene()), lambda s: ({3: tiny_uri(), 9: tiny_uri()}, None), lambda rel: tiny_uri())
    sources = re.findall(r'<img src="([^"]*)"', page)
    assert len(sources) == 2 + 1 + 1  # two frames, one reference, one new asset
    assert all(s.startswith("data:image/") for s in sources)
    assert not re.search(r"https?://|<script|<link rel=\"stylesheet\"", page)


def test_boxes_sit_on_their_frame_in_percent_of_the_frame_with_their_labels() -> None:
    page = render_html(project(scene()), lambda s: ({3: tiny_uri(), 9: tiny_uri()}, None), lambda rel: None)
    frame3 = page.split('data-frame="3"')[1].split("</figure>")[0]
    assert 'class="box match"' in frame3 and "left:1.56%;top:5.56%;width:6.25%;height:11.11%" in frame3
    assert re.findall(r'<span class="box-label">([^<]*)</span>', frame3) == ["mara 0.91", "wren new", "unmatched"]
    assert "(image missing)" in page  # a reference whose file is gone is said to be, not drawn broken


def test_text_from_the_storyboard_is_escaped_and_degraded_reasons_and_missing_components_are_shown() -> None:
    page = render_html(project(scene()), lambda s: ({}, "cannot decode clip.mp4"), lambda rel: None)
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; Jonas" in page and "The &lt;b&gt;Keepers&lt;/b&gt;" in page
    assert "degraded: ClipUnreadable: cannot decode" in page and "frames unavailable: cannot decode clip.mp4" in page
    bars = dict(re.findall(r'data-component="(\w+)">.*?<span class="value">([^<]*)</span>', page))
    assert bars == {"identity": "0.90", "adherence": "0.10", "cross_scene": "missing", "visual": "missing"}


def test_a_project_not_yet_run_still_gets_a_report_of_its_pending_scenes(settings, tmp_path: Path) -> None:
    project_id = create_project(settings, DATA / "quay.yaml", load_storyboard(DATA / "quay.yaml"))
    out = write_report(settings, project_id, tmp_path / "r" / "report.html")
    page = out.read_text()
    assert page == build_report(settings, project_id)
    assert page.count('class="scene"') == 3 and "generation PENDING" in page
    assert "no sampled frames recorded" in page and "no scene registered yet" in page


def test_the_summary_gives_the_face_consistency_per_character_or_says_it_is_missing() -> None:
    wren = {"score": 0.891, "scenes": [2, 3, 4], "pairs": 3, "engine": "dlib-offline"}
    measured = replace(project(scene()), face_consistency=0.8765, face_consistency_characters={"wren": wren})
    row = '<tr data-key="face consistency"><th>face consistency</th><td>'
    page = render_html(measured, lambda s: ({}, None), lambda rel: None)
    assert row + "0.88 (wren 0.89 in scenes 2, 3, 4)</td>" in page
    assert row + "missing</td>" in render_html(project(scene()), lambda s: ({}, None), lambda rel: None)
