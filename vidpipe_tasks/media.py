"""Media-root layout: every stored path is relative to the media root, so the root can move between machines."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path


def scene_dir(project_id: int, scene_index: int) -> str:
    return f"projects/{project_id}/scene-{scene_index:03d}"


def clip_path(project_id: int, scene_index: int) -> str:
    return f"{scene_dir(project_id, scene_index)}/clip.mp4"


def final_path(project_id: int) -> str:
    """Where the chain's last link exports a completed project (VIDPIPE_EXPORT_ON_FINISH)."""
    return f"projects/{project_id}/final.mp4"


def crops_dir(project_id: int, scene_index: int) -> str:
    return f"{scene_dir(project_id, scene_index)}/crops"


def attempt_dir(project_id: int, scene_index: int, attempt: int) -> str:
    """One quality attempt of a scene (gate round or candidate): its own clip and crops, never shared."""
    return f"{scene_dir(project_id, scene_index)}/attempt-{attempt:02d}"


def attempt_clip_path(project_id: int, scene_index: int, attempt: int) -> str:
    return f"{attempt_dir(project_id, scene_index, attempt)}/clip.mp4"


def attempt_crops_dir(project_id: int, scene_index: int, attempt: int) -> str:
    return f"{attempt_dir(project_id, scene_index, attempt)}/crops"


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


def temp_prefix(target: Path) -> str:
    """Prefix of a temp file written beside `target` before its atomic rename: names the writer (host, pid).

    A SIGKILL skips `finally`, so temp files of a killed attempt stay behind; the name lets the next attempt
    tell them from the temp file of a writer that is still alive (`remove_stale_temps`).
    """
    return f".{target.name}.{socket.gethostname()}-{os.getpid()}."


def _writer_alive(name: str) -> bool | None:
    """True/False for a temp file written on this host by a live/dead pid; None when the name does not say."""
    parts = name.split(".")
    writer = next((p for p in parts if p.startswith(socket.gethostname() + "-")), None)
    if writer is None:
        return None
    try:
        pid = int(writer.rsplit("-", 1)[1])
        os.kill(pid, 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(media_root: Path, folder: str, older_than_s: float) -> list[str]:
    """Delete temp files (`.*.part`, `.*.tmp`) in `folder` left by attempts that are no longer writing.

    A temp file is stale when its writer (named in the file, see `temp_prefix`) is a dead process on this
    host, or when it has not changed for `older_than_s` seconds (a writer on another host, or an old name).

    Returns:
        The removed file names.

    """
    directory = absolute(media_root, folder)
    if not directory.is_dir():
        return []
    removed = []
    for path in directory.iterdir():
        if not path.name.startswith(".") or path.suffix not in (".part", ".tmp"):
            continue
        alive = _writer_alive(path.name)
        try:
            stale = alive is False or (alive is None and time.time() - path.stat().st_mtime > older_than_s)
            if stale:
                path.unlink()
                removed.append(path.name)
        except FileNotFoundError:
            continue  # its writer renamed or removed it meanwhile
    return removed


def usable_file(media_root: Path, relative: object) -> bool:
    """Whether a stored path resolves inside the media root to an existing regular file."""
    try:
        return absolute(media_root, relative).is_file()
    except (ValueError, OSError):
        return False
