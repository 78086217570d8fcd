"""Reading the broker: kombu's Redis key naming per priority step, task messages, and the queues report text."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from tests.conftest import DATA, make_settings
from vidpipe_tasks.celery_app import create_app
from vidpipe_tasks.cli.queues import render_queues
from vidpipe_tasks.queues import RedisLayout, broker_messages, decode_message
from vidpipe_tasks.workflow import submit

DEFAULT = RedisLayout(sep="\x06\x16", steps=(0, 3, 6, 9), prefix="", unacked_key="unacked", unacked_index_key="i")


def test_priority_zero_uses_the_queue_key_itself_and_higher_steps_use_sub_lists() -> None:
    assert [DEFAULT.key("cv", step) for step in DEFAULT.steps] == ["cv", "cv\x06\x163", "cv\x06\x166", "cv\x06\x169"]


def test_each_sub_list_holds_the_priorities_up_to_the_next_step() -> None:
    assert [DEFAULT.step_range(i) for i in range(4)] == ["0-2", "3-5", "6-8", "9"]
    every_priority = RedisLayout("\x06\x16", tuple(range(10)), "", "unacked", "i")
    assert every_priority.step_range(4) == "4"


def test_a_global_key_prefix_prefixes_every_list() -> None:
    prefixed = RedisLayout("\x06\x16", (0, 3), "vp:", "unacked", "i")
    assert [prefixed.key("generation", s) for s in (0, 3)] == ["vp:generation", "vp:generation\x06\x163"]


def test_a_queued_chain_message_names_its_project_scene_priority_and_later_task_ids(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "work")
    app = create_app(settings)
    (project,) = submit(app, settings, [DATA / "ops_short.yaml"], priority=7)
    (message,) = broker_messages(app, settings)
    assert (message.task, message.queue, message.state) == ("vidpipe.generate_clip", "generation", "queued")
    assert (message.project_id, message.scene_index, message.priority) == (project, 1, 7)
    assert len(message.chain_ids) == 2 and message.task_id not in message.chain_ids
    # The rest of the chain carries the priority too, so a project keeps its place after its first scene.
    (path,) = (settings.broker_dir / "queue").glob("*.msg")
    payload = json.loads(path.read_bytes())
    chain = json.loads(base64.b64decode(payload["body"]))[2]["chain"]
    assert [s["options"]["priority"] for s in chain] == [7, 7]
    assert [s["options"]["task_id"] for s in reversed(chain)] == message.chain_ids


def test_a_message_that_is_not_a_task_is_skipped() -> None:
    assert decode_message({"headers": {}, "body": "e30=", "properties": {}}, "cv", "queued") is None


def test_the_queues_report_shows_each_priority_list_by_its_printable_key() -> None:
    report = {
        "broker": "redis",
        "queues": [
            {
                "queue": "generation",
                "depth": 3,
                "unacked": 1,
                "lists": [
                    {"key": "generation", "priorities": "0-2", "depth": 1},
                    {"key": "generation\x06\x166", "priorities": "6-8", "depth": 2},
                ],
            }
        ],
        "workers": [
            {
                "worker": "gen@host",
                "active": [{"task": "vidpipe.generate_clip", "project_id": 4, "scene_index": 1, "queue": "generation"}],
                "reserved": [],
            }
        ],
    }
    lines = render_queues(report).splitlines()
    assert lines[1].split()[:3] == ["generation", "3", "1"]
    assert "0-2: 1 (generation)" in lines[1] and "6-8: 2 (generation\\x06\\x166)" in lines[1]
    assert lines[3:] == ["gen@host: 1 active, 0 reserved", "  active   generate_clip (project 4 scene 1) on generation"]


def _report(workers: list, running: list | None) -> dict:
    from vidpipe_tasks.cli.queues import workers_state

    return {"queues": [], "workers": workers, "timeout_s": 0.5, "workers_state": workers_state(workers, running)}


def test_no_answer_with_a_running_task_in_the_run_log_reads_as_busy_not_down() -> None:
    run = {"worker": "gen@h", "task": "vidpipe.generate_clip", "queue": "generation", "project_id": 7}
    report = _report([], [run | {"scene_index": 2, "running_s": 12.0}])
    assert report["workers_state"]["verdict"] == "busy"
    text = render_queues(report)
    assert "no worker answered within 0.5 s, but workers are BUSY, not down" in text
    assert "gen@h: busy, running generate_clip (project 7 scene 2) on generation for 12 s" in text


def test_no_answer_and_nothing_running_reads_as_down_and_an_unreadable_database_says_neither() -> None:
    assert "workers are DOWN" in render_queues(_report([], []))
    unknown = _report([], None)
    assert unknown["workers_state"]["verdict"] == "unknown" and "could not be read" in render_queues(unknown)


def test_a_busy_worker_beside_answering_ones_is_listed_as_not_answering() -> None:
    answering = [{"worker": "cv@h", "active": [], "reserved": []}]
    run = {"worker": "gen@h", "task": "vidpipe.register_entities", "queue": "registry", "project_id": 1}
    report = _report(answering, [run | {"scene_index": 1, "running_s": 3.0}])
    assert report["workers_state"]["verdict"] == "answering"
    assert render_queues(report).splitlines()[-1].endswith("(did not answer: solo pool)")
