"""`vidpipe submit`: validate storyboards, store them and queue their chains."""

from __future__ import annotations

import argparse
import json
import sys

from vidpipe_tasks.cli.common import settings_from
from vidpipe_tasks.inputs import priority_arg


def cmd_submit(args: argparse.Namespace) -> int:
    settings = settings_from(args)
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


def add_parser(sub: argparse._SubParsersAction) -> None:
    submit = sub.add_parser("submit", help="validate storyboards, store them and queue their chains")
    submit.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="storyboard files (YAML/JSON), folders of them, JSONL batches"
    )
    submit.add_argument(
        "--priority", type=priority_arg, metavar="0-9", help="Redis only: 0 is served first (docs/operations.md)"
    )
    submit.add_argument("--json", action="store_true", help="print project ids with their sources as JSON")
    submit.set_defaults(func=cmd_submit)
