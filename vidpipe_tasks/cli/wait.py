"""`vidpipe wait`: follow projects until they end, with a progress bar each; the exit code says how they ended."""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from typing import TextIO

from vidpipe_tasks.cli.common import existing_installation
from vidpipe_tasks.cli.status import STAGES, current_stage, format_age, load_status, shorten
from vidpipe_tasks.settings import Settings

ENDED = {"COMPLETED", "FAILED", "CANCELLED"}
#: Exit codes: all completed, any failed or cancelled, timed out (as `timeout(1)` does).
EXIT_OK, EXIT_FAILED, EXIT_TIMEOUT = 0, 1, 124
#: Stage statuses that count as progress on the bar.
_STAGE_DONE = {"DONE", "SKIPPED", "DEGRADED"}


def scenes_done(status: dict) -> int:
    """Scenes through their last stage (registered, or generated when there is no analysis)."""
    return sum(1 for sc in status["scenes"] if sc["stages"]["registry"] in ("DONE", "SKIPPED"))


def stage_fraction(status: dict) -> float:
    """Share of all stages of all scenes that are through: the bar moves per stage, not only per scene."""
    stages = [sc["stages"][st] for sc in status["scenes"] for st in STAGES]
    if status["status"] == "COMPLETED" or not stages:
        return 1.0
    return sum(1 for st in stages if st in _STAGE_DONE) / len(stages)


def _parse(iso: str | None) -> datetime | None:
    return datetime.fromisoformat(iso) if iso else None


def elapsed_and_eta(status: dict, now: datetime) -> tuple[float | None, float | None]:
    """Seconds since the project's first task started (to its end once ended), and a linear ETA.

    The ETA extrapolates the time per finished stage to the stages left; it is None before the first
    stage is through and once the project ended.
    """
    tasks = [t for sc in status["scenes"] for t in sc.get("tasks", [])] + status.get("project_tasks", [])
    starts = [d for d in (_parse(t.get("started_at")) for t in tasks) if d]
    if not starts:
        return None, None
    end = _parse(status.get("finished_at")) if status["status"] in ENDED else None
    elapsed = max(((end or now) - min(starts)).total_seconds(), 0.0)
    fraction = stage_fraction(status)
    if status["status"] in ENDED or fraction <= 0:
        return elapsed, None
    return elapsed, elapsed * (1 - fraction) / fraction


def _timing(status: dict, now: datetime) -> str:
    elapsed, eta = elapsed_and_eta(status, now)
    if elapsed is None:
        return " queued" if status["status"] not in ENDED else ""
    if status["status"] in ENDED:
        return f" in {format_age(elapsed)}"
    return f" {format_age(elapsed)} ETA {'?' if eta is None else format_age(eta)}"


def progress_line(status: dict, width: int = 20, now: datetime | None = None, title_width: int = 24) -> str:
    """One project's bar, e.g. ``project    1 Lighthouse keeper [####----] 1/4 RUNNING 42s ETA 2m scene 2 ...``.

    Timing (elapsed, ETA) is shown when `now` is given; without it the line changes only when the project
    moves, which is what plain logs compare.
    """
    total, done = len(status["scenes"]), scenes_done(status)
    filled = round(width * stage_fraction(status))
    bar = "#" * filled + "-" * (width - filled)
    title = shorten(status.get("title") or "", title_width).ljust(title_width)
    line = f"project {status['project_id']:>4} {title} [{bar}] {done}/{total} {status['status']}"
    if now is not None:
        line += _timing(status, now)
    if status["status"] not in ENDED:
        stage = current_stage([(sc["scene_index"], sc["stages"]) for sc in status["scenes"]])
        if stage:
            line += f" scene {stage['scene_index']} {stage['stage']} {stage['status'].lower()}"
            if stage["stage"] == "generation":
                line += _job_progress(status["scenes"][stage["scene_index"] - 1])
    failure = next((sc["failure_reason"] for sc in status["scenes"] if sc.get("failure_reason")), None)
    if status["status"] == "FAILED" and failure:
        line += f" ({failure})"
    return line


def _job_progress(scene: dict) -> str:
    """The suffix naming the scene's remote job while it is in flight, e.g. " (comfyui job running 3/4)"."""
    jobs = scene.get("generation_jobs") or []
    if not jobs or jobs[-1]["state"] not in ("submitting", "queued", "running"):
        return ""
    job, progress = jobs[-1], jobs[-1].get("progress") or {}
    steps = f" {progress['done']}/{progress['total']}" if progress.get("done") and progress.get("total") else ""
    return f" ({job['provider']} job {job['state']}{steps})"


