"""`vidpipe generators`: clip generators' configuration problems, ComfyUI queues, jobs in flight."""

from __future__ import annotations

import argparse
import json

from vidpipe_tasks.cli.common import settings_from


def cmd_generators(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    from vidpipe_tasks.db.migrate import prepare_installation
    from vidpipe_tasks.generators.report import generators_report, render_generators

    prepare_installation(settings)
    report = generators_report(settings, probe=not args.no_probe)
    print(json.dumps(report, indent=2) if args.json else render_generators(report))
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    generators = sub.add_parser(
        "generators", help="clip generators: configuration problems, ComfyUI queue depths, jobs in flight"
    )
    generators.add_argument("--json", action="store_true")
    generators.add_argument("--no-probe", action="store_true", help="do not ask ComfyUI servers for their queues")
    generators.set_defaults(func=cmd_generators)
