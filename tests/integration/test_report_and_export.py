"""`vidpipe report` opened in a real headless Chromium, and `vidpipe export`, on the shared real pipeline run."""

from __future__ import annotations

from collections.abc import Iterator
from statistics import mean

import av
import pytest
from sqlalchemy import func, select

from tests.browser import chromium_or_skip, full_page_screenshot, keep_artefact
from tests.integration.conftest import PipelineRun
from vidpipe_tasks import media
from vidpipe_tasks.db.models import Asset, AssetAppearance, Clip, Project, Scene
from vidpipe_tasks.db.session import session_scope
from vidpipe_tasks.export import export_project
from vidpipe_tasks.report import write_report


@pytest.fixture(scope="module")
def browser() -> Iterator:
    driver = chromium_or_skip()
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def opened(pipeline_run: PipelineRun, browser, tmp_path_factory) -> dict[int, dict]:
    """Each manifest project's report, opened once: its console log and a full-page screenshot kept."""
    folder = tmp_path_factory.mktemp("reports")
    pages = {}
    projects = {"lighthouse": pipeline_run.lighthouse, "quay": pipeline_run.quay, "market": pipeline_run.market}
    for name, project_id in projects.items():
        page = write_report(pipeline_run.settings, project_id, folder / f"report-{name}.html")
        browser.get(page.as_uri())
        pages[project_id] = {
            "log": browser.get_log("browser"),
            "images": browser.execute_script(
                "return [...document.images].map(i => [i.complete, i.naturalWidth, i.src.slice(0, 11)])"
            ),
            "screenshot": keep_artefact(full_page_screenshot(browser, folder / f"report-{name}.png")),
            "scenes": _scenes(browser),
            "summary": dict(
                browser.execute_script(
                    "return [...document.querySelectorAll('table.summary tr')]"
                    ".map(r => [r.dataset.key, r.querySelector('td').textContent])"
                )
            ),
            "growth": browser.execute_script(
                "return [...document.querySelectorAll('g.growth-point')].map(g => Number(g.dataset.total))"
            ),
        }
    return pages


#: Reads what the laid-out page shows per scene, in one round trip.
READ_SCENES = """
const text = (el, sel) => (el.querySelector(sel) || {}).textContent;
return [...document.querySelectorAll('section.scene')].map(sec => ({
  index: Number(sec.dataset.scene),
  title: text(sec, 'h2.scene-title'),
  heading: text(sec, 'h3'),
  frames: sec.querySelectorAll('figure.frame').length,
  boxes: [...sec.querySelectorAll('.box')].map(b => {
    const r = b.getBoundingClientRect(), img = b.parentElement.querySelector('img').getBoundingClientRect();
    const inside = r.width > 0 && r.left >= img.left - 1 && r.right <= img.right + 1 && r.bottom <= img.bottom + 1;
    return [b.dataset.kind, b.dataset.asset || null, b.dataset.similarity || null, b.textContent, inside];
  }),
  recognised: [...sec.querySelectorAll('tr.recognition')].map(r => [r.dataset.asset, r.dataset.kind,
    text(r, '.similarity')]),
  references: [...sec.querySelectorAll('.reference')].map(f => f.dataset.asset),
  new: [...sec.querySelectorAll('.new-asset')].map(f => f.dataset.asset),
  notes: [...sec.querySelectorAll('.degraded')].map(p => p.textContent),
}));
"""


def _scenes(browser) -> dict[int, dict]:  # noqa: ANN001 - selenium.webdriver.Chrome
    out = {}
    for scene in browser.execute_script(READ_SCENES):
        scene["recognised"] = {tuple(r) for r in scene["recognised"]}
        out[scene["index"]] = scene
    return out


