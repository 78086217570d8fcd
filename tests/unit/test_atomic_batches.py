"""A batch is stored whole or not at all, and a project stored but not queued is left for recovery or resume."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from PIL import Image
from sqlalchemy import func, select

from tests.conftest import make_settings
from tests.helpers import run_vidpipe
from tests.servers import free_port
from vidpipe_tasks.celery_app import create_app
from vidpipe_tasks.db.models import Asset, Manifest, Project, ProjectStatus
from vidpipe_tasks.db.session import session_scope
from vidpipe_tasks.inputs import load_inputs
from vidpipe_tasks.settings import Settings
from vidpipe_tasks.storyboard import StoryboardError
from vidpipe_tasks.workflow import submit_inputs


def board(folder: Path, name: str, reference: str | None = None, manifest: str = "atomic") -> Path:
    asset = {"type": "character", "tag": f"{name}-face", "name": name.title()}
    if reference:
        asset["reference_image"] = reference
    data = {
        "title": name,
        "manifest": {"name": manifest, "assets": [asset]},
        "scenes": [{"description": f"{name} waits.", "characters": [f"{name}-face"], "duration_s": 1}],
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def counts(settings: Settings) -> tuple[int, int, int]:
    with session_scope(settings.database_url) as s:
        return tuple(s.scalar(select(func.count()).select_from(m)) for m in (Project, Manifest, Asset))


def test_a_reference_that_breaks_after_validation_stores_nothing_of_the_batch(tmp_path: Path, settings) -> None:
    stories = tmp_path / "stories"
    stories.mkdir()
    Image.new("RGB", (48, 48), (90, 60, 40)).save(stories / "ana.png")
    Image.new("RGB", (48, 48), (40, 60, 90)).save(stories / "bo.png")
    inputs = load_inputs([board(stories, "ana", "ana.png"), board(stories, "bo", "bo.png", manifest="other")])
    (stories / "bo.png").write_bytes(b"replaced by something that is not an image")
    with pytest.raises(StoryboardError) as caught:
        submit_inputs(create_app(settings), settings, inputs)
    ((file, field, reason),) = caught.value.problems
    assert (file, field) == (str(stories / "bo.yaml"), "manifest.asset 1.reference_image")
    assert "not an image" in reason
    assert counts(settings) == (0, 0, 0)
    assert not list((settings.media_root / "manifests").rglob("*.png"))  # no orphan copy of ana.png
    assert not list((settings.broker_dir / "queue").glob("*.msg"))


def test_a_batch_with_one_corrupt_reference_is_refused_whole_by_submit(tmp_path: Path) -> None:
    stories = tmp_path / "stories"
    stories.mkdir()
    Image.new("RGB", (48, 48)).save(stories / "ana.png")
    (stories / "bo.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    home = tmp_path / "work"
    result = run_vidpipe(home, "submit", str(board(stories, "ana", "ana.png")), str(board(stories, "bo", "bo.png")))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{stories / 'bo.yaml'}: manifest.asset 1.reference_image: " in result.stderr
    assert not (home / "vidpipe.db").exists()  # refused before the database was touched


def test_a_batch_is_stored_in_one_transaction_and_queued_after_it(tmp_path: Path, settings) -> None:
    stories = tmp_path / "stories"
    paths = [board(stories, n, "stock:face/t1-0") for n in ("ana", "bo", "cy")]
    ids = submit_inputs(create_app(settings), settings, load_inputs(paths))
    assert counts(settings) == (3, 1, 3)
    with session_scope(settings.database_url) as s:
        assert all(s.get(Project, i).chain_root_id for i in ids)
    assert len(list((settings.broker_dir / "queue").glob("*.msg"))) == 3


def test_when_queueing_fails_projects_stay_pending_and_resume_queues_them(tmp_path: Path) -> None:
    stories = tmp_path / "stories"
    paths = [str(board(stories, n, manifest=f"m-{n}")) for n in ("ana", "bo")]
    embedded = make_settings(tmp_path / "work")
    # Given a broker that refuses connections
    down = replace(embedded, broker_url=f"redis://127.0.0.1:{free_port()}/0")
    # When the batch is submitted
    result = run_vidpipe(down, "submit", *paths, "--json")
    # Then both projects are stored, each gets one line saying why it is not queued, and no traceback
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    rows = json.loads(result.stdout)["projects"]
    assert [(r["title"], r["queued"]) for r in rows] == [("ana", False), ("bo", False)]
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("stored but not queued") and "vidpipe resume" in lines[0]
    first, second = (r["project_id"] for r in rows)
    assert lines[1].startswith(f"  project {first}: ") and "Error" in lines[1]
    assert lines[2] == f"  project {second}: not tried after project {first} failed"
    with session_scope(embedded.database_url) as s:
        projects = [s.get(Project, r["project_id"]) for r in rows]
        assert [(p.status, p.chain_root_id) for p in projects] == [(ProjectStatus.PENDING, None)] * 2
    # And `vidpipe resume` says so in one line while the broker is still down
    still_down = run_vidpipe(down, "resume", str(first))
    assert still_down.returncode == 1 and "Traceback" not in still_down.stderr
    assert still_down.stderr.startswith(f"project {first}: not queued: ")
    # And once the broker works (here: the embedded one, whose folders the failed submit never made), queues them
    shutil.rmtree(embedded.broker_dir)
    resumed = run_vidpipe(embedded, "resume", str(first), str(second))
    assert resumed.returncode == 0, resumed.stderr
    with session_scope(embedded.database_url) as s:
        assert all(s.get(Project, r["project_id"]).chain_root_id for r in rows)
    assert len(list((embedded.broker_dir / "queue").glob("*.msg"))) == 2
