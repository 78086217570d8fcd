"""What `vidpipe status` and `vidpipe wait` print: the project table, ages, progress bars on a TTY and in logs."""

from __future__ import annotations

import io
from datetime import UTC, datetime

from vidpipe_tasks.cli.status import current_stage, format_age, render_table, render_text
from vidpipe_tasks.cli.wait import PlainProgress, TtyProgress, elapsed_and_eta, progress_line


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
    return {"project_id": project_id, "title": "Harbour", "status": state, "scenes": scenes}


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
            face_consistency=0.915,
            age_s=7200,
        ),
    ]
    lines = render_table(rows).splitlines()
    assert lines[0].split() == ["ID", "TITLE", "STATUS", "SCENES", "STAGE", "CONTINUITY", "FACES", "SPEND", "AGE"]
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
        "-",
        "$0.00",
        "1m",
    ]
    assert lines[2].split()[-6:] == ["4/4", "-", "-", "0.92", "$0.00", "2h"]
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
    line = "project    3 Harbour     [########----] 1/2 RUNNING scene 2 analysis running"
    assert progress_line(half, width=12, title_width=11) == line
    done = status(3, "COMPLETED", [("DONE", "SKIPPED", "SKIPPED")] * 2)
    assert progress_line(done, width=12, title_width=7) == "project    3 Harbour [############] 2/2 COMPLETED"


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


def _started(status: dict, scene: int, at: str) -> None:
    status["scenes"][scene - 1]["tasks"] = [{"started_at": at}]


def test_the_bar_shows_the_time_since_the_first_task_and_an_eta_from_the_stages_done() -> None:
    half = status(3, "RUNNING", [("DONE", "DONE", "DONE"), ("RUNNING", "PENDING", "PENDING")])
    _started(half, 1, "2026-12-01T10:00:00+00:00")
    now = datetime(2026, 12, 1, 10, 2, tzinfo=UTC)  # 3 of 6 stages through after 2 minutes: 2 minutes to go
    assert elapsed_and_eta(half, now) == (120.0, 120.0)
    assert " RUNNING 2m ETA 2m scene 2 generation running" in progress_line(half, now=now)


def test_a_queued_project_shows_no_eta_and_an_ended_one_its_duration() -> None:
    queued = status(4, "PENDING", [("PENDING", "PENDING", "PENDING")])
    now = datetime(2026, 12, 1, 10, 2, tzinfo=UTC)
    assert elapsed_and_eta(queued, now) == (None, None)
    assert " PENDING queued scene 1" in progress_line(queued, now=now)
    done = status(5, "COMPLETED", [("DONE", "DONE", "DONE")])
    _started(done, 1, "2026-12-01T10:00:00+00:00")
    done["finished_at"] = "2026-12-01T10:00:42+00:00"
    assert elapsed_and_eta(done, now) == (42.0, None)
    assert progress_line(done, now=now).endswith("1/1 COMPLETED in 42s")


def test_in_logs_only_a_change_of_state_prints_a_line_not_the_clock_moving() -> None:
    out = io.StringIO()
    plain = PlainProgress(out, heartbeat=3600)
    plain.update({1: "p1 10s ETA 5m"}, set(), keys={1: "p1"})
    plain.update({1: "p1 11s ETA 5m"}, set(), keys={1: "p1"})
    plain.update({1: "p1 done in 12s"}, {1}, keys={1: "p1 done"})
    assert out.getvalue().splitlines() == ["p1 10s ETA 5m", "p1 done in 12s"]


def test_the_project_view_shows_the_face_consistency_per_character_once_finalized() -> None:
    base = {"project_id": 3, "status": "COMPLETED", "title": "T", "scenes": []}
    wren = {"score": 0.891, "scenes": [2, 3, 4], "pairs": 3, "engine": "dlib-offline"}
    shown = render_text({**base, "face_consistency": {"score": 0.8765, "characters": {"wren": wren}}})
    assert "  face consistency: 0.88 (wren 0.89 over scenes 2,3,4)" in shown.splitlines()
    assert "face consistency" not in render_text({**base, "face_consistency": None})
