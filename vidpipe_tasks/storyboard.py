"""Storyboard input: the YAML/JSON project format, its validation and clear per-field errors."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from vidpipe_tasks.limits import InputLimits
from vidpipe_tasks.safe_load import InputFileError, decode_utf8, parse_document, read_limited

TAG_PATTERN = r"^[a-z][a-z0-9_-]{0,63}$"
Tag = Annotated[str, Field(pattern=TAG_PATTERN)]

#: Longest scene or asset description, in characters (the caption shows one line of it).
MAX_DESCRIPTION_CHARS = 2000
#: Longest title, name and reference path, in characters.
MAX_TITLE_CHARS, MAX_NAME_CHARS, MAX_PATH_CHARS = 300, 200, 1024
#: Most problems reported per storyboard (a hostile file could otherwise print millions of lines).
MAX_PROBLEMS = 50


def _refuse_controls(value: str, allowed: str) -> str:
    for i, char in enumerate(value):
        category = unicodedata.category(char)
        # Cc: NUL and other control characters (PostgreSQL refuses NUL in text); Cs: lone surrogates,
        # which JSON "\ud800" escapes produce and no UTF-8 encoder accepts.
        if (category == "Cc" and char not in allowed) or category == "Cs":
            raise ValueError(f"control character U+{ord(char):04X} at position {i} is not allowed")
    return value


def _line(value: str) -> str:
    return _refuse_controls(value, "")


def _text(value: str) -> str:
    return _refuse_controls(value, "\n\t")


#: One line of text (titles, names, paths) and free text (descriptions: newlines and tabs allowed).
Line = Annotated[str, AfterValidator(_line)]
Text = Annotated[str, Field(max_length=MAX_DESCRIPTION_CHARS), AfterValidator(_text)]
Name = Annotated[Line, Field(min_length=1, max_length=MAX_NAME_CHARS)]


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
    # strict: no coercion (true is not 1, "12" is not 12); no NaN or infinity.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class ClipFormat(_Strict):
    """Length, frame rate and size of a clip."""

    duration_s: float = Field(4.0, gt=0, le=60)
    fps: int = Field(12, ge=1, le=60)
    size: str = Field("640x360", max_length=16)

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
    name: Name
    description: Text = ""
    #: Path relative to the storyboard file, or a stock URI such as "stock:face/t1-0".
    reference_image: Annotated[Line, Field(min_length=1, max_length=MAX_PATH_CHARS)] | None = None


class ManifestSpec(_Strict):
    """A reusable asset library; projects naming the same manifest share its registry."""

    name: Name
    assets: list[AssetSpec] = Field(default_factory=list, max_length=200)


class CastMember(_Strict):
    """A character with no reference yet: the generator invents it until analysis registers its face."""

    tag: Tag
    name: Name
    description: Text = ""


class SceneSpec(_Strict):
    """One scene; clip format fields fall back to the storyboard's defaults."""

    description: Annotated[Text, Field(min_length=1)]
    location: Tag | None = None
    characters: list[Tag] = Field(default_factory=list, max_length=4)
    duration_s: float | None = Field(None, gt=0, le=60)
    fps: int | None = Field(None, ge=1, le=60)
    size: str | None = Field(None, max_length=16)

    @field_validator("size")
    @classmethod
    def _valid_size(cls, value: str | None) -> str | None:
        return check_size(value)


class QualitySpec(_Strict):
    """The project's quality gate and candidates (docs/quality.md); an unset field takes VIDPIPE_QUALITY_*."""

    #: Minimum identity and adherence of the kept attempt; below either, the scene is generated again.
    min_identity: float | None = Field(None, ge=0, le=1)
    min_adherence: float | None = Field(None, ge=0, le=1)
    #: Generation rounds per scene at most (each with a new seed per candidate).
    max_attempts: int | None = Field(None, ge=1, le=5)
    #: Candidates generated and analysed in parallel per round; the best by the documented score is kept.
    candidates: int | None = Field(None, ge=1, le=4)


