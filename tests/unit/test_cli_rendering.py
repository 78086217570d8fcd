"""What `vidpipe status` and `vidpipe wait` print: the project table, ages, progress bars on a TTY and in logs."""

from __future__ import annotations

import io

from vidpipe_tasks.cli.status import current_stage, format_age, render_table
from vidpipe_tasks.cli.wait import PlainProgress, TtyProgress, progress_line


def summary(project_id: int, **overrides) -> dict:
    row = {
        "project_id": project_id,
        "title": f"Project {project_id}",
        "status": "RUNNING",
        "scenes_total": 4,
        "scenes_done": 1,
        "current_stage": {"scene_index": 2, "stage": "analysis", "status": "RUNNING"},
        "continuity_mean": 0.876,
        "age_s": 75.0,
    }
    return row | overrides


def status(project_id: int, state: str, stages: list[tuple[str, str, str]]) -> dict:
    names = ("generation", "analysis", "registry")
    scenes = [{"scene_index": i, "stages": dict(zip(names, st, strict=True))} for i, st in enumerate(stages, 1)]
    return {"project_id": project_id, "status": state, "scenes": scenes}


def test_the_table_has_one_aligned_row_per_project() -> None:
    rows = [
        summary(7),
        summary(
            12,
            title="A title much longer than the column allows, cut",
            status="COMPLETED",
            scenes_done=4,
            current_stage=None,
            continuity_mean=None,
            age_s=7200,
        ),
    ]
    lines = render_table(rows).splitlines()
    assert lines[0].split() == ["ID", "TITLE", "STATUS", "SCENES", "STAGE", "CONTINUITY", "SPEND", "AGE"]
    assert lines[1].split() == [
        "7",
        "Project",
        "7",
        "RUNNING",
        "1/4",
        "scene",
        "2",
        "analysis",
        "running",
        "0.88",
        "$0.00",
        "1m",
    ]
    assert lines[2].split()[-5:] == ["4/4", "-", "-", "$0.00", "2h"]
    assert "A title much longer than the co…" in lines[2]
    assert lines[1].index("RUNNING") == lines[2].index("COMPLETED") == lines[0].index("STATUS")


def test_an_empty_table_says_so() -> None:
    assert render_table([]) == "no projects"


def test_ages_are_short() -> None:
    assert [format_age(s) for s in (0, 59, 60, 3599, 3600, 86400 * 3 + 5)] == ["0s", "59s", "1m", "59m", "1h", "3d"]


def test_the_current_stage_is_the_first_unfinished_stage_of_the_first_unfinished_scene() -> None:
    stages = [
        (1, {"generation": "DONE", "analysis": "DEGRADED", "registry": "DONE"}),
        (2, {"generation": "DONE", "analysis": "PENDING", "registry": "PENDING"}),
    ]
    assert current_stage(stages) == {"scene_index": 2, "stage": "analysis", "status": "PENDING"}
    assert current_stage(stages[:1]) is None


def test_the_bar_moves_per_stage_and_names_where_the_project_is() -> None:
    half = status(3, "RUNNING", [("DONE", "DONE", "DONE"), ("DONE", "RUNNING", "PENDING")])
    assert progress_line(half, width=12) == "project    3 [########----] 1/2 RUNNING scene 2 analysis running"
    done = status(3, "COMPLETED", [("DONE", "SKIPPED", "SKIPPED")] * 2)
    assert progress_line(done, width=12) == "project    3 [############] 2/2 COMPLETED"


def test_the_bar_shows_a_remote_generation_job_in_flight() -> None:
    job = {"provider": "comfyui", "state": "running", "progress": {"done": 3, "total": 20}}
    scene = {"scene_index": 1, "stages": dict.fromkeys(("generation", "analysis", "registry"), "PENDING")}
    scene["stages"]["generation"] = "RUNNING"
    status = {"project_id": 5, "status": "RUNNING", "scenes": [{**scene, "generation_jobs": [job]}]}
    assert progress_line(status, width=4).endswith("scene 1 generation running (comfyui job running 3/20)")


def test_on_a_terminal_the_bars_are_redrawn_in_place() -> None:
    out = io.StringIO()
    tty = TtyProgress(out)
    tty.update({1: "a1", 2: "b1"}, set())
    tty.update({1: "a1", 2: "b1"}, set())  # unchanged: nothing written
    tty.update({1: "a2", 2: "b1"}, set())
    assert out.getvalue() == "\x1b[2Ka1\n\x1b[2Kb1\n" + "\x1b[2F\x1b[2Ka2\n\x1b[2Kb1\n"


def test_in_logs_a_line_is_printed_when_it_changes_and_open_projects_repeat_on_the_heartbeat() -> None:
    out = io.StringIO()
    plain = PlainProgress(out, heartbeat=3600)
    plain.update({1: "a1", 2: "b1"}, set())
    plain.update({1: "a1", 2: "b2"}, set())
    plain.heartbeat = 0  # every update is a heartbeat now
    plain.update({1: "a1", 2: "b2"}, {2})
    assert out.getvalue().splitlines() == ["a1", "b1", "b2", "a1"]
