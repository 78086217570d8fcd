"""`vidpipe report PROJECT [-o report.html]`: one self-contained HTML page of a project's scenes and registry."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vidpipe_tasks.cli.common import EXIT_FAILED, EXIT_OK, existing_installation


def cmd_report(args: argparse.Namespace) -> int:
    from vidpipe_tasks.report import write_report

    settings = existing_installation(args)
    out = Path(args.output or f"report-{args.project}.html")
    try:
        path = write_report(settings, args.project, out)
    except OSError as exc:  # the output folder cannot be written
        print(f"vidpipe report: cannot write {out}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"report of project {args.project}: {path} ({path.stat().st_size // 1024} KiB, open it in a browser)")
    return EXIT_OK


def add_parser(sub: argparse._SubParsersAction) -> None:
    report = sub.add_parser("report", help="an HTML page of a project: frames, face boxes, references, growth")
    report.add_argument("project", type=int, metavar="PROJECT")
    report.add_argument("-o", "--output", metavar="FILE", help="where to write it (default report-PROJECT.html)")
    report.set_defaults(func=cmd_report)
