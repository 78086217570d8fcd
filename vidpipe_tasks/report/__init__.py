"""`vidpipe report`: one self-contained HTML page per project (frames, face boxes, references, growth)."""

from __future__ import annotations

from pathlib import Path

from vidpipe_tasks import media
from vidpipe_tasks.db.session import session_scope
from vidpipe_tasks.report.data import ProjectData, SceneData, load_project
from vidpipe_tasks.report.images import FRAME_WIDTH, data_uri, decode_frames, file_uri
from vidpipe_tasks.report.render import render_html
from vidpipe_tasks.settings import Settings

__all__ = ["ProjectData", "build_report", "load_project", "write_report"]


def _frames_of(media_root: Path):  # noqa: ANN202 - a FrameSource
    def frames(scene: SceneData) -> tuple[dict[int, str], str | None]:
        if not scene.frame_indices or not scene.clip_path:
            return {}, None
        try:
            decoded = decode_frames(media.absolute(media_root, scene.clip_path), scene.frame_indices)
        except ValueError as exc:  # a clip that was refused or cannot be read: say so, keep the page
            return {}, str(exc)
        return {i: data_uri(img, FRAME_WIDTH) for i, img in decoded.items()}, None

    return frames


def build_report(settings: Settings, project_id: int) -> str:
    """The report page of one project as HTML text.

    Raises:
        LookupError: no such project.

    """
    with session_scope(settings.database_url) as s:
        project = load_project(s, project_id)
    return render_html(project, _frames_of(settings.media_root), lambda rel: file_uri(settings.media_root, rel))


def write_report(settings: Settings, project_id: int, out: Path) -> Path:
    """Write the report page to `out` (atomically) and return the path."""
    html = build_report(settings, project_id)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(out)
    return out
