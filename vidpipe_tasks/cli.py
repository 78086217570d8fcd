"""The `vidpipe` command: demo, submit, worker, status, db."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from vidpipe_tasks.settings import ALL_QUEUES, load_settings, prepare_folders
from vidpipe_tasks.storyboard import StoryboardError


def _settings(args: argparse.Namespace):
    if args.home:
        os.environ["VIDPIPE_HOME"] = str(Path(args.home).resolve())
    settings = load_settings()
    # Child processes and the Celery app module read the same settings from the environment.
    os.environ.update(settings.as_env())
    return settings


def cmd_demo(args: argparse.Namespace) -> int:
    from vidpipe_tasks.demo import run_demo

    return run_demo(Path(args.work_dir), fresh=args.fresh, timeout=args.timeout)


def cmd_submit(args: argparse.Namespace) -> int:
    settings = _settings(args)
    from vidpipe_tasks.db.migrate import prepare_installation
    from vidpipe_tasks.storyboard import load_storyboards

    load_storyboards([Path(p) for p in args.files])  # fail before touching the database
    prepare_installation(settings)
    from vidpipe_tasks.celery_app import app
    from vidpipe_tasks.workflow import submit

    for project_id in submit(app, settings, [Path(p) for p in args.files], priority=args.priority):
        print(project_id)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    settings = _settings(args)
    prepare_folders(settings)
    from vidpipe_tasks.workers import worker_argv

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
    )
    os.execv(argv[0], argv)
    return 0  # not reached


def cmd_status(args: argparse.Namespace) -> int:
    settings = _settings(args)
    from vidpipe_tasks.status import load_status, render_text

    try:
        status = load_status(settings, args.project)
    except LookupError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    print(json.dumps(status, indent=2) if args.json else render_text(status))
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    settings = _settings(args)
    from vidpipe_tasks.celery_app import app
    from vidpipe_tasks.workflow import NothingToRun, enqueue_project

    code = 0
    for project_id in args.projects:
        try:
            enqueue_project(app, settings, project_id)
            print(f"project {project_id}: queued again from its first unfinished scene")
        except (LookupError, NothingToRun) as exc:
            print(str(exc), file=sys.stderr)
            code = 1
    return code


def cmd_cancel(args: argparse.Namespace) -> int:
    settings = _settings(args)
    from vidpipe_tasks.workflow import cancel_project

    try:
        for project_id in args.projects:
            cancel_project(settings, project_id)
            print(f"project {project_id}: cancelled (queued tasks stop when a worker takes them)")
    except LookupError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    return 0


def cmd_wait(args: argparse.Namespace) -> int:
    settings = _settings(args)
    from vidpipe_tasks.wait import wait_for

    try:
        return wait_for(settings, args.projects, args.timeout)
    except LookupError as exc:
        print(str(exc), file=sys.stderr)
        return 1


def cmd_db(args: argparse.Namespace) -> int:
    settings = _settings(args)
    from vidpipe_tasks.db.migrate import prepare_installation

    prepare_installation(settings)
    print(f"database at head: {settings.database_url}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vidpipe", description=__doc__)
    parser.add_argument("--home", help="work folder of the embedded default (env VIDPIPE_HOME)")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run the bundled examples end to end on the embedded default")
    demo.add_argument("--work-dir", default="vidpipe-work", help="folder for database, broker, results and media")
    demo.add_argument("--fresh", action="store_true", help="delete the work folder first")
    demo.add_argument("--timeout", type=float, default=1200.0, help="give up after this many seconds")
    demo.set_defaults(func=cmd_demo)

    submit = sub.add_parser("submit", help="validate storyboards, store them and queue their chains")
    submit.add_argument("files", nargs="+", help="storyboard YAML/JSON files")
    submit.add_argument("--priority", type=int, choices=range(10), metavar="0-9")
    submit.set_defaults(func=cmd_submit)

    worker = sub.add_parser("worker", help="run a Celery worker on some queues")
    worker.add_argument("--queues", "-Q", required=True, help=f"comma-separated, from {','.join(ALL_QUEUES)}")
    worker.add_argument("--name", "-n", help="node name (default: the queue names)")
    worker.add_argument("--pool", default="solo", choices=["solo", "prefork", "threads"])
    worker.add_argument("--concurrency", "-c", type=int, default=1)
    worker.add_argument("--loglevel", "-l", default="info")
    worker.add_argument(
        "--disable-prefetch", action="store_true", help="take a task only when a slot is free (Redis; autoscaling)"
    )
    worker.set_defaults(func=cmd_worker)

    status = sub.add_parser("status", help="show a project's scenes, tasks and scores")
    status.add_argument("project", type=int)
    status.add_argument("--json", action="store_true", help="machine-readable (docs/status-json.md)")
    status.set_defaults(func=cmd_status)

    wait = sub.add_parser("wait", help="follow projects until they end (exit 1 if any failed, 124 on timeout)")
    wait.add_argument("projects", type=int, nargs="+")
    wait.add_argument("--timeout", type=float, default=3600.0)
    wait.set_defaults(func=cmd_wait)

    resume = sub.add_parser("resume", help="queue a project again from its first scene not yet registered")
    resume.add_argument("projects", type=int, nargs="+")
    resume.set_defaults(func=cmd_resume)

    cancel = sub.add_parser("cancel", help="cancel projects; their queued tasks stop themselves")
    cancel.add_argument("projects", type=int, nargs="+")
    cancel.set_defaults(func=cmd_cancel)

    db = sub.add_parser("db", help="database maintenance")
    db.add_argument("action", choices=["upgrade"])
    db.set_defaults(func=cmd_db)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # kombu warns that the filesystem transport has no hostname; that is expected and only noise here.
    logging.getLogger("kombu.connection").setLevel(logging.ERROR)
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except StoryboardError as exc:
        print("invalid storyboard(s); nothing was queued:", file=sys.stderr)
        for file, field, reason in exc.problems:
            print(f"  {file}: {field}: {reason}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
