"""Media-root layout: every stored path is relative to the media root, so the root can move between machines."""

from __future__ import annotations

from pathlib import Path


def scene_dir(project_id: int, scene_index: int) -> str:
    return f"projects/{project_id}/scene-{scene_index:03d}"


def clip_path(project_id: int, scene_index: int) -> str:
    return f"{scene_dir(project_id, scene_index)}/clip.mp4"


def crops_dir(project_id: int, scene_index: int) -> str:
    return f"{scene_dir(project_id, scene_index)}/crops"


def upload_path(manifest_id: int, tag: str, suffix: str = ".png") -> str:
    return f"manifests/{manifest_id}/uploads/{tag}{suffix}"


def absolute(media_root: Path, relative: object) -> Path:
    """Resolve a stored relative path, refusing anything that would be opened outside the media root.

    The one helper every reader and writer of media uses (generation, analysis, registry, commands): a path
    taken from a message or from the database is untrusted. Absolute paths, `..` and symlinks that leave
    the root, NUL characters and non-strings are refused.

    Raises:
        ValueError: the path is refused (the message says why).

    """
    if not isinstance(relative, str) or not relative:
        raise ValueError(f"not a media path: {relative!r}")
    if "\x00" in relative:
        raise ValueError("media path contains a NUL character")
    if Path(relative).is_absolute():
        raise ValueError(f"media paths are relative to the media root, not absolute: {relative}")
    path = (media_root / relative).resolve()
    if not path.is_relative_to(media_root.resolve()):
        raise ValueError(f"path escapes the media root: {relative}")
    return path


def usable_file(media_root: Path, relative: object) -> bool:
    """Whether a stored path resolves inside the media root to an existing regular file."""
    try:
        return absolute(media_root, relative).is_file()
    except (ValueError, OSError):
        return False
