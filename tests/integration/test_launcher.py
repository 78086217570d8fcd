"""The CV launcher with real child processes (--device cpu): slots, restart of a killed child, warm shutdown."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from sqlalchemy import select

from tests.conftest import make_settings
from tests.helpers import wait_until
from tests.integration.conftest import example_path
from vidpipe_tasks.celery_app import create_app
from vidpipe_tasks.cli.workers import start_worker, stop_workers, wait_ready
from vidpipe_tasks.db.models import TaskRun
from vidpipe_tasks.db.session import session_scope
from vidpipe_tasks.settings import GENERATION_QUEUE, REGISTRY_QUEUE
from vidpipe_tasks.storyboard import load_storyboard
from vidpipe_tasks.workflow import create_project, enqueue_project


def child_pids(pid: int) -> list[int]:
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[1]) == pid:  # field 4 of /proc/PID/stat, after "pid (comm) state"
            pids.append(int(stat.parent.name))
    return pids


def children(pid: int) -> dict[str, tuple[int, dict[str, str]]]:
    """Node name -> (pid, environment) of the launcher's worker children, read from /proc."""
    found = {}
    for child in child_pids(pid):
        try:
            argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            env = dict(
                item.split("=", 1)
                for item in Path(f"/proc/{child}/environ").read_bytes().decode().split("\0")
                if "=" in item
            )
        except (FileNotFoundError, ProcessLookupError):  # it exited between pgrep and the read
            continue
        name = argv[argv.index(b"-n") + 1].decode().split("@")[0]
        found[name] = (child, env)
    return found


def logs_ready(logdir: Path, names: list[str]) -> bool:
    return all((logdir / f"{n}.log").is_file() and " ready." in (logdir / f"{n}.log").read_text() for n in names)


def test_launcher_runs_pinned_children_restarts_a_killed_one_and_shuts_down_warmly(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "work")
    logdir = settings.home / "cv-logs"
    env = {**os.environ, **settings.as_env()}
    launcher = subprocess.Popen(
        [sys.executable, "-m", "gpu_worker", "--device", "cpu", "--processes", "2", "--logdir", str(logdir)],
        env=env,
        stdout=open(tmp_path / "launcher.log", "w"),
        stderr=subprocess.STDOUT,
    )
    gen = start_worker(settings, "gen", [GENERATION_QUEUE, REGISTRY_QUEUE], settings.home / "logs")
    try:
        # One process per slot, each with its node name and no visible GPU
        kids = wait_until(lambda: c if len(c := children(launcher.pid)) == 2 else None, "two worker children")
        assert set(kids) == {"cv-cpu0", "cv-cpu1"}
        assert all(
            e.get("CUDA_VISIBLE_DEVICES") == "" and e.get("VIDPIPE_WARM_ENGINE") == "child" for _, e in kids.values()
        )
        wait_until(lambda: logs_ready(logdir, ["cv-cpu0", "cv-cpu1"]), "both children ready")
        # The launcher sees each worker ready (consumer up, models loaded in the pool child): backoff resets
        launcher_log = tmp_path / "launcher.log"
        wait_until(
            lambda: all(f"{n} ready after" in launcher_log.read_text() for n in ("cv-cpu0", "cv-cpu1")),
            "the launcher to see both workers ready",
        )
        # A killed child comes back under the same name
        old_pid = kids["cv-cpu1"][0]
        os.kill(old_pid, signal.SIGKILL)
        wait_until(
            lambda: (c := children(launcher.pid)).get("cv-cpu1") and c["cv-cpu1"][0] != old_pid,
            "cv-cpu1 restarted",
            timeout=30,
        )
        # SIGTERM while an analysis runs: it finishes, then every child exits
        wait_ready([gen])
        board = example_path("lighthouse.yaml")
        project = create_project(settings, board, load_storyboard(board))
        enqueue_project(create_app(settings), settings, project)

        def running_analysis():
            with session_scope(settings.database_url) as s:
                return s.scalar(
                    select(TaskRun).where(TaskRun.task_name == "vidpipe.analyze_clip", TaskRun.outcome == "running")
                )

        run = wait_until(running_analysis, "an analysis to run", 120, step=0.05)
        pids = [p for p, _ in children(launcher.pid).values()]
        launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(120) == 0
        with session_scope(settings.database_url) as s:
            finished = s.scalar(select(TaskRun).where(TaskRun.task_id == run.task_id))
        assert finished.outcome == "success" and finished.finished_at is not None
        assert not any(
            Path(f"/proc/{p}").exists() and b"celery" in Path(f"/proc/{p}/cmdline").read_bytes() for p in pids
        )
    finally:
        if launcher.poll() is None:
            launcher.kill()
        stop_workers([gen])


def test_with_logdir_dash_the_workers_log_to_the_launchers_stdout_for_containers(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "work")
    out = tmp_path / "container.log"
    env = {**os.environ, **settings.as_env()}
    argv = [sys.executable, "-m", "gpu_worker", "--device", "cpu", "--processes", "1", "--logdir", "-"]
    launcher = subprocess.Popen(argv, env=env, stdout=out.open("w"), stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: " ready." in out.read_text(errors="replace"), "the worker ready on stdout")
        launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(60) == 0
    finally:
        if launcher.poll() is None:
            launcher.kill()
    text = out.read_text(errors="replace")
    assert "cv-cpu0@" in text and "started cv-cpu0" in text
    assert not (settings.home / "logs").exists(), "no per-worker log files"
