"""What `vidpipe submit` accepts: storyboard files, folders of them and JSONL batches, all validated up front."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from vidpipe_tasks.limits import InputLimits
from vidpipe_tasks.safe_load import InputFileError, decode_utf8, parse_json, read_limited
from vidpipe_tasks.storyboard import (
    Storyboard,
    StoryboardError,
    load_storyboard,
    printable,
    project_totals,
    validate_storyboard,
)

#: Files a folder contributes (top level only, sorted by name).
STORYBOARD_SUFFIXES = (".yaml", ".yml", ".json")
#: A batch file: one storyboard (a JSON object) per line.
JSONL_SUFFIX = ".jsonl"
#: Longest source (path, or "path:line") a project records.
MAX_SOURCE_CHARS = 1000
#: `--priority` range: the message priorities kombu's Redis transport understands.
MIN_PRIORITY, MAX_PRIORITY = 0, 9


def priority_arg(text: str) -> int:
    """Parse `--priority` (an argparse type): an integer 0-9 (on Redis, 0 is served first).

    Raises:
        argparse.ArgumentTypeError: for anything else (argparse then exits with code 2).

    """
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer 0-9") from None
    if not MIN_PRIORITY <= value <= MAX_PRIORITY:
        raise argparse.ArgumentTypeError(f"{value} is out of range: use 0-9 (on Redis 0 is served first)")
    return value


@dataclass(frozen=True)
class StoryboardInput:
    """One validated storyboard of a submission.

    Attributes:
        path: the storyboard file, or the JSONL batch it is a line of; relative reference images resolve
            against its folder.
        line: the line number in a JSONL batch, None for a storyboard file.
        board: the validated storyboard.

    """

    path: Path
    line: int | None
    board: Storyboard

    @property
    def source(self) -> str:
        """How messages and the project's `source_path` name it: "story.yaml" or "batch.jsonl:3"."""
        return str(self.path) if self.line is None else f"{self.path}:{self.line}"


def folder_storyboards(folder: Path) -> list[Path]:
    """Every *.yaml, *.yml and *.json file directly inside `folder`, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in STORYBOARD_SUFFIXES)


def _jsonl_inputs(path: Path, limits: InputLimits) -> tuple[list[StoryboardInput], list[tuple[str, str, str]]]:
    try:
        text = decode_utf8(read_limited(path, limits.max_input_bytes))
    except FileNotFoundError:
        return [], [(str(path), "(file)", "no such file")]
    except InputFileError as exc:
        return [], [(str(path), "(file)", printable(str(exc)))]
    inputs, problems = [], []
    for number, raw in enumerate(text.split("\n"), start=1):
        if not raw.strip():
            continue  # blank lines (e.g. a trailing newline pair) carry nothing
        name = f"{path}:{number}"
        try:
            data = _jsonl_line(raw, limits)
        except InputFileError as exc:
            problems.append((name, "(line)", printable(str(exc))))
            continue
        if isinstance(data, dict) and set(data) == {"path"}:
            problems.append(
                (name, "(line)", "each line is a storyboard itself, not a reference; pass files on the command line")
            )
            continue
        try:
            inputs.append(StoryboardInput(path, number, validate_storyboard(data, name, path.parent, limits)))
        except StoryboardError as exc:
            problems.extend(exc.problems)
    if not inputs and not problems:
        problems.append((str(path), "(file)", "no storyboard lines"))
    return inputs, problems


def _jsonl_line(raw: str, limits: InputLimits) -> object:
    size = len(raw.encode("utf-8"))
    if size > limits.max_storyboard_bytes:
        raise InputFileError(
            f"{size} bytes is more than the limit of {limits.max_storyboard_bytes} (VIDPIPE_MAX_STORYBOARD_BYTES)"
        )
    return parse_json(raw, limits.max_nesting_depth)


def batch_problems(inputs: Sequence[StoryboardInput], limits: InputLimits) -> list[tuple[str, str, str]]:
    """The per-submission quotas a set of storyboards exceeds, named by the first input."""
    if not inputs:
        return []
    where = str(inputs[0].path)
    # The project records its source; the column holds MAX_SOURCE_CHARS.
    problems = [
        (printable(i.source, 4 * MAX_SOURCE_CHARS), "(file)", f"path longer than {MAX_SOURCE_CHARS} characters")
        for i in inputs
        if len(i.source) > MAX_SOURCE_CHARS
    ]
    if len(inputs) > limits.max_batch_projects:
        problems.append(
            (
                where,
                "(batch)",
                f"{len(inputs)} storyboards is more than the quota of {limits.max_batch_projects} per submission "
                "(VIDPIPE_MAX_BATCH_PROJECTS)",
            )
        )
    seconds = sum(project_totals(i.board)[0] for i in inputs)
    if seconds > limits.max_batch_seconds:
        problems.append(
            (
                where,
                "(batch)",
                f"{seconds:g} s of video in all is more than the quota of {limits.max_batch_seconds:g} s per "
                "submission (VIDPIPE_MAX_BATCH_SECONDS)",
            )
        )
    return problems


def load_inputs(args: Sequence[str | Path], limits: InputLimits | None = None) -> list[StoryboardInput]:
    """Expand and validate every argument of a submission, in order.

    A folder contributes its *.yaml/*.yml/*.json files (sorted); a `.jsonl` file one storyboard per
    non-blank line; anything else is read as one storyboard file (JSON when it ends in .json, else YAML).

    Raises:
        StoryboardError: listing (file, field, reason) for every problem in every input, and any
            per-submission quota exceeded, so that nothing is stored or queued while any remains.

    """
    limits = limits or InputLimits()
    inputs: list[StoryboardInput] = []
    problems: list[tuple[str, str, str]] = []
    for arg in args:
        path = Path(arg)
        if path.is_dir():
            files = folder_storyboards(path)
            if not files:
                problems.append((str(path), "(folder)", "no *.yaml, *.yml or *.json storyboard inside"))
        elif path.suffix.lower() == JSONL_SUFFIX:
            found, bad = _jsonl_inputs(path, limits)
            inputs += found
            problems += bad
            continue
        else:
            files = [path]
        for file in files:
            try:
                inputs.append(StoryboardInput(file, None, load_storyboard(file, limits)))
            except StoryboardError as exc:
                problems.extend(exc.problems)
    problems += batch_problems(inputs, limits)
    if problems:
        raise StoryboardError(problems)
    return inputs
