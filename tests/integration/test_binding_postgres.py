"""Binding under concurrency on PostgreSQL: projects sharing a manifest commit at once, each face is bound once."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import select

from tests.conftest import make_settings
from tests.unit.test_binding import asset_ids, matched
from tests.unit.test_registry import analysis, face, generated, new_project, register
from vidpipe_tasks.db.models import Asset, Manifest, SceneManifest
from vidpipe_tasks.db.session import session_scope

pytestmark = pytest.mark.integration

#: Bea and Cal are manifest characters here (shared by every project), still without references.
SHARED_DUO = {
    "title": "two at once, shared",
    "manifest": {
        "name": "duo-shared",
        "assets": [
            {"type": "character", "tag": "ada", "name": "Ada", "reference_image": "stock:face/t1-0"},
            {"type": "character", "tag": "bea", "name": "Bea"},
            {"type": "character", "tag": "cal", "name": "Cal"},
        ],
    },
    "scenes": [
        {"description": "Bea and Cal arrive", "characters": ["bea", "cal"]},
        {"description": "Ada alone", "characters": ["ada"]},
        {"description": "Ada meets Cal", "characters": ["ada", "cal"]},
    ],
}


def test_concurrent_commits_that_settle_the_same_face_bind_it_once(tmp_path: Path, postgres_server) -> None:
    settings = make_settings(tmp_path / "work", database_url=postgres_server.create_database("binding_concurrent"))
    projects = [new_project(settings, tmp_path, SHARED_DUO) for _ in range(4)]
    for n, pid in enumerate(projects):
        generated(settings, pid, 1)
        register(settings, pid, 1, analysis([face(10 * n + 1), face(10 * n + 2)]))
        generated(settings, pid, 2)
        register(settings, pid, 2, analysis([]))
        generated(settings, pid, 3)
    ids = asset_ids(settings)
    # The first project's scene-1 faces are extract-001 and -002. Every project's scene 3 shows Cal with
    # the face extract-002 (the generator gave all of them the same face); the four commits race.
    scene_3 = analysis([], [matched(ids["extract-002"], 2)])
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda pid: register(settings, pid, 3, scene_3), projects))
    with session_scope(settings.database_url) as s:
        events = [b for sm in s.scalars(select(SceneManifest)) for b in (sm.bindings or [])]
        characters = {a.tag: a.character for a in s.scalars(select(Asset))}
        version = s.scalar(select(Manifest.registry_version).where(Manifest.name == "duo-shared"))
    assert Counter(e["asset_tag"] for e in events) == {"extract-002": 1, "extract-001": 1}, events
    assert (characters["extract-002"], characters["extract-001"]) == ("cal", "bea")
    # The other projects' own scene-1 faces are still either of the two: they stay unbound.
    assert sum(1 for tag, c in characters.items() if tag.startswith("extract-") and c is None) == 6
    assert version == 4 * 3  # every commit took the manifest lock first
