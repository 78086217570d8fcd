"""The clip-generator protocol that every renderer or remote-service adapter implements."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class CharacterSpec:
    """One character to show in a clip.

    Attributes:
        tag: the character's tag in the storyboard (e.g. "mara").
        reference_image: absolute path of the selected reference image, or None when the
            registry has none yet (the generator then invents an appearance).

    """

    tag: str
    reference_image: Path | None = None


@dataclass(frozen=True)
class ClipRequest:
    """Everything a generator needs to render one scene; paths are absolute."""

    project_id: int
    scene_index: int
    description: str
    location: str | None
    characters: tuple[CharacterSpec, ...]
    duration_s: float
    fps: int
    width: int
    height: int
    output_path: Path
    seed: int = 0
    #: The scene's quality attempt (vidpipe_tasks.quality); a remote generator keeps one provider job per attempt.
    attempt: int = 1
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ClipInfo:
    """What a generator produced."""

    path: Path
    frame_count: int
    fps: int
    width: int
    height: int
    #: Tag -> short description of the appearance used (e.g. "reference", "invented:t1-3").
    appearances: dict[str, str] = field(default_factory=dict)


class ClipGenerator(Protocol):
    """Renders a clip for one scene; must write the file atomically (temp name, then rename)."""

    name: str

    def generate(self, request: ClipRequest) -> ClipInfo:
        """Render the clip at request.output_path and describe it."""