class Storyboard(_Strict):
    """A project: title, optional manifest, cast without references, and ordered scenes."""

    title: Annotated[Line, Field(min_length=1, max_length=MAX_TITLE_CHARS)]
    manifest: ManifestSpec | None = None
    characters: list[CastMember] = Field(default_factory=list, max_length=200)
    defaults: ClipFormat = Field(default_factory=ClipFormat)
    #: A hard ceiling; the per-project quota (VIDPIPE_MAX_PROJECT_SCENES) is usually lower.
    scenes: list[SceneSpec] = Field(min_length=1, max_length=1000)
    #: Clip generator for this project ("procedural", "comfyui", "veo"); unset: VIDPIPE_GENERATOR.
    generator: Literal["procedural", "comfyui", "veo"] | None = None
    #: Spend limit for remote generation, USD: the project stops before a job that would exceed it.
    budget_usd: float | None = Field(None, ge=0)
    #: Scene N's last frame becomes scene N+1's first frame (generators that take a start image).
    chain_first_frame: bool = False
    #: What the generator should avoid (sent as the negative prompt).
    negative_prompt: str = ""
    #: Quality gate and candidates for this project (overrides VIDPIPE_QUALITY_*).
    quality: QualitySpec | None = None

    @model_validator(mode="after")
    def _quality_needs_analysis(self) -> Storyboard:
        if self.quality is not None and self.manifest is None:
            raise ValueError(
                "quality: the gate and candidates judge each clip's analysis, which needs a manifest "
                "(add one, or remove the quality block)"
            )
        return self

    @model_validator(mode="after")
    def _tags_resolve(self) -> Storyboard:
        assets = self.manifest.assets if self.manifest else []
        problems = tag_problems(
            [(a.tag, a.type) for a in assets], [c.tag for c in self.characters], [s.characters for s in self.scenes]
        )
        if problems:
            # One "field: reason" per line; _fields_and_reasons splits them into separate problems.
            raise ValueError("\n".join(f"{field}: {reason}" for field, reason in problems))
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


def _duplicates(values: list[str], where: str) -> list[tuple[str, str]]:
    seen = {v for v in values if values.count(v) > 1}
    return [(where, f"duplicate {sorted(seen)}")] if seen else []


def tag_problems(
    assets: list[tuple[str, str]], cast: list[str], scene_characters: list[list[str]]
) -> list[tuple[str, str]]:
    """Duplicate tags, and scene characters declared nowhere, as (field, reason) with scenes counted from 1.

    Args:
        assets: (tag, type) of each manifest asset.
        cast: tags of the characters declared without a reference.
        scene_characters: the character tags of each scene, in order.

    """
    problems = _duplicates([tag for tag, _ in assets] + cast, "tag")
    known = {tag for tag, kind in assets if kind == "character"} | set(cast)
    for number, tags in enumerate(scene_characters, start=1):
        problems += _duplicates(tags, f"scene {number}.characters")
        unknown = [t for t in tags if t not in known]
        if unknown:
            problems.append(
                (
                    f"scene {number}.characters",
                    f"unknown character(s) {unknown}; declare them under manifest.assets (type: character) or "
                    "characters",
                )
            )
    return problems


def _raw_tag_problems(data: dict) -> list[tuple[str, str]]:
    """tag_problems on data that failed field validation, so one run reports those too (shapes permitting)."""

    def items(value: object) -> list[dict]:
        return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []

    def tags(value: object) -> list[str]:
        return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []

    manifest = data.get("manifest") if isinstance(data.get("manifest"), dict) else {}
    assets = [(a["tag"], a.get("type")) for a in items(manifest.get("assets")) if isinstance(a.get("tag"), str)]
    cast = [c["tag"] for c in items(data.get("characters")) if isinstance(c.get("tag"), str)]
    scenes = [tags(sc.get("characters")) for sc in items(data.get("scenes"))]
    return tag_problems(assets, cast, scenes)


def field_path(loc: tuple) -> str:
    """A field as people count: ("scenes", 0, "fps") is "scene 1.fps", ("manifest", "assets", 2) "manifest.asset 3"."""
    parts: list[str] = []
    for part in loc:
        if isinstance(part, int) and parts:
            parts[-1] = f"{parts[-1].removesuffix('s')} {part + 1}"
        else:
            parts.append(str(part))
    return ".".join(parts) or "(top level)"


def printable(text: str, limit: int = 300) -> str:
    """`text` safe for one line of a terminal: control characters escaped, long text cut."""
    out = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text[:limit])
    return out + ("..." if len(text) > limit else "")


def read_storyboard_data(path: Path, limits: InputLimits) -> object:
    """Read and parse one storyboard file (size-limited, strict YAML/JSON).

    Raises:
        StoryboardError: with one (file, "(file)", reason) problem.

    """
    name = str(path)
    try:
        data = read_limited(path, min(limits.max_input_bytes, limits.max_storyboard_bytes), _size_setting(limits))
        return parse_document(decode_utf8(data), path.suffix, limits.max_nesting_depth)
    except FileNotFoundError:
        raise StoryboardError([(name, "(file)", "no such file")]) from None
    except InputFileError as exc:
        raise StoryboardError([(name, "(file)", printable(str(exc)))]) from None


def _size_setting(limits: InputLimits) -> str:
    if limits.max_storyboard_bytes <= limits.max_input_bytes:
        return "VIDPIPE_MAX_STORYBOARD_BYTES"
    return "VIDPIPE_MAX_INPUT_BYTES"


def load_storyboard(path: Path, limits: InputLimits | None = None) -> Storyboard:
    """Parse and validate one storyboard file, including its reference images.

    Raises:
        StoryboardError: with one (file, field, reason) per problem.

    """
    limits = limits or InputLimits()
    return validate_storyboard(read_storyboard_data(path, limits), str(path), path.parent, limits)


