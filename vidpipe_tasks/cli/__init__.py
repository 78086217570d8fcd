"""The `vidpipe` command: one module per command group, registered here (as celery/bin does)."""

from __future__ import annotations

import argparse
import logging
import sys

from vidpipe_tasks.cli import (
    assets,
    control,
    db,
    demo,
    export,
    exporter,
    flower,
    generators,
    models,
    queues,
    report,
    status,
    submit,
    wait,
    workers,
)
from vidpipe_tasks.cli.common import (
    EXIT_CODES_HELP,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    home_option,
    quiet_broken_pipe,
    unavailable_reason,
)
from vidpipe_tasks.errors import SchemaNotReady
from vidpipe_tasks.storyboard import StoryboardError

#: Command groups in the order `vidpipe --help` lists them.
COMMAND_GROUPS = (
    demo,
    submit,
    workers,
    status,
    wait,
    control,
    report,
    export,
    queues,
    generators,
    models,
    assets,
    flower,
    exporter,
    db,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vidpipe",
        description="vidpipe: AI video scene by scene, with progressive enrichment of the registry.",
        epilog=EXIT_CODES_HELP,
    )
    parser.add_argument("--home", help="work folder of the embedded default (env VIDPIPE_HOME)")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in COMMAND_GROUPS:
        group.add_parser(sub)
    for command in sub.choices.values():
        home_option(command)
        command.epilog = command.epilog or EXIT_CODES_HELP
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # kombu warns that the filesystem transport has no hostname; that is expected and only noise here.
    logging.getLogger("kombu.connection").setLevel(logging.ERROR)
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler, not at interpreter exit
        return code
    except BrokenPipeError:
        return quiet_broken_pipe()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except SchemaNotReady as exc:
        print(f"vidpipe: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except StoryboardError as exc:
        print("invalid storyboard(s); nothing was queued:", file=sys.stderr)
        for file, field, reason in exc.problems:
            print(f"  {file}: {field}: {reason}", file=sys.stderr)
        return EXIT_USAGE
    except LookupError as exc:  # an unknown project or asset id
        print(f"vidpipe {args.command}: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:
        reason = unavailable_reason(exc)
        if reason is None:
            raise  # a bug: the traceback is what a report needs
        print(f"vidpipe {args.command}: {reason}", file=sys.stderr)
        return EXIT_UNAVAILABLE
