"""Storyboard input: the YAML/JSON project format, its validation and clear per-field errors."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

TAG_PATTERN = r"^[a-z][a-z0-9_-]{0,63}$"
Tag = Annotated[str, Field(pattern=TAG_PATTERN)]


class StoryboardError(ValueError):
    """A storyboard is invalid; `problems` lists (file, field, reason) for each fault."""

    def __init__(self, problems: list[tuple[str, str, str]]) -> None:
        self.problems = problems
        super().__init__("\n".join(f"{f}: {field}: {reason}" for f, field, reason in problems))


def check_size(value: str | None) -> str | None:
    """Validate "WIDTHxHEIGHT": even numbers (H.264 with yuv420p needs them), 64x64 to 3840x2160."""
    if value is None:
        return None
    if not re.fullmatch(r"\d{2,4}x\d{2,4}", value):
        raise ValueError("expected WIDTHxHEIGHT, e.g. 640x360")
    w, h = (int(v) for v in value.split("x"))
    if w % 2 or h % 2 or not (64 <= w <= 3840 and 64 <= h <= 2160):
        raise ValueError("width and height must be even and between 64x64 and 3840x2160")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ClipFormat(_Strict):
    """Length, frame rate and size of a clip."""

    duration_s: float = Field(4.0, gt=0, le=60)
    fps: int = Field(12, ge=1, le=60)
    size: str = "640x360"

    @field_validator("size")
    @classmethod
    def _even_size(cls, value: str) -> str:
        return check_size(value)

    @property
    def width(self) -> int:
        return int(self.size.split("x")[0])

    @property
    def height(self) -> int:
        return int(self.size.split("x")[1])


class AssetSpec(_Strict):
    """An asset in a manifest: a character with a reference image, a location or a prop."""

    type: Literal["character", "location", "prop"]
    tag: Tag
    name: str = Field(min_length=1, max_length=200)
    description: str = ""
    #: Path relative to the storyboard file, or a stock URI such as "stock:face/t1-0".
    reference_image: str | None = None


class ManifestSpec(_Strict):
    """A reusable asset library; projects naming the same manifest share its registry."""

    name: str = Field(min_length=1, max_length=200)
    assets: list[AssetSpec] = Field(default_factory=list)


class CastMember(_Strict):
    """A character with no reference yet: the generator invents it until analysis registers its face."""

    tag: Tag
    name: str = Field(min_length=1, max_length=200)
    description: str = ""


class SceneSpec(_Strict):
    """One scene; clip format fields fall back to the storyboard's defaults."""

    description: str = Field(min_length=1)
    location: Tag | None = None
    characters: list[Tag] = Field(default_factory=list, max_length=4)
    duration_s: float | None = Field(None, gt=0, le=60)
    fps: int | None = Field(None, ge=1, le=60)
    size: str | None = None

    @field_validator("size")
    @classmethod
    def _valid_size(cls, value: str | None) -> str | None:
        return check_size(value)


class Storyboard(_Strict):
    """A project: title, optional manifest, cast without references, and ordered scenes."""

    title: str = Field(min_length=1, max_length=300)
    manifest: ManifestSpec | None = None
    characters: list[CastMember] = Field(default_factory=list)
    defaults: ClipFormat = Field(default_factory=ClipFormat)
    scenes: list[SceneSpec] = Field(min_length=1, max_length=200)
    #: Clip generator for this project ("procedural", "comfyui", "veo"); unset: VIDPIPE_GENERATOR.
    generator: Literal["procedural", "comfyui", "veo"] | None = None
    #: Spend limit for remote generation, USD: the project stops before a job that would exceed it.
    budget_usd: float | None = Field(None, ge=0)
    #: Scene N's last frame becomes scene N+1's first frame (generators that take a start image).
    chain_first_frame: bool = False
    #: What the generator should avoid (sent as the negative prompt).
    negative_prompt: str = ""

    @model_validator(mode="after")
    def _tags_resolve(self) -> Storyboard:
        assets = self.manifest.assets if self.manifest else []
        _no_duplicates([a.tag for a in assets] + [c.tag for c in self.characters], "tag")
        known = {a.tag for a in assets if a.type == "character"} | {c.tag for c in self.characters}
        for i, scene in enumerate(self.scenes):
            _no_duplicates(scene.characters, f"scenes.{i}.characters")
            unknown = [t for t in scene.characters if t not in known]
            if unknown:
                raise ValueError(
                    f"scenes.{i}.characters: unknown character(s) {unknown}; declare them under "
                    "manifest.assets (type: character) or characters"
                )
        return self

    def clip_format(self, scene: SceneSpec) -> ClipFormat:
        """The effective clip format of `scene`."""
        merged = self.defaults.model_dump() | {k: v for k, v in scene.model_dump().items() if v is not None}
        return ClipFormat(**{k: merged[k] for k in ("duration_s", "fps", "size")})

    def character_name(self, tag: str) -> str:
        for asset in self.manifest.assets if self.manifest else []:
            if asset.tag == tag:
                return asset.name
        return next((c.name for c in self.characters if c.tag == tag), tag)