def validate_storyboard(data: object, name: str, base: Path, limits: InputLimits | None = None) -> Storyboard:
    """Validate already parsed storyboard data (a file's content, or one line of a JSONL batch).

    Args:
        data: the parsed YAML/JSON value.
        name: how problems name this storyboard (a path, or "batch.jsonl:3").
        base: folder that relative reference images resolve against.
        limits: size limits and quotas (default: the settings' defaults).

    Raises:
        StoryboardError: with one (name, field, reason) per problem.

    """
    limits = limits or InputLimits()
    if not isinstance(data, dict):
        raise StoryboardError([(name, "(top level)", "expected a mapping with title and scenes")])
    try:
        board = Storyboard.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        problems = [(name, *fr) for e in errors for fr in _fields_and_reasons(e)]
        if all(e["loc"] for e in errors):  # the cross-field check did not run: report its findings too
            reported = {field for _, field, _ in problems}
            problems += [(name, f, r) for f, r in _raw_tag_problems(data) if f not in reported]
        raise StoryboardError(_capped(problems)) from None
    problems = [(name, f, r) for f, r in quota_problems(board, limits) + _reference_problems(board, base, limits)]
    if problems:
        raise StoryboardError(problems)
    return board


def _capped(problems: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    if len(problems) <= MAX_PROBLEMS:
        return problems
    name = problems[0][0]
    return [*problems[:MAX_PROBLEMS], (name, "(more)", f"{len(problems) - MAX_PROBLEMS} more problem(s) not shown")]


def _fields_and_reasons(error: dict) -> list[tuple[str, str]]:
    # pydantic prefixes custom errors with "Value error, "; keep the reason itself.
    reason = re.sub(r"^Value error, ", "", error["msg"])
    if error["loc"]:
        return [(printable(field_path(error["loc"]), 120), printable(reason))]
    # Cross-field checks run on the whole model and name their field at the start of each line.
    found = []
    for line in reason.splitlines():
        named = re.match(r"^([a-z_]+(?: \d+)?(?:\.\w+(?: \d+)?)*): (.*)$", line)
        found.append((named.group(1), printable(named.group(2))) if named else ("(top level)", printable(line)))
    return found


def project_totals(board: Storyboard) -> tuple[float, int]:
    """(seconds of video, pixels rendered) of a storyboard: what its quotas measure."""
    seconds, pixels = 0.0, 0
    for scene in board.scenes:
        fmt = board.clip_format(scene)
        seconds += fmt.duration_s
        pixels += round(fmt.duration_s * fmt.fps) * fmt.width * fmt.height
    return seconds, pixels


def quota_problems(board: Storyboard, limits: InputLimits) -> list[tuple[str, str]]:
    """The per-project quotas this storyboard exceeds, as (field, reason)."""
    problems = []
    if len(board.scenes) > limits.max_project_scenes:
        problems.append(
            (
                "scenes",
                f"{len(board.scenes)} scenes is more than the quota of {limits.max_project_scenes} per project "
                "(VIDPIPE_MAX_PROJECT_SCENES)",
            )
        )
    seconds, pixels = project_totals(board)
    if seconds > limits.max_project_seconds:
        problems.append(
            (
                "scenes",
                f"{seconds:g} s of video in all is more than the quota of {limits.max_project_seconds:g} s per "
                "project (VIDPIPE_MAX_PROJECT_SECONDS)",
            )
        )
    if pixels > limits.max_project_pixels:
        problems.append(
            (
                "scenes",
                f"{pixels:,} pixels to render (frames x width x height) is more than the quota of "
                f"{limits.max_project_pixels:,} per project (VIDPIPE_MAX_PROJECT_PIXELS)",
            )
        )
    return problems


def _reference_problems(board: Storyboard, base: Path, limits: InputLimits) -> list[tuple[str, str]]:
    from vidpipe_tasks.generators import stock
    from vidpipe_tasks.references import reference_problem

    problems = []
    for i, asset in enumerate(board.manifest.assets if board.manifest else []):
        ref = asset.reference_image
        where = f"manifest.asset {i + 1}.reference_image"
        if ref is None:
            continue
        if stock.is_stock_uri(ref):
            try:
                stock.resolve_stock_uri(ref)
            except ValueError as exc:
                problems.append((where, str(exc)))
            continue
        reason = reference_problem(base, ref, limits)
        if reason is not None:
            problems.append((where, printable(reason)))
    return problems


def load_storyboards(paths: list[Path], limits: InputLimits | None = None) -> list[tuple[Path, Storyboard]]:
    """Validate every file before any is used; raise one StoryboardError listing all problems."""
    boards, problems = [], []
    for path in paths:
        try:
            boards.append((path, load_storyboard(path, limits)))
        except StoryboardError as exc:
            problems.extend(exc.problems)
    if problems:
        raise StoryboardError(problems)
    return boards
