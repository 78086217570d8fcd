"""`vidpipe export PROJECT -o final.mp4`: the project's clips joined in scene order into one video."""

from __future__ import annotations

import argparse
import re
import sys
from fractions import Fraction
from pathlib import Path

from vidpipe_tasks.cli.common import EXIT_FAILED, EXIT_OK, existing_installation


def _size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d{1,5})x(\d{1,5})", text)
    if not match:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 1280x720, not {text!r}")
    return int(match.group(1)), int(match.group(2))


def _fps(text: str) -> Fraction:
    try:
        value = Fraction(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"expected a frame rate such as 24 or 30000/1001, not {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("the frame rate must be positive")
    return value


def cmd_export(args: argparse.Namespace) -> int:
    from vidpipe_tasks.export import ExportError, export_project

    settings = existing_installation(args)
    try:
        result = export_project(
            settings, args.project, Path(args.output), size=args.size, fps=args.fps, crossfade_s=args.crossfade
        )
    except ExportError as exc:
        print(f"vidpipe export: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:  # the output folder cannot be written
        print(f"vidpipe export: cannot write {args.output}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILED
    audio = "with audio" if result.audio else "no audio"
    print(
        f"exported project {args.project}: {result.path} ({result.clips} clips, {result.frame_count} frames, "
        f"{result.duration_s:.2f} s, {result.width}x{result.height} at {float(result.fps):g} fps, {audio})"
    )
    return EXIT_OK


def add_parser(sub: argparse._SubParsersAction) -> None:
    export = sub.add_parser("export", help="join a project's clips in scene order into one MP4")
    export.add_argument("project", type=int, metavar="PROJECT")
    export.add_argument("-o", "--output", required=True, metavar="FILE", help="the MP4 to write")
    export.add_argument("--crossfade", type=float, default=0.0, metavar="SECONDS", help="crossfade at each cut")
    export.add_argument("--size", type=_size, metavar="WxH", help="output size (default: the first clip's)")
    export.add_argument("--fps", type=_fps, metavar="RATE", help="output frame rate (default: the first clip's)")
    export.set_defaults(func=cmd_export)
