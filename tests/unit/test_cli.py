"""The `vidpipe` command as a user runs it: submit validates everything first, status reports JSON."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tests.helpers import run_vidpipe as vidpipe
from vidpipe_tasks.cli.demo import example_paths


def queued_messages(home: Path) -> list[Path]:
    folder = home / "broker" / "queue"
    return sorted(folder.glob("*.msg")) if folder.is_dir() else []


def test_one_malformed_file_among_good_ones_queues_nothing(tmp_path: Path) -> None:
    home = tmp_path / "work"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"title": "x", "scenes": [{"description": "d", "characters": ["ghost"]}]}))
    good = [str(p) for p in example_paths()]
    result = vidpipe(home, "submit", *good, str(bad))
    assert result.returncode == 2
    assert (
        f"{bad}: scene 1.characters" in result.stderr
        and "ghost" in result.stderr
        and "nothing was queued" in result.stderr
    )
    assert queued_messages(home) == []
    assert not (home / "vidpipe.db").exists()


def test_submit_prints_ids_and_queues_each_chain_on_the_generation_queue(tmp_path: Path) -> None:
    home = tmp_path / "work"
    result = vidpipe(home, "submit", *[str(p) for p in example_paths()])
    assert result.returncode == 0, result.stderr
    ids = [int(line) for line in result.stdout.split()]
    assert len(ids) == len(example_paths())
    # Only each chain's first task is queued; it waits on the generation queue for a worker.
    assert [p.name.split(".")[1] for p in queued_messages(home)] == ["generation"] * len(ids)
    status = vidpipe(home, "status", str(ids[0]), "--json")
    data = json.loads(status.stdout)
    assert data["status"] == "PENDING" and data["scenes"][0]["stages"]["generation"] == "PENDING"


def test_status_of_an_unknown_project_fails_clearly(tmp_path: Path) -> None:
    home = tmp_path / "work"
    assert vidpipe(home, "db", "upgrade").returncode == 0
    result = vidpipe(home, "status", "99")
    assert result.returncode == 1 and "no project 99" in result.stderr
