"""What the fakes "generate": a real MP4 from vidpipe's procedural renderer, with the faces they were sent."""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from vidpipe_tasks.generators.base import CharacterSpec, ClipRequest
from vidpipe_tasks.generators.procedural import ProceduralGenerator

_CHARACTERS = re.compile(r"Characters: (.*?)\.(?:\s|$)")
_ENTRY = re.compile(r"^([a-z][a-z0-9_-]*) \((?:reference (\d+) of \d+|no reference)\)$")
_LOCATION = re.compile(r"Location: ([a-z][a-z0-9_-]*)\.")


@dataclass(frozen=True)
class Cast:
    """Who the prompt names, and which sent image (1-based) shows each one (None: invent them)."""

    description: str
    location: str | None
    characters: list[tuple[str, int | None]]


def read_prompt(prompt: str) -> Cast:
    """Parse vidpipe's prompt convention (vidpipe_tasks.generators.prompting.scene_prompt).

    A real model reads the same text as free prose; the fake needs only who is in the scene.
    """
    cast = []
    match = _CHARACTERS.search(prompt)
    for entry in match.group(1).split(", ") if match else []:
        m = _ENTRY.match(entry.strip())
        if m:
            cast.append((m.group(1), int(m.group(2)) if m.group(2) else None))
    location = _LOCATION.search(prompt)
    description = prompt.split(" Location:")[0].split(" Characters:")[0]
    return Cast(description, location.group(1) if location else None, cast)


def render_clip(
    out: Path,
    cast: Cast,
    references: list[Image.Image],
    *,
    width: int,
    height: int,
    fps: int,
    frames: int,
    seed: int,
    scene_key: int,
) -> Path:
    """Render the clip: referenced characters wear the image they were sent, the others are invented."""
    with tempfile.TemporaryDirectory(prefix="fake-render-") as tmp:
        specs = []
        for tag, k in cast.characters:
            path = None
            if k is not None and 0 < k <= len(references):
                path = Path(tmp) / f"{tag}.png"
                references[k - 1].convert("RGB").save(path)
            specs.append(CharacterSpec(tag, path))
        request = ClipRequest(
            project_id=seed,
            scene_index=scene_key,
            description=cast.description,
            location=cast.location,
            characters=tuple(specs),
            duration_s=frames / fps,
            fps=fps,
            width=width - width % 2,
            height=height - height % 2,
            output_path=out,
            seed=seed,
        )
        ProceduralGenerator().generate(request)
    return out
