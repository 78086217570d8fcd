"""Flower as vidpipe runs it, without a server: roles from logins, ids from argsrepr, progress text, saved state."""

from __future__ import annotations

import base64
import pickle
from pathlib import Path

import pytest

from vidpipe_tasks.flower_app import (
    FlowerRefused,
    Roles,
    VidpipeEventsState,
    config_path,
    format_task,
    ids_from_args,
    progress_text,
)

ADMIN, VIEWER = "ops:s3cret", "watcher:look"


def basic(credential: str) -> str:
    return "Basic " + base64.b64encode(credential.encode()).decode()


def test_a_login_maps_to_its_role_and_anything_else_to_none() -> None:
    roles = Roles((ADMIN,), (VIEWER,))
    assert roles.role_of(basic(ADMIN)) == "admin"
    assert roles.role_of(basic(VIEWER)) == "viewer"
    for header in (None, "", basic("ops:wrong"), basic("watcher:s3cret"), "Bearer x", "Basic !!!", "Basic"):
        assert roles.role_of(header) is None, header
    assert roles.logins == [ADMIN, VIEWER]


def test_one_login_cannot_be_both_admin_and_viewer() -> None:
    with pytest.raises(ValueError, match="both admin and viewer: ops"):
        Roles((ADMIN,), (ADMIN,))


@pytest.mark.parametrize(
    ("argsrepr", "expected"),
    [
        ("({'project_id': 12, 'scene_index': 3, 'epoch': 2},)", (12, 3)),
        ("({'project_id': 5, 'epoch': 1},)", (5, None)),
        ("()", (None, None)),
        (None, (None, None)),
        # A payload whose ids come late is not searched past the head (argsrepr is truncated anyway).
        ("({'analysis': '" + "x" * 500 + "', 'project_id': 9},)", (None, None)),
    ],
)
def test_project_and_scene_come_from_the_head_of_the_argsrepr(argsrepr: str | None, expected: tuple) -> None:
    assert ids_from_args(argsrepr) == expected


def test_progress_reads_as_one_line() -> None:
    assert progress_text({"stage": "analyze", "step": "faces", "done": 2, "total": 4}) == "analyze: faces 2/4 (50%)"
    assert progress_text({"stage": "generate", "done": 0, "total": 1, "state": "queued"}) == "generate: queued 0/1 (0%)"
    assert progress_text({}) is None and progress_text(None) is None


def _state_with_a_running_analysis() -> VidpipeEventsState:
    state = VidpipeEventsState(max_tasks_in_memory=10)
    common = {"uuid": "t-1", "hostname": "cv-cpu0@host", "clock": 1, "utcoffset": 0, "pid": 1}
    args = "({'project_id': 7, 'scene_index': 2},)"
    events = [
        {"type": "task-received", "name": "vidpipe.analyze_clip", "args": args, "timestamp": 1.0},
        {"type": "task-progress", "stage": "analyze", "step": "decode", "done": 1, "total": 4, "timestamp": 2.0},
    ]
    for event in events:
        state.event({**common, **event, "local_received": event["timestamp"]})
    return state


def test_progress_before_the_started_event_makes_the_task_started() -> None:
    task = _state_with_a_running_analysis().tasks["t-1"]
    assert (task.state, task.started, task.stage) == ("STARTED", 2.0, "analysis")
    shown = format_task(task)
    assert shown.progress == "analyze: decode 1/4 (25%)"


def test_a_saved_state_loads_back_with_the_extra_fields(tmp_path: Path) -> None:
    # Flower's persistent mode pickles its state into a shelve file.
    loaded = pickle.loads(pickle.dumps(_state_with_a_running_analysis()))
    assert type(loaded) is VidpipeEventsState
    task = loaded.tasks["t-1"]
    assert (task.project, task.scene, task.state) == (7, 2, "STARTED")
    assert task.progress == {"stage": "analyze", "step": "decode", "done": 1, "total": 4}


def test_the_config_file_is_the_flag_then_flower_conf_then_the_checkouts(tmp_path: Path) -> None:
    mine = tmp_path / "mine.py"
    mine.write_text("basic_auth = ['a:b']\n")
    assert config_path(str(mine), {}) == mine
    assert config_path(None, {"FLOWER_CONF": str(mine)}) == mine
    assert config_path(None, {}).as_posix().endswith("deploy/flower/flowerconfig.py")
    with pytest.raises(FlowerRefused, match="not found"):
        config_path(str(tmp_path / "missing.py"), {})
