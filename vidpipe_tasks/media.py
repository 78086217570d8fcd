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


def absolute(media_root: Path, relative: str) -> Path:
    """Resolve a stored relative path, refusing paths that escape the media root."""
    path = (media_root / relative).resolve()
    if not path.is_relative_to(media_root.resolve()):
        raise ValueError(f"path escapes the media root: {relative}")
    return path