class PlainProgress:
    """For logs and pipes: a line whenever a project's bar changes, and all open bars every `heartbeat` s."""

    def __init__(self, out: TextIO, heartbeat: float) -> None:
        self.out, self.heartbeat = out, heartbeat
        self.shown: dict[int, str] = {}
        self.last_all = time.monotonic()

    def update(self, lines: dict[int, str], ended: set[int], keys: dict[int, str] | None = None) -> None:
        """Print each line whose key (default: the line) changed, and every open one on the heartbeat."""
        beat = time.monotonic() - self.last_all >= self.heartbeat
        for project_id, line in lines.items():
            key = (keys or lines)[project_id]
            changed = self.shown.get(project_id) != key
            if changed or (beat and project_id not in ended):
                self.out.write(line + "\n")
            self.shown[project_id] = key
        if beat:
            self.last_all = time.monotonic()
        self.out.flush()

    def note(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()


class TtyProgress:
    """For a terminal: one bar per project, redrawn in place."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.drawn = 0
        self.previous: list[str] = []

    def update(self, lines: dict[int, str], ended: set[int], keys: dict[int, str] | None = None) -> None:
        current = list(lines.values())
        if current == self.previous:
            return
        # Move to the start of the first bar drawn last time, then rewrite each line (clearing its rest).
        self.out.write(f"\x1b[{self.drawn}F" if self.drawn else "")
        self.out.write("".join(f"\x1b[2K{line}\n" for line in current))
        self.out.flush()
        self.drawn, self.previous = len(current), current

    def note(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()


def _note_recovery(display: PlainProgress | TtyProgress, status: dict, seen: dict[int, int]) -> None:
    """Say once per recovery that the sweep resumed a lost chain, and why."""
    recovery = status.get("recovery") or {}
    count, pid = recovery.get("recoveries", 0), status["project_id"]
    if count > seen.get(pid, 0):
        display.note(f"project {pid}: resumed automatically ({count}x): {recovery.get('reason')}")
    seen[pid] = count


def wait_for(
    settings: Settings,
    ids: list[int],
    timeout: float,
    poll: float = 0.5,
    out: TextIO | None = None,
    tty: bool | None = None,
    heartbeat: float = 30.0,
) -> int:
    """Poll until every project ended or `timeout` passed, showing progress on `out`.

    Args:
        settings: the installation.
        ids: projects to follow.
        timeout: seconds before giving up (exit code 124).
        poll: seconds between database reads.
        out: where progress goes (default stdout).
        tty: bars redrawn in place (default: whether `out` is a terminal); otherwise plain lines.
        heartbeat: plain mode repeats every unfinished project's line this often, so logs show it is alive.

    Returns:
        0 when all completed, 1 when any failed or was cancelled, 124 on timeout.

    Raises:
        LookupError: a project does not exist.

    """
    out = out or sys.stdout
    tty = out.isatty() if tty is None else tty
    display = TtyProgress(out) if tty else PlainProgress(out, heartbeat)
    deadline = time.monotonic() + timeout
    recoveries: dict[int, int] = {}
    while True:
        statuses = [load_status(settings, i) for i in ids]
        for st in statuses:
            _note_recovery(display, st, recoveries)
        ended = {st["project_id"] for st in statuses if st["status"] in ENDED}
        now = datetime.now(UTC)
        display.update(
            {st["project_id"]: progress_line(st, now=now) for st in statuses},
            ended,
            keys={st["project_id"]: progress_line(st) for st in statuses},
        )
        if all(st["status"] in ENDED for st in statuses):
            return EXIT_OK if all(st["status"] == "COMPLETED" for st in statuses) else EXIT_FAILED
        if time.monotonic() >= deadline:
            display.note(f"timed out after {timeout:g} s; the projects go on (wait again, or see vidpipe status)")
            return EXIT_TIMEOUT
        time.sleep(poll)


def cmd_wait(args: argparse.Namespace) -> int:
    settings = existing_installation(args)

    try:
        return wait_for(settings, args.projects, args.timeout, poll=args.poll, heartbeat=args.heartbeat)
    except LookupError as exc:
        print(str(exc), file=sys.stderr)
        return 1


def add_parser(sub: argparse._SubParsersAction) -> None:
    wait = sub.add_parser(
        "wait",
        help="follow projects until they end (exit 1 if any failed, 124 on timeout)",
        description="Follow projects until each one ended: a bar per project with its title, the time since its "
        "first task started and an ETA extrapolated from the stages done. Exit 0 when all completed, 1 when "
        "any failed or was cancelled, 124 when --timeout passed first (the projects go on).",
    )
    wait.add_argument("projects", type=int, nargs="+", metavar="PROJECT")
    wait.add_argument(
        "--timeout", type=float, default=3600.0, metavar="SECONDS", help="give up after this many seconds (3600)"
    )
    wait.add_argument(
        "--poll", type=float, default=0.5, metavar="SECONDS", help="seconds between reads of the database (0.5)"
    )
    wait.add_argument(
        "--heartbeat", type=float, default=30.0, help="not on a terminal: repeat unfinished projects' lines this often"
    )
    wait.set_defaults(func=cmd_wait)
