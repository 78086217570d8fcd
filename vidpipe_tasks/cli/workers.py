"""Start and stop real Celery worker processes (used by the demo, `vidpipe worker` and the tests)."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from vidpipe_tasks.cli.common import settings_from
from vidpipe_tasks.settings import ALL_QUEUES, Settings, prepare_folders

APP = "vidpipe_tasks.celery_app"


def worker_argv(
    name: str,
    queues: list[str],
    *,
    pool: str = "solo",
    concurrency: int = 1,
    loglevel: str = "info",
    embedded: bool,
    disable_prefetch: bool = False,
    json_logs: bool = False,
) -> list[str]:
    """The celery command line for one worker consuming `queues` under node name `name@host`.

    `disable_prefetch` (Redis only) makes the worker take a task only when a slot is free, so queue
    length is the whole backlog: what KEDA scales the CV workers on.
    """
    argv = [sys.executable, "-m", "celery", "-A", APP, "worker", "-Q", ",".join(queues), "-n", f"{name}@%h"]
    argv += ["--pool", pool, "--concurrency", str(concurrency), "-E", "-l", loglevel]
    if disable_prefetch:
        if embedded:
            raise ValueError("--disable-prefetch needs the Redis broker")
        argv.append("--disable-prefetch")
    if json_logs:
        # Celery prints its start-up banner (it is not a log record): it would break the JSON lines.
        argv.insert(argv.index("worker"), "--quiet")
    if embedded:
        # Mingle and gossip poll the filesystem broker's fanout folder; on one machine they only add start-up time.
        argv += ["--without-mingle", "--without-gossip"]
    return argv


def beat_argv(settings: Settings, loglevel: str = "info") -> list[str]:
    """The celery beat command line: it sends the recovery sweep every `recovery_interval` seconds.

    Run exactly one per installation (two would only sweep twice as often: recovery is compare-and-swap).
    """
    schedule = settings.home / "celerybeat-schedule"
    quiet = ["--quiet"] if settings.log_format == "json" else []  # no banner between the JSON lines
    argv = [sys.executable, "-m", "celery", "-A", APP, *quiet, "beat", "-l", loglevel, "--schedule", str(schedule)]
    return [*argv, "--scheduler", "vidpipe_tasks.beat:Scheduler"]


def start_beat(settings: Settings, logdir: Path) -> WorkerProcess:
    """Start celery beat in its own session; its handle's log says "beat: Starting..." once it runs."""
    logdir.mkdir(parents=True, exist_ok=True)
    logfile = logdir / "beat.log"
    env = {**os.environ, **settings.as_env(), "PYTHONUNBUFFERED": "1"}
    settings.home.mkdir(parents=True, exist_ok=True)
    with logfile.open("w") as out:
        proc = subprocess.Popen(
            beat_argv(settings), env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    return WorkerProcess("beat", [], proc, logfile)


@dataclass
class WorkerProcess:
    """A worker process this program started."""

    name: str
    queues: list[str]
    process: subprocess.Popen
    logfile: Path

    def ready(self) -> bool:
        mark = "beat: Starting" if self.name == "beat" else " ready."
        return self.logfile.is_file() and mark in self.logfile.read_text(errors="replace")


def start_worker(settings: Settings, name: str, queues: list[str], logdir: Path, **options) -> WorkerProcess:
    """Start one worker in its own session (so a terminal Ctrl-C reaches only us; we stop it warmly).

    `wait_ready` reads the worker's "ready." line, which Celery logs at INFO: keep loglevel at info or debug.
    """
    if options.get("loglevel", "info").lower() not in ("info", "debug"):
        raise ValueError("start_worker needs loglevel info or debug (readiness is read from the log)")
    logdir.mkdir(parents=True, exist_ok=True)
    logfile = logdir / f"{name}.log"
    env = {**os.environ, **settings.as_env(), "PYTHONUNBUFFERED": "1"}
    json_logs = settings.log_format == "json"
    argv = worker_argv(name, queues, embedded=settings.is_filesystem_broker, json_logs=json_logs, **options)
    with logfile.open("w") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return WorkerProcess(name, queues, proc, logfile)


def wait_ready(workers: list[WorkerProcess], timeout: float = 90.0) -> None:
    """Block until every worker logged "ready"; raise with the log tail if one died or timed out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for w in workers:
            if w.process.poll() is not None:
                raise RuntimeError(f"worker {w.name} exited with {w.process.returncode}:\n{_tail(w.logfile)}")
        if all(w.ready() for w in workers):
            return
        time.sleep(0.2)
    tails = "\n".join(_tail(w.logfile) for w in workers)
    raise TimeoutError(f"workers not ready after {timeout:.0f}s:\n{tails}")


def stop_workers(workers: list[WorkerProcess], timeout: float = 30.0) -> None:
    """Warm shutdown (SIGTERM lets the current task finish); SIGKILL whatever outlives `timeout`."""
    for w in workers:
        if w.process.poll() is None:
            w.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for w in workers:
        try:
            w.process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(w.process.pid, signal.SIGKILL)
            w.process.wait()


def _tail(path: Path, lines: int = 30) -> str:
    if not path.is_file():
        return f"(no log at {path})"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def start_cv_launcher(settings: Settings, logdir: Path, processes: int = 1, device: str = "cpu") -> WorkerProcess:
    """Start `python -m gpu_worker` (one CV worker per GPU, or `processes` on the CPU) as one supervised group.

    The returned handle's log is the first worker's, so `wait_ready` waits for it; stopping the handle sends
    SIGTERM to the launcher, which shuts its workers down warmly.
    """
    logdir.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "gpu_worker", "--device", device, "--processes", str(processes)]
    argv += ["--logdir", str(logdir)]
    env = {**os.environ, **settings.as_env(), "PYTHONUNBUFFERED": "1"}
    with (logdir / "cv-launcher.log").open("w") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    first = "cv-cpu0" if device == "cpu" else "cv-gpu0"
    (logdir / f"{first}.log").unlink(missing_ok=True)  # readiness must come from this run
    return WorkerProcess("cv-launcher", ["cv"], proc, logdir / f"{first}.log")


def _log_format_option(args: argparse.Namespace) -> None:
    if args.log_format:
        os.environ["VIDPIPE_LOG_FORMAT"] = args.log_format


def cmd_worker(args: argparse.Namespace) -> int:
    _log_format_option(args)
    settings = settings_from(args)
    prepare_folders(settings)

    queues = [q.strip() for q in args.queues.split(",") if q.strip()]
    unknown = sorted(set(queues) - set(ALL_QUEUES))
    if unknown:
        print(f"unknown queue(s) {unknown}; known: {list(ALL_QUEUES)}", file=sys.stderr)
        return 2
    name = args.name or "-".join(queues)
    argv = worker_argv(
        name,
        queues,
        pool=args.pool,
        concurrency=args.concurrency,
        loglevel=args.loglevel,
        embedded=settings.is_filesystem_broker,
        disable_prefetch=args.disable_prefetch,
        json_logs=settings.log_format == "json",
    )
    os.execv(argv[0], argv)
    return 0  # not reached


def cmd_beat(args: argparse.Namespace) -> int:
    _log_format_option(args)
    settings = settings_from(args)
    prepare_folders(settings)

    argv = beat_argv(settings, loglevel=args.loglevel)
    os.execv(argv[0], argv)
    return 0  # not reached


def add_parser(sub: argparse._SubParsersAction) -> None:
    worker = sub.add_parser("worker", help="run a Celery worker on some queues")
    worker.add_argument("--queues", "-Q", required=True, help=f"comma-separated, from {','.join(ALL_QUEUES)}")
    worker.add_argument("--name", "-n", help="node name (default: the queue names)")
    worker.add_argument("--pool", default="solo", choices=["solo", "prefork", "threads"])
    worker.add_argument("--concurrency", "-c", type=int, default=1)
    worker.add_argument("--loglevel", "-l", default="info")
    worker.add_argument(
        "--log-format",
        choices=["text", "json"],
        help="json: one JSON object per line with project, scene, task id and worker (env VIDPIPE_LOG_FORMAT)",
    )
    worker.add_argument(
        "--disable-prefetch", action="store_true", help="take a task only when a slot is free (Redis; autoscaling)"
    )
    worker.set_defaults(func=cmd_worker)
    beat = sub.add_parser(
        "beat", help="run Celery beat: the sweep that resumes lost chains (exactly one per installation)"
    )
    beat.add_argument("--loglevel", "-l", default="info")
    beat.add_argument("--log-format", choices=["text", "json"], help="json: JSON lines (env VIDPIPE_LOG_FORMAT)")
    beat.set_defaults(func=cmd_beat)