def test_the_reports_render_in_chromium_without_console_errors_and_every_image_loads(opened) -> None:
    for page in opened.values():
        assert [e for e in page["log"] if e["level"] == "SEVERE"] == []
        assert page["images"], "the report shows no image"
        assert all(done and width > 0 and src.startswith("data:image/") for done, width, src in page["images"])
        assert page["screenshot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert page["screenshot"].stat().st_size > 10_000


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def test_the_report_labels_match_the_database(pipeline_run: PipelineRun, opened) -> None:
    shown = opened[pipeline_run.lighthouse]
    with session_scope(pipeline_run.settings.database_url) as s:
        project = s.get(Project, pipeline_run.lighthouse)
        tags = {a.id: a.tag for a in s.scalars(select(Asset).where(Asset.manifest_id == project.manifest_id))}
        rows = list(s.scalars(select(AssetAppearance).where(AssetAppearance.project_id == project.id)))
        assert shown["summary"]["status"] == project.status.value == "COMPLETED"
        assert shown["growth"][-1] == len(tags)
        assert sorted(shown["scenes"]) == [sc.scene_index for sc in project.scenes]
        for sc in project.scenes:
            page, sm = shown["scenes"][sc.scene_index], sc.scene_manifest
            seen = [r for r in rows if r.scene_index == sc.scene_index]
            assert page["title"] == f"Scene {sc.scene_index}: {sc.description}"
            assert page["frames"] == len(sm.cv_analysis_json["frames"]["indices"])
            assert page["recognised"] == {(tags[r.asset_id], r.kind, _fmt(r.similarity)) for r in seen}
            assert page["new"] == sm.new_asset_tags
            assert page["references"] == [sm.selected_reference_tags[c] for c in sorted(sm.selected_reference_tags)]
            assert page["boxes"] and all(inside for *_, inside in page["boxes"]), "a box is not drawn on its frame"
            matched = {r.asset_id: r for r in seen if r.kind == "match"}
            assert {a for k, a, *_ in page["boxes"] if k == "match"} == {tags[i] for i in matched}
            assert {a for k, a, *_ in page["boxes"] if k == "new"} == set(sm.new_asset_tags)
            for asset_id, row in matched.items():
                # Each face's similarity is on its box; their mean is the similarity the appearance stored.
                sims = [float(sim) for k, a, sim, *_ in page["boxes"] if k == "match" and a == tags[asset_id]]
                assert mean(sims) == pytest.approx(row.similarity, abs=1e-3)
            for kind, asset, sim, label, _ in page["boxes"]:
                assert label == {"match": f"{asset} {float(sim or 0):.2f}", "new": f"{asset} new"}.get(kind, label)
    assert [sc["new"] for _, sc in sorted(shown["scenes"].items())] == [[], ["wren"], [], []]


def test_a_degraded_scene_shows_its_reason(pipeline_run: PipelineRun, opened) -> None:
    with session_scope(pipeline_run.settings.database_url) as s:
        scene = s.scalar(select(Scene).where(Scene.project_id == pipeline_run.quay, Scene.scene_index == 2))
        reason = scene.scene_manifest.degraded_reason
    assert reason and f"degraded: {reason}" in opened[pipeline_run.quay]["scenes"][2]["notes"]


def test_a_project_without_manifest_shows_frames_of_each_clip_without_boxes(pipeline_run: PipelineRun, opened) -> None:
    scenes = opened[pipeline_run.market]["scenes"]
    assert len(scenes) == 2
    for scene in scenes.values():
        assert (scene["heading"], scene["frames"], scene["boxes"]) == ("Frames (not analysed)", 4, [])
    assert opened[pipeline_run.market]["summary"]["manifest"] == "none (analysis skipped)"


def test_the_exported_project_has_every_frame_of_its_clips_in_scene_order(pipeline_run: PipelineRun, tmp_path) -> None:
    result = export_project(pipeline_run.settings, pipeline_run.lighthouse, tmp_path / "final.mp4", crossfade_s=0.25)
    with session_scope(pipeline_run.settings.database_url) as s:
        clips = list(
            s.scalars(
                select(Clip).join(Scene).where(Scene.project_id == pipeline_run.lighthouse).order_by(Scene.scene_index)
            )
        )
        assert s.scalar(select(func.count()).select_from(Scene).where(Scene.project_id == pipeline_run.lighthouse)) == 4
    expected = sum(c.frame_count for c in clips) - 3 * 3  # 0.25 s at 12 fps, at each of the three cuts
    with av.open(str(result.path)) as container:
        stream = container.streams.video[0]
        decoded = sum(1 for _ in container.decode(stream))
        assert (stream.width, stream.height) == (clips[0].width, clips[0].height)
    assert decoded == result.frame_count == expected
    assert result.duration_s == pytest.approx(expected / 12)
    assert not result.audio  # the procedural generator renders silent clips
    # VIDPIPE_EXPORT_ON_FINISH is off by default: the chain itself exported nothing.
    assert not (pipeline_run.settings.media_root / media.final_path(pipeline_run.lighthouse)).exists()


def test_the_report_and_export_commands_write_their_files(pipeline_run: PipelineRun, tmp_path) -> None:
    from tests.helpers import run_vidpipe

    project = str(pipeline_run.lighthouse)
    report = run_vidpipe(pipeline_run.settings, "report", project, "-o", str(tmp_path / "r.html"))
    assert report.returncode == 0, report.stderr
    assert f"{tmp_path / 'r.html'}" in report.stdout and (tmp_path / "r.html").read_text().count('class="scene"') == 4
    export = run_vidpipe(pipeline_run.settings, "export", project, "-o", str(tmp_path / "f.mp4"), "--fps", "24")
    assert export.returncode == 0, export.stderr
    assert "4 clips, 384 frames, 16.00 s, 640x360 at 24 fps, no audio" in export.stdout
