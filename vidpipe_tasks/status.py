"""Project status as data: the `vidpipe status --json` contract for scripts, and its text rendering."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from vidpipe_tasks.db.models import Project, TaskRun
from vidpipe_tasks.db.session import session_scope
from vidpipe_tasks.settings import Settings

#: Bumped when the JSON shape changes incompatibly.
STATUS_SCHEMA_VERSION = 1


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    # SQLite hands back naive datetimes; every stored time is UTC.
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()


def _task(run: TaskRun) -> dict:
    return {
        "task_id": run.task_id,
        "name": run.task_name,
        "queue": run.queue,
        "worker": run.worker,
        "started_at": _iso(run.started_at),
        "finished_at": _iso(run.finished_at),
        "outcome": run.outcome,
        "attempts": run.attempts,
        "detail": run.detail,
    }


def _scene(scene, runs: list[TaskRun]) -> dict:
    sm = scene.scene_manifest
    analysis = (sm.cv_analysis_json if sm else None) or {}
    continuity = analysis.get("continuity") or {}
    return {
        "scene_index": scene.scene_index,
        "description": scene.description,
        "characters": scene.characters,
        "location": scene.location,
        "stages": {
            "generation": scene.generation_status.value,
            "analysis": scene.analysis_status.value,
            "registry": scene.registry_status.value,
        },
        "clip_path": scene.clip.path if scene.clip else None,
        "selected_reference_tags": (sm.selected_reference_tags if sm else {}) or {},
        "selected_references": ((sm.manifest_json if sm else None) or {}).get("references", {}),
        "matched_tags": sorted({m.get("asset_tag") or m.get("tag") for m in analysis.get("matches", [])} - {None}),
        "new_asset_tags": (sm.new_asset_tags if sm else []) or [],
        "continuity_score": sm.continuity_score if sm else None,
        "continuity_components": continuity.get("components", {}),
        "continuity_missing": continuity.get("missing", []),
        "degraded_reason": sm.degraded_reason if sm else None,
        "registered_at": _iso(sm.registered_at if sm else None),
        "tasks": [_task(r) for r in runs if r.scene_index == scene.scene_index],
    }


def project_status(session: Session, project_id: int) -> dict:
    """Everything a script needs about one project (see docs/status-json.md)."""
    project = session.get(Project, project_id)
    if project is None:
        raise LookupError(f"no project {project_id}")
    runs = list(session.scalars(select(TaskRun).where(TaskRun.project_id == project_id).order_by(TaskRun.started_at)))
    return {
        "schema": STATUS_SCHEMA_VERSION,
        "project_id": project.id,
        "title": project.title,
        "status": project.status.value,
        "manifest": project.manifest_id,
        "created_at": _iso(project.created_at),
        "finished_at": _iso(project.finished_at),
        "scenes": [_scene(sc, runs) for sc in project.scenes],
        "project_tasks": [_task(r) for r in runs if r.scene_index is None],
    }


def load_status(settings: Settings, project_id: int) -> dict:
    with session_scope(settings.database_url) as s:
        return project_status(s, project_id)


def _fmt_score(value: float | None) -> str:
    return "missing" if value is None else f"{value:.2f}"


def render_text(status: dict) -> str:
    """A compact human-readable view of project_status()."""
    lines = [f"project {status['project_id']} [{status['status']}] {status['title']}"]
    for sc in status["scenes"]:
        st = sc["stages"]
        refs = ", ".join(f"{c}->{t}" for c, t in sc["selected_reference_tags"].items()) or "-"
        lines.append(
            f"  scene {sc['scene_index']}: gen={st['generation']} cv={st['analysis']} reg={st['registry']}"
            f" | refs: {refs} | matched: {', '.join(sc['matched_tags']) or '-'}"
            f" | new: {', '.join(sc['new_asset_tags']) or '-'} | continuity: {_fmt_score(sc['continuity_score'])}"
        )
        if sc["degraded_reason"]:
            lines.append(f"    degraded: {sc['degraded_reason']}")
        for t in sc["tasks"]:
            lines.append(f"    {t['name']:<26} {t['outcome']:<9} queue={t['queue']} worker={t['worker']}")
    return "\n".join(lines)
