"""`vidpipe resume` and `vidpipe cancel`: act on stored projects."""

from __future__ import annotations

import argparse
import sys

from vidpipe_tasks.cli.common import existing_installation
from vidpipe_tasks.inputs import priority_arg
from vidpipe_tasks.settings import prepare_folders


def cmd_resume(args: argparse.Namespace) -> int:
    settings = existing_installation(args)
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
    settings = existing_installation(args)
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


def add_parser(sub: argparse._SubParsersAction) -> None:
    resume = sub.add_parser("resume", help="queue a stalled project again from its first scene not yet registered")
    resume.add_argument("projects", type=int, nargs="+")
    resume.add_argument("--priority", type=priority_arg, metavar="0-9", help="Redis only: 0 is served first")
    resume.set_defaults(func=cmd_resume)
    cancel = sub.add_parser("cancel", help="cancel projects and revoke their queued tasks")
    cancel.add_argument("projects", type=int, nargs="+")
    cancel.set_defaults(func=cmd_cancel)
