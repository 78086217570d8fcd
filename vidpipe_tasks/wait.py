"""`vidpipe wait`: follow projects until they end, with a progress bar each; the exit code says how they ended."""

from __future__ import annotations

import time
from collections.abc import Callable

from vidpipe_tasks.settings import Settings
from vidpipe_tasks.status import load_status

ENDED = {"COMPLETED", "FAILED", "CANCELLED"}
#: Exit codes: all completed, any failed or cancelled, timed out (as `timeout(1)` does).
EXIT_OK, EXIT_FAILED, EXIT_TIMEOUT = 0, 1, 124


def scenes_done(status: dict) -> int:
    """Scenes through their last stage (registered, or generated when there is no analysis)."""
    return sum(1 for sc in status["scenes"] if sc["stages"]["registry"] in ("DONE", "SKIPPED"))


def progress_line(status: dict, width: int = 20) -> str:
    total, done = len(status["scenes"]), scenes_done(status)
    filled = round(width * done / total) if total else width
    bar = "#" * filled + "-" * (width - filled)
    return f"project {status['project_id']:>4} [{bar}] {done}/{total} {status['status']}"


def wait_for(
    settings: Settings, ids: list[int], timeout: float, poll: float = 0.5, echo: Callable[[str], None] = print
) -> int:
    """Poll until every project ended or `timeout` passed; print a line whenever a project's bar changes."""
    shown: dict[int, str] = {}
    deadline = time.monotonic() + timeout
    while True:
        statuses = [load_status(settings, i) for i in ids]
        for st in statuses:
            line = progress_line(st)
            if shown.get(st["project_id"]) != line:
                shown[st["project_id"]] = line
                echo(line)
        if all(st["status"] in ENDED for st in statuses):
            return EXIT_OK if all(st["status"] == "COMPLETED" for st in statuses) else EXIT_FAILED
        if time.monotonic() >= deadline:
            echo(f"timed out after {timeout:g}s")
            return EXIT_TIMEOUT
        time.sleep(poll)
