"""Helpers the test tiers share: run the real `vidpipe` command, wait for a condition or for projects to end."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import pytest

from vidpipe_tasks.cli.workers import WorkerProcess
from vidpipe_tasks.db.models import Project
from vidpipe_tasks.db.session import session_scope
from vidpipe_tasks.settings import Settings

T = TypeVar("T")
FINAL_STATES = ("COMPLETED", "FAILED", "CANCELLED")


def run_vidpipe(where: Settings | Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """The `vidpipe` command in a child process, configured as an operator would.

    Args:
        where: settings (passed as VIDPIPE_* variables) or a bare work folder (passed as --home).
        args: the command line after `vidpipe`.
        timeout: seconds before the child is killed.
    """
    argv = [sys.executable, "-m", "vidpipe_tasks.cli"]
    env = dict(os.environ)
    if isinstance(where, Settings):
        env.update(where.as_env())
    else:
        argv += ["--home", str(where)]
    return subprocess.run([*argv, *args], capture_output=True, text=True, timeout=timeout, env=env)


def wait_until(predicate: Callable[[], T], what: str, timeout: float = 90.0, step: float = 0.2) -> T:
    """Poll `predicate` until it returns something truthy and return it; fail the test after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")


def wait_projects_finished(
    settings: Settings, ids: list[int], workers: list[WorkerProcess], timeout: float = 420
) -> list[str]:
    """Wait until every project reached a final state; fail early if a worker died, with the logs' tails."""
    deadline = time.monotonic() + timeout
    states: list[str] = []
    while time.monotonic() < deadline:
        with session_scope(settings.database_url) as s:
            states = [s.get(Project, i).status.value for i in ids]
        if all(st in FINAL_STATES for st in states):
            return states
        dead = [w.name for w in workers if w.process.poll() is not None]
        assert not dead, f"worker(s) died: {dead}"
        time.sleep(0.5)
    logs = "\n".join(w.logfile.read_text(errors="replace")[-3000:] for w in workers)
    pytest.fail(f"projects not finished after {timeout:.0f}s: {states}\n{logs}")


@contextmanager
def pipeline_workers(settings: Settings) -> Iterator[list[WorkerProcess]]:
    """A generation+registry worker and the CV launcher (one CPU process), ready; stopped warmly on exit."""
    from vidpipe_tasks.cli.workers import start_cv_launcher, start_worker, stop_workers, wait_ready
    from vidpipe_tasks.settings import GENERATION_QUEUE, REGISTRY_QUEUE

    logs = settings.home / "logs"
    workers = [
        start_worker(settings, "gen", [GENERATION_QUEUE, REGISTRY_QUEUE], logs),
        start_cv_launcher(settings, logs),  # the CV side runs as production starts it
    ]
    try:
        wait_ready(workers)
        yield workers
    finally:
        stop_workers(workers)


def enqueue_and_wait(settings: Settings, workers: list[WorkerProcess], ids: list[int], timeout: float) -> list[str]:
    """Queue each project's chain and wait until all ended; returns their final statuses."""
    from vidpipe_tasks.celery_app import create_app
    from vidpipe_tasks.workflow import enqueue_project

    app = create_app(settings)
    for project_id in ids:
        enqueue_project(app, settings, project_id)
    return wait_projects_finished(settings, ids, workers, timeout)


def run_projects_to_the_end(settings: Settings, ids: list[int], *, timeout: float = 420) -> Path:
    """Run projects on a gen+registry worker and the CV launcher (one CPU process) until they end.

    Returns:
        The folder of the workers' logs.
    """
    with pipeline_workers(settings) as workers:
        enqueue_and_wait(settings, workers, ids, timeout)
    return settings.home / "logs"
