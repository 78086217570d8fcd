"""The two-at-once storyboard with real workers: both faces bound when a later scene settles them, then used."""

from __future__ import annotations

from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import pytest
from sqlalchemy import select

from tests.conftest import make_settings
from tests.helpers import enqueue_and_wait, pipeline_workers
from vidpipe_tasks.cli.status import load_status
from vidpipe_tasks.db.models import Asset, AssetSource, Project, Scene
from vidpipe_tasks.db.session import session_scope
from vidpipe_tasks.settings import Settings
from vidpipe_tasks.storyboard import load_storyboard
from vidpipe_tasks.workflow import create_project

EXAMPLE = Path(str(resources.files("vidpipe_tasks") / "examples" / "more" / "two_at_once.yaml"))


@pytest.fixture(scope="module")
def duo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, int]]:
    """The bundled two-at-once example, run by one generation+registry worker and the CV launcher."""
    settings = make_settings(tmp_path_factory.mktemp("duo") / "work")
    project = create_project(settings, EXAMPLE, load_storyboard(EXAMPLE))
    with pipeline_workers(settings) as workers:
        enqueue_and_wait(settings, workers, [project], 300)
        yield settings, project


def extracted(settings: Settings) -> dict[str, Asset]:
    """The project's extracted assets by the character they are bound to ("?" + tag while unbound)."""
    with session_scope(settings.database_url) as s:
        rows = s.scalars(select(Asset).where(Asset.source == AssetSource.CLIP_EXTRACT))
        return {a.character or f"?{a.tag}": a for a in rows}


def scene_manifests(settings: Settings, project: int) -> list:
    with session_scope(settings.database_url) as s:
        scenes = s.scalars(select(Scene).where(Scene.project_id == project).order_by(Scene.scene_index))
        return [sc.scene_manifest for sc in scenes]


def test_the_two_at_once_project_completes(duo) -> None:
    settings, project = duo
    with session_scope(settings.database_url) as s:
        assert s.get(Project, project).status.value == "COMPLETED"


def test_both_faces_of_scene_1_are_bound_at_the_commit_of_scene_3_and_no_orphan_extract_remains(duo) -> None:
    settings, project = duo
    sms = scene_manifests(settings, project)
    assert sms[0].new_asset_tags == ["extract-001", "extract-002"], sms[0].cv_analysis_json
    assert sms[0].bindings == [] and sms[1].bindings == []
    assert [(b["character"], b["rule"]) for b in sms[2].bindings] == [("cal", "unaccounted"), ("bea", "elimination")]
    assets = extracted(settings)
    assert set(assets) == {"bea", "cal"}, assets  # every extracted face is bound to its character
    assert {a.tag for a in assets.values()} == {"extract-001", "extract-002"}
    assert {(a.origin_scene_index, a.binding["scene_index"]) for a in assets.values()} == {(1, 3)}


def test_the_bound_faces_are_the_references_of_the_scene_after(duo) -> None:
    settings, project = duo
    sms = scene_manifests(settings, project)
    assets = extracted(settings)
    assert set(sms[2].manifest_json["references"]) == {"ada"}  # scene 3: cal had no bound face yet
    refs = sms[3].manifest_json["references"]
    assert {c: r["asset_id"] for c, r in refs.items() if c != "ada"} == {c: assets[c].id for c in ("bea", "cal")}
    assert sms[3].new_asset_tags == []  # nobody was reinvented


def test_adherence_counts_recognised_characters_as_present(duo) -> None:
    settings, project = duo
    sms = scene_manifests(settings, project)
    adherence = [sm.cv_analysis_json["continuity"]["components"]["adherence"] for sm in sms]
    assert adherence == [1.0, 1.0, 1.0, 1.0]
    matched = {m["asset_tag"] for m in sms[3].cv_analysis_json["matches"]}
    assert matched == {"ada", "extract-001", "extract-002"}


def test_status_json_reports_the_bindings_of_each_scene(duo) -> None:
    settings, project = duo
    scenes = load_status(settings, project)["scenes"]
    assert [len(sc["bindings"]) for sc in scenes] == [0, 0, 2, 0]
    assert {b["asset_tag"] for b in scenes[2]["bindings"]} == {"extract-001", "extract-002"}
    assert all(sc["rematches"] == [] for sc in scenes)
