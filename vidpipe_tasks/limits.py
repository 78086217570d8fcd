"""Limits and quotas on what a submission may ask for, built from settings (plain values, no heavy imports)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vidpipe_tasks.settings import Settings


@dataclass(frozen=True)
class InputLimits:
    """What one submission may contain; each field is the setting of the same name (VIDPIPE_<NAME>).

    The defaults here are the settings' defaults (settings.py reads them from this class).
    """

    #: Bytes of any input file: a storyboard file or a whole JSONL batch.
    max_input_bytes: int = 16 * 1024 * 1024
    #: Bytes of one storyboard: a storyboard file or one JSONL line.
    max_storyboard_bytes: int = 1024 * 1024
    #: Nesting depth of a storyboard (mappings and lists); the format itself needs 5.
    max_nesting_depth: int = 20
    #: Bytes of one reference image file.
    max_reference_bytes: int = 20 * 1024 * 1024
    #: Pixels (width x height) of one reference image; checked from the header before decoding.
    max_reference_pixels: int = 40_000_000
    #: Folders outside a storyboard's own folder that its reference images may come from.
    reference_roots: tuple[Path, ...] = ()
    #: Quotas per project: scenes, seconds of video, and pixels rendered (frames x width x height).
    max_project_scenes: int = 100
    max_project_seconds: float = 600.0
    max_project_pixels: int = 15_000_000_000
    #: Quotas per submission (all its files and JSONL lines together): projects and seconds of video.
    max_batch_projects: int = 100
    max_batch_seconds: float = 7200.0

    @classmethod
    def from_settings(cls, settings: Settings) -> InputLimits:
        """The limits an installation's settings configure."""
        return cls(
            max_input_bytes=settings.max_input_bytes,
            max_storyboard_bytes=settings.max_storyboard_bytes,
            max_nesting_depth=settings.max_nesting_depth,
            max_reference_bytes=settings.max_reference_bytes,
            max_reference_pixels=settings.max_reference_pixels,
            reference_roots=parse_roots(settings.reference_roots),
            max_project_scenes=settings.max_project_scenes,
            max_project_seconds=settings.max_project_seconds,
            max_project_pixels=settings.max_project_pixels,
            max_batch_projects=settings.max_batch_projects,
            max_batch_seconds=settings.max_batch_seconds,
        )


def parse_roots(value: str) -> tuple[Path, ...]:
    """VIDPIPE_REFERENCE_ROOTS: folders separated by the OS path separator (":" on Linux), resolved."""
    return tuple(Path(p).resolve() for p in value.split(os.pathsep) if p.strip())
