"""Batch submission and the operations commands on the embedded broker: submit, status tables, queues, cancel."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import DATA
from tests.helpers import run_vidpipe as vidpipe
from vidpipe_tasks.cli.demo import example_paths


def submitted(home: Path, *args: str) -> list[int]:
    result = vidpipe(home, "submit", *args)
    assert result.returncode == 0, result.stderr
    return [int(line) for line in result.stdout.split()]


def test_submit_takes_files_folders_and_jsonl_batches_and_prints_one_id_each(tmp_path: Path) -> None:
    home = tmp_path / "work"
    folder = example_paths()[0].parent
    result = vidpipe(home, "submit", str(DATA / "ops_short.yaml"), str(folder), str(DATA / "ops_batch.jsonl"), "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    sources = [p["source"] for p in out["projects"]]
    assert sources == [
        str(DATA / "ops_short.yaml"),
        *[str(p) for p in example_paths()],
        f"{DATA / 'ops_batch.jsonl'}:1",
        f"{DATA / 'ops_batch.jsonl'}:3",
    ]
    assert [p["project_id"] for p in out["projects"]] == list(range(1, 6))
    queues = json.loads(vidpipe(home, "queues", "--json", "--no-workers").stdout)
    assert {q["queue"]: q["depth"] for q in queues["queues"]} == {"generation": 5, "cv": 0, "registry": 0}


def test_priority_on_the_filesystem_broker_warns_and_still_submits(tmp_path: Path) -> None:
    home = tmp_path / "work"
    result = vidpipe(home, "submit", str(DATA / "ops_short.yaml"), "--priority", "3")
    assert result.returncode == 0
    assert result.stdout.split() == ["1"]
    assert "only the Redis broker has priorities" in result.stderr


def test_a_priority_outside_0_to_9_is_refused_before_anything_is_stored(tmp_path: Path) -> None:
    home = tmp_path / "work"
    result = vidpipe(home, "submit", str(DATA / "ops_short.yaml"), "--priority", "10")
    assert result.returncode == 2 and "use 0-9" in result.stderr
    assert not home.exists()


def test_a_malformed_jsonl_line_among_good_inputs_queues_nothing(tmp_path: Path) -> None:
    home = tmp_path / "work"
    batch = tmp_path / "batch.jsonl"
    batch.write_text((DATA / "ops_batch.jsonl").read_text() + '{"title": "broken", "scenes": []}\n')
    result = vidpipe(home, "submit", str(DATA / "ops_short.yaml"), str(batch))
    assert result.returncode == 2
    assert f"{batch}:4: scenes:" in result.stderr and "nothing was queued" in result.stderr
    assert not (home / "vidpipe.db").exists()


def test_status_without_a_project_shows_a_table_of_all_and_last_n_limits_it(tmp_path: Path) -> None:
    home = tmp_path / "work"
    submitted(home, str(DATA / "ops_short.yaml"), str(DATA / "ops_batch.jsonl"))
    table = vidpipe(home, "status").stdout.splitlines()
    assert table[0].split() == ["ID", "TITLE", "STATUS", "SCENES", "STAGE", "CONTINUITY", "FACES", "SPEND", "AGE"]
    assert [row.split()[0] for row in table[1:]] == ["1", "2", "3"]
    assert "Ops batch one" in table[2] and "0/2" in table[2] and "scene 1 generation pending" in table[2]
    last = json.loads(vidpipe(home, "status", "--last", "2", "--json").stdout)
    assert [p["project_id"] for p in last["projects"]] == [2, 3]
    assert last["projects"][0]["current_stage"] == {"scene_index": 1, "stage": "generation", "status": "PENDING"}


def test_status_with_several_ids_shows_those_and_one_id_the_detailed_view(tmp_path: Path) -> None:
    home = tmp_path / "work"
    submitted(home, str(DATA / "ops_short.yaml"), str(DATA / "ops_batch.jsonl"))
    two = json.loads(vidpipe(home, "status", "3", "1", "--json").stdout)
    assert [p["project_id"] for p in two["projects"]] == [1, 3]
    one = json.loads(vidpipe(home, "status", "2", "--json").stdout)
    assert one["project_id"] == 2 and len(one["scenes"]) == 2 and "tasks" in one["scenes"][0]
    missing = vidpipe(home, "status", "1", "7", "9")
    assert missing.returncode == 1 and "no project 7, 9" in missing.stderr


def test_cancel_revokes_the_waiting_task_and_the_rest_of_its_chain(tmp_path: Path) -> None:
    home = tmp_path / "work"
    (project,) = submitted(home, str(DATA / "ops_short.yaml"))
    (message,) = (home / "broker" / "queue").glob("*.generation.msg")
    result = vidpipe(home, "cancel", str(project))
    assert result.returncode == 0, result.stderr
    # Two scenes without analysis: generate, generate, finalize; the first is queued, two live in its message.
    assert "revoked 3 task id(s): generate_clip scene 1 (waiting on generation); 2 later task(s)" in result.stdout
    assert json.loads(vidpipe(home, "status", str(project), "--json").stdout)["status"] == "CANCELLED"
    assert message.exists()  # left for a worker to take and drop (it stops itself; see test_resume_cancel)
    again = vidpipe(home, "cancel", str(project))
    assert again.returncode == 0 and "revoked 3 task id(s)" in again.stdout


def test_resume_refuses_a_project_whose_task_is_still_waiting_in_a_queue(tmp_path: Path) -> None:
    home = tmp_path / "work"
    (project,) = submitted(home, str(DATA / "ops_short.yaml"))
    result = vidpipe(home, "resume", str(project))
    assert result.returncode == 1 and "is not stalled" in result.stderr
    assert len(list((home / "broker" / "queue").glob("*.msg"))) == 1


def test_cancel_and_resume_of_an_unknown_project_fail_clearly(tmp_path: Path) -> None:
    home = tmp_path / "work"
    assert vidpipe(home, "db", "upgrade").returncode == 0
    for command in ("cancel", "resume"):
        result = vidpipe(home, command, "42")
        assert result.returncode == 1 and "no project 42" in result.stderr
