"""Submissions started at the same moment on a new manifest, in parallel processes, on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from sqlalchemy import func, select

from tests.conftest import REPO, make_settings
from vidpipe_tasks import media
from vidpipe_tasks.db.models import Asset, Manifest, Project
from vidpipe_tasks.db.session import session_scope
from vidpipe_tasks.settings import Settings

PROCESSES = 4
TAGS = ["mara", "jonas", "harbour", "lamp"]


def storyboard(folder: Path, n: int, manifest: str) -> Path:
    data = {
        "title": f"Race {n}",
        "manifest": {
            "name": manifest,
            "assets": [
                {"type": "character", "tag": "mara", "name": "Mara", "reference_image": "stock:face/t1-0"},
                {"type": "character", "tag": "jonas", "name": "Jonas", "reference_image": "stock:face/t1-1"},
                {"type": "location", "tag": "harbour", "name": "The harbour"},
                {"type": "prop", "tag": "lamp", "name": "The lamp"},
            ],
        },
        "scenes": [{"description": "Mara and Jonas on the quay.", "characters": ["mara", "jonas"]}],
    }
    path = folder / f"race-{manifest}-{n}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def race(settings: Settings, tmp_path: Path, manifest: str) -> list[subprocess.CompletedProcess]:
    """Start PROCESSES submitters, wait until all are loaded, then let them submit at once."""
    env = {**os.environ, **settings.as_env()}
    signal = tmp_path / f"go-{manifest}"
    procs, ready = [], []
    for n in range(PROCESSES):
        ready.append(tmp_path / f"ready-{manifest}-{n}")
        board = storyboard(tmp_path, n, manifest)
        argv = [sys.executable, "-m", "tests.concurrent_submit", str(ready[-1]), str(signal), str(board)]
        procs.append(subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    deadline = time.monotonic() + 120
    while not all(r.exists() for r in ready):
        assert time.monotonic() < deadline, "submitters did not get ready"
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs if p.poll() is not None]
        time.sleep(0.05)
    signal.write_text("go")
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        results.append(subprocess.CompletedProcess(p.args, p.returncode, out.decode(), err.decode()))
    return results


def assert_one_manifest_with_each_tag_once(settings: Settings, manifest: str) -> None:
    with session_scope(settings.database_url) as s:
        (m,) = s.scalars(select(Manifest).where(Manifest.name == manifest)).all()
        tags = sorted(s.scalars(select(Asset.tag).where(Asset.manifest_id == m.id)))
        projects = s.scalars(select(Project).where(Project.manifest_id == m.id)).all()
        assert tags == sorted(TAGS)
        assert len(projects) == PROCESSES and all(p.chain_root_id for p in projects)
        references = s.scalars(select(Asset.reference_image).where(Asset.manifest_id == m.id)).all()
    for ref in filter(None, references):
        assert media.absolute(settings.media_root, ref).stat().st_size > 0


def run_races(settings: Settings, tmp_path: Path) -> None:
    for manifest in ("new-harbour", "new-quay"):  # two rounds: the race is on a fresh manifest each time
        results = race(settings, tmp_path, manifest)
        for r in results:
            assert r.returncode == 0, r.stderr[-3000:]
            assert "Traceback" not in r.stderr and "IntegrityError" not in r.stderr
        assert_one_manifest_with_each_tag_once(settings, manifest)
    with session_scope(settings.database_url) as s:
        assert s.scalar(select(func.count()).select_from(Project)) == 2 * PROCESSES


def test_parallel_submits_on_a_new_manifest_create_it_once_on_sqlite(tmp_path: Path) -> None:
    run_races(make_settings(tmp_path / "work"), tmp_path)


@pytest.mark.integration
def test_parallel_submits_on_a_new_manifest_create_it_once_on_postgresql(tmp_path: Path, postgres_server) -> None:
    settings = make_settings(tmp_path / "work", database_url=postgres_server.create_database("concurrent_submit"))
    run_races(settings, tmp_path)