def _no_duplicates(values: list[str], where: str) -> None:
    seen = {v for v in values if values.count(v) > 1}
    if seen:
        raise ValueError(f"{where}: duplicate {sorted(seen)}")


def _read(path: Path) -> object:
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        return json.loads(text)
    return yaml.safe_load(text)


def _field(loc: tuple) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


def load_storyboard(path: Path) -> Storyboard:
    """Parse and validate one storyboard file, including its reference images.

    Raises:
        StoryboardError: with one (file, field, reason) per problem.

    """
    name = str(path)
    try:
        data = _read(path)
    except FileNotFoundError:
        raise StoryboardError([(name, "(file)", "no such file")]) from None
    except (yaml.YAMLError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StoryboardError([(name, "(file)", f"not valid YAML/JSON: {exc}")]) from None
    return validate_storyboard(data, name, path.parent)


def validate_storyboard(data: object, name: str, base: Path) -> Storyboard:
    """Validate already parsed storyboard data (a file's content, or one line of a JSONL batch).

    Args:
        data: the parsed YAML/JSON value.
        name: how problems name this storyboard (a path, or "batch.jsonl:3").
        base: folder that relative reference images resolve against.

    Raises:
        StoryboardError: with one (name, field, reason) per problem.

    """
    if not isinstance(data, dict):
        raise StoryboardError([(name, "(top level)", "expected a mapping with title and scenes")])
    try:
        board = Storyboard.model_validate(data)
    except ValidationError as exc:
        raise StoryboardError([(name, *_field_and_reason(e)) for e in exc.errors()]) from None
    problems = [(name, f, r) for f, r in _reference_problems(board, base)]
    if problems:
        raise StoryboardError(problems)
    return board


def _field_and_reason(error: dict) -> tuple[str, str]:
    # pydantic prefixes custom errors with "Value error, "; keep the reason itself.
    reason = re.sub(r"^Value error, ", "", error["msg"])
    # Cross-field checks run on the whole model and name their field at the start of the reason.
    named = re.match(r"^([a-z_]+(?:\.\w+)*): (.*)$", reason, re.S) if not error["loc"] else None
    if named:
        return named.group(1), named.group(2)
    return _field(error["loc"]), reason


def _reference_problems(board: Storyboard, base: Path) -> list[tuple[str, str]]:
    from vidpipe_tasks.generators import stock

    problems = []
    for i, asset in enumerate(board.manifest.assets if board.manifest else []):
        ref = asset.reference_image
        where = f"manifest.assets.{i}.reference_image"
        if ref is None:
            continue
        if stock.is_stock_uri(ref):
            try:
                stock.resolve_stock_uri(ref)
            except ValueError as exc:
                problems.append((where, str(exc)))
        elif not (base / ref).is_file():
            problems.append((where, f"file not found: {base / ref}"))
    return problems


def load_storyboards(paths: list[Path]) -> list[tuple[Path, Storyboard]]:
    """Validate every file before any is used; raise one StoryboardError listing all problems."""
    boards, problems = [], []
    for path in paths:
        try:
            boards.append((path, load_storyboard(path)))
        except StoryboardError as exc:
            problems.extend(exc.problems)
    if problems:
        raise StoryboardError(problems)
    return boards
