"""Reading untrusted input files: size-limited, regular files only, strict YAML/JSON, bounded nesting."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode


class InputFileError(ValueError):
    """An input file cannot be read or parsed; the message is the reason, one line."""


def read_limited(path: Path, limit: int, setting: str = "VIDPIPE_MAX_INPUT_BYTES") -> bytes:
    """The bytes of a regular file of at most `limit` bytes (devices, FIFOs and folders are refused).

    Raises:
        FileNotFoundError: no such file.
        InputFileError: not a regular file, too large, or unreadable.

    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise InputFileError(f"cannot read: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise InputFileError("not a regular file")
    if info.st_size > limit:
        raise InputFileError(f"{info.st_size} bytes is more than the limit of {limit} ({setting})")
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)  # the file may grow after the stat; never read past the limit
    except OSError as exc:
        raise InputFileError(f"cannot read: {exc.strerror}") from None
    if len(data) > limit:
        raise InputFileError(f"more than the limit of {limit} bytes ({setting})")
    return data


def decode_utf8(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputFileError(f"not UTF-8 text (byte {exc.start})") from None


class _StrictYamlLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and aliases, and stops at a nesting depth (no recursion blow-up)."""

    max_depth = 20

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):  # noqa: ANN001, ANN201 - PyYAML's signature
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            # Aliases let a few bytes expand into a huge document ("billion laughs"); storyboards need none.
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed", event.start_mark)
        collection = self.check_event(yaml.MappingStartEvent, yaml.SequenceStartEvent)
        if collection:
            self._depth += 1
            if self._depth > self.max_depth:
                raise yaml.composer.ComposerError(
                    None, None, f"nested deeper than {self.max_depth} levels", self.peek_event().start_mark
                )
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= collection

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict:
        self.flatten_mapping(node)
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:
                continue  # unhashable: the base constructor reports it
            if duplicate:
                raise ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _no_duplicate_pairs(pairs: list[tuple[str, object]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise InputFileError(f"not valid JSON: duplicate key {key!r}")
        out[key] = value
    return out


def _no_constants(name: str) -> object:
    raise InputFileError(f"not valid JSON: {name} is not a number")


def parse_json(text: str, max_depth: int) -> object:
    """JSON with duplicate keys, NaN/Infinity and nesting deeper than `max_depth` refused."""
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicate_pairs, parse_constant=_no_constants)
    except json.JSONDecodeError as exc:
        raise InputFileError(f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise InputFileError(f"nested deeper than {max_depth} levels") from None
    check_depth(data, max_depth)
    return data


def parse_yaml(text: str, max_depth: int) -> object:
    """One YAML document with duplicate keys and aliases refused and nesting bounded."""
    loader_class = type("_Loader", (_StrictYamlLoader,), {"max_depth": max_depth})
    loader = None
    try:
        loader = loader_class(text)  # the reader refuses some characters already here
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        raise InputFileError(f"not valid YAML: {_yaml_reason(exc)}") from None
    finally:
        if loader is not None:
            loader.dispose()


def _yaml_reason(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        context = f"{exc.context}, " if exc.context else ""
        return f"{context}{exc.problem}{where}"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def parse_document(text: str, suffix: str, max_depth: int) -> object:
    """A storyboard document: JSON for a .json file, otherwise YAML."""
    if suffix.lower() == ".json":
        return parse_json(text, max_depth)
    return parse_yaml(text, max_depth)


def check_depth(value: object, max_depth: int) -> None:
    """Refuse containers nested deeper than `max_depth` (iterative: no recursion on hostile input)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > max_depth:
                raise InputFileError(f"nested deeper than {max_depth} levels")
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
