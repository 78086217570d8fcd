"""The operator's CLI: one --home, one-line errors with documented exit codes, and pipes closed early."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.helpers import run_vidpipe
from vidpipe_tasks.cli import build_parser
from vidpipe_tasks.cli.common import EXIT_BROKEN_PIPE, EXIT_FAILED, EXIT_UNAVAILABLE

CLI = [sys.executable, "-m", "vidpipe_tasks.cli"]


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("VIDPIPE_")}


def test_home_is_accepted_before_or_after_the_command_and_the_demo_work_dir_is_its_alias() -> None:
    parser = build_parser()
    assert parser.parse_args(["--home", "a", "status"]).home == "a"
    assert parser.parse_args(["status", "--home", "b"]).home == "b"
    assert parser.parse_args(["demo", "--work-dir", "c"]).home == "c"
    assert parser.parse_args(["demo", "--home", "d"]).home == "d"
    assert all(
        any("--home" in a.option_strings for a in sub._actions)
        for sub in parser._subparsers._group_actions[0].choices.values()
    )


def test_a_home_without_a_database_is_one_line_and_exit_3_and_creates_nothing(tmp_path: Path) -> None:
    for args in (["status"], ["status", "4"], ["wait", "4"], ["assets", "list"]):
        done = run_vidpipe(tmp_path / "nowhere", *args)
        assert done.returncode == EXIT_UNAVAILABLE, (args, done.stderr)
        assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
        assert f"no vidpipe database at {tmp_path / 'nowhere' / 'vidpipe.db'}" in done.stderr
    assert not (tmp_path / "nowhere" / "vidpipe.db").exists()


def test_an_unreachable_database_server_is_one_line_and_exit_3(tmp_path: Path) -> None:
    env = _clean_env() | {
        "VIDPIPE_HOME": str(tmp_path),
        "VIDPIPE_DATABASE_URL": "postgresql+psycopg2://u:secret@127.0.0.1:9/x",
    }
    done = subprocess.run([*CLI, "status"], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == EXIT_UNAVAILABLE and "Traceback" not in done.stderr
    assert "database postgresql+psycopg2://u:***@127.0.0.1:9/x unavailable" in done.stderr
    assert "secret" not in done.stderr


def _installation_with_a_long_project(home: Path) -> None:
    # 99 scenes of 1500-character descriptions: status --json is far larger than a pipe's 64 KiB buffer
    board = {"title": "Long", "scenes": [{"description": f"scene {i} " + "x" * 1500} for i in range(1, 100)]}
    (home / "long.yaml").parent.mkdir(parents=True, exist_ok=True)
    (home / "long.yaml").write_text(yaml.safe_dump(board))
    assert run_vidpipe(home, "submit", str(home / "long.yaml")).returncode == 0


def test_an_unknown_project_is_one_line_and_exit_1(tmp_path: Path) -> None:
    _installation_with_a_long_project(tmp_path)
    done = run_vidpipe(tmp_path, "status", "999")
    assert done.returncode == EXIT_FAILED and done.stderr.strip() == "no project 999"


def test_a_reader_that_stops_early_ends_the_command_quietly_with_141(tmp_path: Path) -> None:
    _installation_with_a_long_project(tmp_path)
    env = _clean_env()
    # the write fails once the reader is gone
    with subprocess.Popen(
        [*CLI, "--home", str(tmp_path), "status", "1", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    ) as child:
        assert child.stdout.readline().strip() == b"{"
        child.stdout.close()
        child.wait(timeout=60)
        stderr = child.stderr.read().decode()
    assert child.returncode == EXIT_BROKEN_PIPE and stderr == ""
