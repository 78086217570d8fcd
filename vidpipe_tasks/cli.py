"""The `vidpipe` command: submit, workers, status, wait, resume, cancel, queues, assets, generators, models, db."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from vidpipe_tasks.errors import SchemaNotReady
from vidpipe_tasks.inputs import priority_arg
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
    from vidpipe_tasks.inputs import load_inputs

    inputs = load_inputs(args.inputs, settings.input_limits)  # every storyboard is valid before the database is touched
    if args.priority is not None and not settings.is_redis_broker:
        print("warning: only the Redis broker has priorities; --priority is ignored here", file=sys.stderr)
    prepare_installation(settings)
    from vidpipe_tasks.celery_app import app
    from vidpipe_tasks.storing import BatchNotStored
    from vidpipe_tasks.workflow import QueueingFailed, submit_inputs

    try:
        ids = submit_inputs(app, settings, inputs, priority=args.priority)
    except BatchNotStored as exc:
        print(f"vidpipe submit: {exc}", file=sys.stderr)
        return 1
    except QueueingFailed as exc:
        _print_submitted(args, inputs, exc.ids, set(exc.queued))
        print(
            "stored but not queued (left PENDING: automatic recovery queues them, or `vidpipe resume ID` now):",
            file=sys.stderr,
        )
        for project_id, reason in exc.failed:
            print(f"  project {project_id}: {reason}", file=sys.stderr)
        return 1
    _print_submitted(args, inputs, ids, set(ids))
    return 0


def _print_submitted(args: argparse.Namespace, inputs: list, ids: list[int], queued: set[int]) -> None:
    by_id = dict(zip(ids, inputs, strict=True))
    if args.json:
        rows = [
            {"project_id": i, "source": s.source, "title": s.board.title, "queued": i in queued}
            for i, s in by_id.items()
        ]
        print(json.dumps({"priority": args.priority, "projects": rows}, indent=2))
    else:
        print("\n".join(str(i) for i in by_id if i in queued))


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


def cmd_beat(args: argparse.Namespace) -> int:
    settings = _settings(args)
    prepare_folders(settings)
    from vidpipe_tasks.workers import beat_argv

    argv = beat_argv(settings, loglevel=args.loglevel)
    os.execv(argv[0], argv)
    return 0  # not reached


def cmd_status(args: argparse.Namespace) -> int:
    settings = _settings(args)
    from vidpipe_tasks.status import load_status, load_summaries, render_table, render_text

    if args.last is not None and args.last < 1:
        print("vidpipe status: --last needs a positive number", file=sys.stderr)
        return 2
    try:
        if len(args.projects) == 1 and args.last is None:
            status = load_status(settings, args.projects[0])
            print(json.dumps(status, indent=2) if args.json else render_text(status))
        else:
            table = load_summaries(settings, args.projects or None, args.last)
            print(json.dumps(table, indent=2) if args.json else render_table(table["projects"]))
    except LookupError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    settings = _settings(args)
    prepare_folders(settings)  # a project stored while another broker was configured has none yet
    from kombu.exceptions import OperationalError

    from vidpipe_tasks.celery_app import app
    from vidpipe_tasks.workflow import NothingToRun, StillQueued, resume

    code = 0
    for project_id in args.projects:
        try:
            print(resume(app, settings, project_id, args.priority).describe())
        except (LookupError, NothingToRun, StillQueued) as exc:
            print(str(exc), file=sys.stderr)
            code = 1
        except OperationalError as exc:  # the broker is down: the project stays as it was
            print(f"project {project_id}: not queued: {' '.join(str(exc).split())}", file=sys.stderr)
            code = 1
    return code


def cmd_cancel(args: argparse.Namespace) -> int:
    settings = _settings(args)
    from vidpipe_tasks.celery_app import app
    from vidpipe_tasks.workflow import cancel

    code = 0
    for project_id in args.projects:
        try:
            print(cancel(app, settings, project_id).describe())
        except LookupError as exc:
            print(str(exc), file=sys.stderr)
            code = 1
    return code


def cmd_wait(args: argparse.Namespace) -> int:
    settings = _settings(args)
    from vidpipe_tasks.wait import wait_for

    try:
        return wait_for(settings, args.projects, args.timeout, poll=args.poll, heartbeat=args.heartbeat)
    except LookupError as exc:
        print(str(exc), file=sys.stderr)
        return 1


def cmd_generators(args: argparse.Namespace) -> int:
    settings = _settings(args)
    from vidpipe_tasks.db.migrate import prepare_installation
    from vidpipe_tasks.generators.report import generators_report, render_generators

    prepare_installation(settings)
    report = generators_report(settings, probe=not args.no_probe)
    print(json.dumps(report, indent=2) if args.json else render_generators(report))
    return 0


def cmd_queues(args: argparse.Namespace) -> int:
    settings = _settings(args)
    from vidpipe_tasks.celery_app import app
    from vidpipe_tasks.queues import queues_report, render_queues

    try:
        report = queues_report(app, settings, timeout=args.timeout, workers=not args.no_workers)
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2) if args.json else render_queues(report))
    return 0


def cmd_db(args: argparse.Namespace) -> int:
    settings = _settings(args)
    from vidpipe_tasks.db.migrate import prepare_installation

    prepare_installation(settings, migrate=True)
    print(f"database at head: {settings.database_url}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    settings = _settings(args)
    from dataclasses import replace

    from vidpipe_tasks import model_store

    if args.model:
        settings = replace(settings, clip_model=args.model)
    if args.action == "status":
        status = model_store.models_status(settings)
        print(json.dumps(status, indent=2) if args.json else model_store.render_status(status))
        return 0
    sources = [(kind, src) for kind, src in (("insightface", args.insightface), ("open_clip", args.open_clip)) if src]
    if not sources:
        print("vidpipe models stage: give --insightface SRC and/or --open-clip SRC", file=sys.stderr)
        return 2
    if len(args.sha256 or []) != len(sources):
        print("vidpipe models stage: give one --sha256 per source (insightface first)", file=sys.stderr)
        return 2
    try:
        for (kind, src), digest in zip(sources, args.sha256, strict=True):
            if kind == "insightface":
                where = model_store.stage_insightface(settings, src, digest)
            else:
                where = model_store.stage_open_clip(settings, src, digest, Path(args.config) if args.config else None)
            print(f"{kind} staged at {where}")
    except model_store.StagingError as exc:
        print(f"vidpipe models stage: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_assets(args: argparse.Namespace) -> int:
    settings = _settings(args)
    from vidpipe_tasks.assets import AssetInUse, list_assets, remove_asset, render_assets

    if args.action == "list":
        rows = list_assets(settings, args.manifest)
        if args.problems:
            rows = [r for r in rows if r["problem"]]
        print(json.dumps(rows, indent=2) if args.json else render_assets(rows))
        return 0
    if not args.assets:
        print("vidpipe assets remove: name the asset id(s) to remove", file=sys.stderr)
        return 2
    code = 0
    for asset_id in args.assets:
        try:
            print(remove_asset(settings, asset_id, force=args.force))
        except (LookupError, AssetInUse) as exc:
            print(str(exc), file=sys.stderr)
            code = 1
    return code


def cmd_flower(args: argparse.Namespace) -> int:
    settings = _settings(args)
    from vidpipe_tasks.flower import FlowerRefused, flower_config, run_flower

    try:
        config = flower_config(
            settings,
            basic_auth=args.basic_auth,
            port=args.port,
            address=args.address,
            max_tasks=args.max_tasks,
            purge_offline_workers=args.purge_offline_workers,
        )
    except FlowerRefused as exc:
        print(f"vidpipe flower: {exc}", file=sys.stderr)
        return 2
    from vidpipe_tasks.celery_app import app

    return run_flower(app, config)


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
    submit.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="storyboard files (YAML/JSON), folders of them, JSONL batches"
    )
    submit.add_argument(
        "--priority", type=priority_arg, metavar="0-9", help="Redis only: 0 is served first (docs/operations.md)"
    )
    submit.add_argument("--json", action="store_true", help="print project ids with their sources as JSON")
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

    beat = sub.add_parser(
        "beat", help="run Celery beat: the sweep that resumes lost chains (exactly one per installation)"
    )
    beat.add_argument("--loglevel", "-l", default="info")
    beat.set_defaults(func=cmd_beat)

    status = sub.add_parser("status", help="a table of projects, or one project's scenes, tasks and scores")
    status.add_argument("projects", type=int, nargs="*", metavar="PROJECT", help="one: detailed view; none: all")
    status.add_argument("--last", type=int, metavar="N", help="only the N most recent projects (a table)")
    status.add_argument("--json", action="store_true", help="machine-readable (docs/status-json.md)")
    status.set_defaults(func=cmd_status)

    wait = sub.add_parser("wait", help="follow projects until they end (exit 1 if any failed, 124 on timeout)")
    wait.add_argument("projects", type=int, nargs="+")
    wait.add_argument("--timeout", type=float, default=3600.0)
    wait.add_argument("--poll", type=float, default=0.5, help="seconds between reads of the database")
    wait.add_argument(
        "--heartbeat", type=float, default=30.0, help="not on a terminal: repeat unfinished projects' lines this often"
    )
    wait.set_defaults(func=cmd_wait)

    resume = sub.add_parser("resume", help="queue a stalled project again from its first scene not yet registered")
    resume.add_argument("projects", type=int, nargs="+")
    resume.add_argument("--priority", type=priority_arg, metavar="0-9", help="Redis only: 0 is served first")
    resume.set_defaults(func=cmd_resume)

    cancel = sub.add_parser("cancel", help="cancel projects and revoke their queued tasks")
    cancel.add_argument("projects", type=int, nargs="+")
    cancel.set_defaults(func=cmd_cancel)

    queues = sub.add_parser("queues", help="messages waiting per queue (priority sub-lists too) and per-worker load")
    queues.add_argument("--json", action="store_true", help="machine-readable")
    queues.add_argument("--timeout", type=float, default=1.0, help="seconds to wait for workers to answer")
    queues.add_argument("--no-workers", action="store_true", help="only the queue depths (no broadcast)")
    queues.set_defaults(func=cmd_queues)

    generators = sub.add_parser(
        "generators", help="clip generators: configuration problems, ComfyUI queue depths, jobs in flight"
    )
    generators.add_argument("--json", action="store_true")
    generators.add_argument("--no-probe", action="store_true", help="do not ask ComfyUI servers for their queues")
    generators.set_defaults(func=cmd_generators)
    models = sub.add_parser("models", help="CV engines usable on this host; stage weights for offline GPU nodes")
    models.add_argument("action", choices=["status", "stage"])
    models.add_argument("--json", action="store_true", help="status: machine-readable")
    models.add_argument("--insightface", metavar="SRC", help="stage: model pack zip or folder, path or URL")
    models.add_argument("--open-clip", metavar="SRC", help="stage: open_clip state-dict file, path or URL")
    models.add_argument(
        "--model", help="stage: open_clip architecture the weights are for (default VIDPIPE_CLIP_MODEL)"
    )
    models.add_argument("--config", help="stage: open_clip model config JSON for a custom architecture")
    models.add_argument("--sha256", action="append", help="expected checksum of each source (required)")
    models.set_defaults(func=cmd_models)

    assets = sub.add_parser("assets", help="list registry assets (with problems found) or remove a bad one")
    assets.add_argument("action", choices=["list", "remove"])
    assets.add_argument("assets", type=int, nargs="*", metavar="ASSET", help="remove: asset ids")
    assets.add_argument("--manifest", help="list: only this manifest's assets")
    assets.add_argument("--problems", action="store_true", help="list: only assets with a problem")
    assets.add_argument("--json", action="store_true", help="list: machine-readable")
    assets.add_argument("--force", action="store_true", help="remove: also an asset with appearances")
    assets.set_defaults(func=cmd_assets)

    from vidpipe_tasks.flower import add_flower_arguments  # light: Flower itself is imported only to run it

    flower = sub.add_parser("flower", help="run Flower (tasks, workers, /metrics) on the Redis broker, basic auth")
    add_flower_arguments(flower)
    flower.set_defaults(func=cmd_flower)

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
    except SchemaNotReady as exc:
        print(f"vidpipe: {exc}", file=sys.stderr)
        return 2
    except StoryboardError as exc:
        print("invalid storyboard(s); nothing was queued:", file=sys.stderr)
        for file, field, reason in exc.problems:
            print(f"  {file}: {field}: {reason}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
