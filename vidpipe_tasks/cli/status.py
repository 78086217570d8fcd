"""Project status as data: the `vidpipe status --json` contract for scripts (one project or a table), and its text."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from vidpipe_tasks.cli.common import existing_installation
from vidpipe_tasks.db.models import GenerationJob, Project, Scene, SceneAttempt, SceneManifest, TaskRun
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
        "retries": run.retries or 0,
        "polls": run.polls or 0,
        "crashes": run.crashes or 0,
        "detail": run.detail,
    }


def _engines(engine: dict | None) -> dict | None:
    """Which CV models analysed the scene and why they were chosen (None before analysis)."""
    if not engine or not engine.get("face"):
        return None
    keys = ("face", "choice", "embedder", "embedder_choice")
    return {k: engine.get(k) for k in keys}


def _job(job: GenerationJob) -> dict:
    """A provider job of a remote generator (docs/generators.md)."""
    return {
        "attempt": job.attempt,
        "scene_attempt": job.scene_attempt,
        "provider": job.provider,
        "model": job.model,
        "server": job.server,
        "job_id": job.job_id,
        "state": job.state,
        "progress": job.progress or {},
        "generated_seconds": job.generated_seconds,
        "cost_estimate_usd": job.cost_estimate,
        "resubmissions": job.resubmissions,
        "polls": job.polls,
        "error": None
        if job.error_reason is None
        else {"class": job.error_class, "reason": job.error_reason, "message": job.error_message},
        "submitted_at": _iso(job.submitted_at),
        "finished_at": _iso(job.finished_at),
    }


def _candidates(analysis: dict, key: str) -> list[dict]:
    return [c for c in analysis.get("candidates", []) if c.get(key)]


def _rematches(analysis: dict) -> list[dict]:
    """New-face candidates the registry matched at commit time to an asset committed after the analysis began."""
    return [
        {
            "candidate": c["key"],
            "asset_id": c.get("rematched_asset_id"),
            "asset_tag": c["rematched_to"],
            "similarity": c.get("rematch_similarity"),
        }
        for c in _candidates(analysis, "rematched_to")
    ]


def _attempt(row: SceneAttempt) -> dict:
    """One quality attempt of a scene (docs/quality.md): its seed, clip, scores, whether it was kept, its cost."""
    summary = row.summary or {}
    continuity = summary.get("continuity") or {}
    return {
        "attempt": row.attempt,
        "round": row.round,
        "seed": row.seed,
        "state": row.state,
        "clip_path": row.clip_path,
        "identity": row.identity,
        "adherence": row.adherence,
        "score": row.score,
        "passed_gate": row.passed_gate,
        "kept": bool(row.kept),
        "cost_usd": round(row.cost or 0.0, 4),
        "error": row.error,
        "analysis": None
        if not summary
        else {
            "status": summary.get("status"),
            "reason": summary.get("reason"),
            "continuity_score": continuity.get("score"),
            "matched_tags": sorted({m.get("tag") for m in summary.get("matches", [])} - {None}),
            "new_faces": len(summary.get("candidates", [])),
        },
        "generated_at": _iso(row.generated_at),
        "analysed_at": _iso(row.analysed_at),
    }


def _spend(jobs: list[GenerationJob]) -> float:
    return round(sum(j.cost_estimate for j in jobs if j.state != "not_submitted"), 4)


def _scene(scene, runs: list[TaskRun], jobs: list[GenerationJob] = (), attempts: list[SceneAttempt] = ()) -> dict:
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
        "rematches": _rematches(analysis),
        "rejected": [
            {"candidate": c["key"], "rejected_as": c["rejected_as"]} for c in _candidates(analysis, "rejected_as")
        ],
        "bindings": (sm.bindings if sm else None) or [],
        "continuity_score": sm.continuity_score if sm else None,
        "continuity_components": continuity.get("components", {}),
        "continuity_missing": continuity.get("missing", []),
        "degraded_reason": sm.degraded_reason if sm else None,
        "failure_reason": scene.failure_reason,
        "engines": _engines(analysis.get("engine")),
        "registered_at": _iso(sm.registered_at if sm else None),
        "tasks": [_task(r) for r in runs if r.scene_index == scene.scene_index],
        "generation_jobs": [_job(j) for j in jobs if j.scene_index == scene.scene_index],
        "attempts": [_attempt(a) for a in attempts if a.scene_index == scene.scene_index],
    }


def project_status(session: Session, project_id: int, settings: Settings | None = None) -> dict:
    """Everything a script needs about one project (see docs/status-json.md).

    `settings` supply the quality defaults (VIDPIPE_QUALITY_*) a storyboard's `quality:` block leaves unset.
    """
    from vidpipe_tasks.quality import QualityPolicy, quality_for

    project = session.get(Project, project_id)
    if project is None:
        raise LookupError(f"no project {project_id}")
    runs = list(session.scalars(select(TaskRun).where(TaskRun.project_id == project_id).order_by(TaskRun.started_at)))
    jobs = list(
        session.scalars(
            select(GenerationJob)
            .where(GenerationJob.project_id == project_id)
            .order_by(GenerationJob.scene_index, GenerationJob.scene_attempt, GenerationJob.attempt)
        )
    )
    attempts = list(
        session.scalars(
            select(SceneAttempt)
            .where(SceneAttempt.project_id == project_id)
            .order_by(SceneAttempt.scene_index, SceneAttempt.attempt)
        )
    )
    board = project.storyboard_json or {}
    quality = quality_for(settings, board) if settings is not None else QualityPolicy()
    return {
        "schema": STATUS_SCHEMA_VERSION,
        "project_id": project.id,
        "title": project.title,
        "status": project.status.value,
        "manifest": project.manifest_id,
        "created_at": _iso(project.created_at),
        "finished_at": _iso(project.finished_at),
        "recovery": _recovery(project),
        "generator": board.get("generator"),
        "budget_usd": board.get("budget_usd"),
        "spend_usd": _spend(jobs),
        "face_consistency": _face_consistency(project),
        "quality": quality.as_dict(),
        "scenes": [_scene(sc, runs, jobs, attempts) for sc in project.scenes],
        "project_tasks": [_task(r) for r in runs if r.scene_index is None],
    }


def _face_consistency(project: Project) -> dict | None:
    """The cross-scene face consistency recorded at finalize (vidpipe_tasks.consistency); None before it."""
    detail = project.face_consistency_detail
    if detail is None:
        return None
    return {"score": project.face_consistency, "characters": detail.get("characters", {})}


def _recovery(project: Project) -> dict:
    """How often the recovery sweep resumed the project's chain, and why it last did."""
    return {
        "recoveries": project.recoveries or 0,
        "reason": project.recovery_reason,
        "chain_epoch": project.chain_epoch or 0,
        "lease_until": _iso(project.lease_until),
    }


def load_status(settings: Settings, project_id: int) -> dict:
    with session_scope(settings.database_url) as s:
        return project_status(s, project_id, settings)


def _fmt_score(value: float | None) -> str:
    return "missing" if value is None else f"{value:.2f}"


def render_text(status: dict) -> str:
    """A compact human-readable view of project_status()."""
    lines = [f"project {status['project_id']} [{status['status']}] {status['title']}"]
    recovery = status.get("recovery") or {}
    if recovery.get("recoveries"):
        lines.append(f"  recovered automatically {recovery['recoveries']} time(s); last: {recovery['reason']}")
    if status.get("spend_usd") or status.get("budget_usd") is not None:
        budget = status.get("budget_usd")
        lines.append(f"  spend: ${status['spend_usd']:.2f}" + (f" of ${budget:.2f}" if budget is not None else ""))
    faces = status.get("face_consistency")
    if faces is not None:
        per = ", ".join(
            f"{tag} {c['score']:.2f} over scenes {','.join(map(str, c['scenes']))}"
            for tag, c in faces["characters"].items()
        )
        lines.append(f"  face consistency: {_fmt_score(faces['score'])}" + (f" ({per})" if per else ""))
    for sc in status["scenes"]:
        st = sc["stages"]
        refs = ", ".join(f"{c}->{t}" for c, t in sc["selected_reference_tags"].items()) or "-"
        lines.append(
            f"  scene {sc['scene_index']}: gen={st['generation']} cv={st['analysis']} reg={st['registry']}"
            f" | refs: {refs} | matched: {', '.join(sc['matched_tags']) or '-'}"
            f" | new: {', '.join(sc['new_asset_tags']) or '-'} | continuity: {_fmt_score(sc['continuity_score'])}"
        )
        for b in sc.get("bindings", []):
            lines.append(f"    bound: {b['asset_tag']} -> {b['character']} ({b['rule']})")
        for r in sc.get("rematches", []):
            lines.append(f"    re-matched at commit: candidate {r['candidate']} -> {r['asset_tag']}")
        if sc["degraded_reason"]:
            lines.append(f"    degraded: {sc['degraded_reason']}")
        if sc.get("failure_reason"):
            lines.append(f"    failed: {sc['failure_reason']}")
        for j in sc.get("generation_jobs", []):
            error = f" {j['error']['reason']}: {j['error']['message']}" if j["error"] else ""
            lines.append(
                f"    {j['provider']} job {j['job_id']} [{j['state']}] ${j['cost_estimate_usd']:.2f}"
                f" resubmitted={j['resubmissions']}{error}"
            )
        for a in sc.get("attempts", []):
            lines.append(
                f"    attempt {a['attempt']} (round {a['round']}, seed {a['seed']}) [{a['state']}]"
                f" identity={_fmt_score(a['identity'])} adherence={_fmt_score(a['adherence'])}"
                f" score={_fmt_score(a['score'])} ${a['cost_usd']:.2f}"
                + (" KEPT" if a["kept"] else "")
                + (f" error: {a['error']}" if a["error"] else "")
            )
        for t in sc["tasks"]:
            extra = "".join(f" {k}={t[k]}" for k in ("retries", "polls", "crashes") if t.get(k))
            lines.append(f"    {t['name']:<26} {t['outcome']:<9} queue={t['queue']} worker={t['worker']}{extra}")
    return "\n".join(lines)


#: Stage statuses that let a scene move on.
_STAGE_FINISHED = {"DONE", "SKIPPED", "DEGRADED"}
STAGES = ("generation", "analysis", "registry")


def current_stage(stages_by_scene: list[tuple[int, dict[str, str]]]) -> dict | None:
    """The first stage not yet through, of the first scene not yet through: where the project is now.

    Args:
        stages_by_scene: (scene_index, {"generation": ..., "analysis": ..., "registry": ...}) in scene order.

    """
    for index, stages in stages_by_scene:
        for stage in STAGES:
            if stages[stage] not in _STAGE_FINISHED:
                return {"scene_index": index, "stage": stage, "status": stages[stage]}
    return None


def _summary(project: Project, scenes: list[tuple[Scene, float | None]], now: datetime, spend: float = 0.0) -> dict:
    stages = [(sc.scene_index, {st: getattr(sc, f"{st}_status").value for st in STAGES}) for sc, _ in scenes]
    scores = [score for _, score in scenes if score is not None]
    created = project.created_at if project.created_at.tzinfo else project.created_at.replace(tzinfo=UTC)
    ended = project.status.value in ("COMPLETED", "FAILED", "CANCELLED")
    return {
        "project_id": project.id,
        "title": project.title,
        "status": project.status.value,
        "scenes_total": len(scenes),
        "scenes_done": sum(1 for _, st in stages if st["registry"] in ("DONE", "SKIPPED")),
        "current_stage": None if ended else current_stage(stages),
        "continuity_mean": sum(scores) / len(scores) if scores else None,
        "face_consistency": project.face_consistency,
        "spend_usd": round(spend, 4),
        "created_at": _iso(project.created_at),
        "finished_at": _iso(project.finished_at),
        "age_s": round((now - created).total_seconds(), 1),
        "recoveries": project.recoveries or 0,
        "recovery_reason": project.recovery_reason,
    }


def project_summaries(session: Session, ids: list[int] | None = None, last: int | None = None) -> list[dict]:
    """One summary row per project (see docs/status-json.md), in id order.

    Args:
        session: an open session.
        ids: only these projects (every one must exist); None for all.
        last: only the `last` most recent of them.

    Raises:
        LookupError: naming the ids that do not exist.

    """
    stmt = select(Project)
    if ids:
        stmt = stmt.where(Project.id.in_(ids))
    if last is not None:
        stmt = stmt.order_by(Project.id.desc()).limit(last)
    projects = sorted(session.scalars(stmt), key=lambda p: p.id)
    missing = sorted(set(ids or []) - {p.id for p in projects})
    if missing:
        raise LookupError("no project " + ", ".join(str(i) for i in missing))
    scenes: dict[int, list[tuple[Scene, float | None]]] = {p.id: [] for p in projects}
    if projects:
        # One query for every scene and its score, not one per project: the table may list thousands.
        rows = session.execute(
            select(Scene, SceneManifest.continuity_score)
            .outerjoin(SceneManifest, SceneManifest.scene_id == Scene.id)
            .where(Scene.project_id.in_(scenes))
            .order_by(Scene.project_id, Scene.scene_index)
        )
        for scene, score in rows:
            scenes[scene.project_id].append((scene, score))
    spend = _spends(session, list(scenes))
    now = datetime.now(UTC)
    return [_summary(p, scenes[p.id], now, spend.get(p.id, 0.0)) for p in projects]


def _spends(session: Session, ids: list[int]) -> dict[int, float]:
    """Estimated spend per project on provider jobs, in one query."""
    if not ids:
        return {}
    rows = session.execute(
        select(GenerationJob.project_id, func.sum(GenerationJob.cost_estimate))
        .where(GenerationJob.project_id.in_(ids), GenerationJob.state != "not_submitted")
        .group_by(GenerationJob.project_id)
    )
    return {project_id: float(total or 0.0) for project_id, total in rows}


def load_summaries(settings: Settings, ids: list[int] | None = None, last: int | None = None) -> dict:
    """`vidpipe status --json` without a single project: {"schema": ..., "projects": [summary, ...]}."""
    with session_scope(settings.database_url) as s:
        return {"schema": STATUS_SCHEMA_VERSION, "projects": project_summaries(s, ids, last)}


def format_age(seconds: float) -> str:
    """A short age: 42s, 12m, 5h, 3d."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(max(seconds, 0))}s"


def shorten(text: str, width: int) -> str:
    """`text` cut to `width` characters, the cut shown with an ellipsis."""
    return text if len(text) <= width else text[: width - 1] + "…"


def _stage_text(stage: dict | None) -> str:
    if stage is None:
        return "-"
    return f"scene {stage['scene_index']} {stage['stage']} {stage['status'].lower()}"


def render_table(summaries: list[dict], title_width: int = 32) -> str:
    """The project table of `vidpipe status` (no project, several, or --last N)."""
    header = ("ID", "TITLE", "STATUS", "SCENES", "STAGE", "CONTINUITY", "FACES", "SPEND", "AGE")
    rows = [
        (
            str(p["project_id"]),
            shorten(p["title"], title_width),
            p["status"],
            f"{p['scenes_done']}/{p['scenes_total']}",
            _stage_text(p["current_stage"]),
            "-" if p["continuity_mean"] is None else f"{p['continuity_mean']:.2f}",
            "-" if p.get("face_consistency") is None else f"{p['face_consistency']:.2f}",
            f"${p.get('spend_usd', 0.0):.2f}",
            format_age(p["age_s"]),
        )
        for p in summaries
    ]
    if not rows:
        return "no projects"
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    right = {0, 3, 5, 6, 7, 8}  # numbers line up on the right
    return "\n".join(
        "  ".join(
            cell.rjust(w) if i in right else cell.ljust(w) for i, (cell, w) in enumerate(zip(r, widths, strict=True))
        ).rstrip()
        for r in [header, *rows]
    )


def cmd_status(args: argparse.Namespace) -> int:
    settings = existing_installation(args)

    if args.last is not None and args.last < 1:
        print("vidpipe status: --last needs a positive number", file=sys.stderr)
        return 2
    try:
        if len(args.projects) == 1 and args.last is None:
            status = load_status(settings, args.projects[0])
            print(json.dumps(status, indent=2) if args.json else render_text(status))
        else:
            table = load_summaries(settings, args.projects or None, args.last)
            print(json.dumps(table, indent=2) if args.json else render_table(table["projects"]))
    except LookupError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    status = sub.add_parser("status", help="a table of projects, or one project's scenes, tasks and scores")
    status.add_argument("projects", type=int, nargs="*", metavar="PROJECT", help="one: detailed view; none: all")
    status.add_argument("--last", type=int, metavar="N", help="only the N most recent projects (a table)")
    status.add_argument("--json", action="store_true", help="machine-readable (docs/status-json.md)")
    status.set_defaults(func=cmd_status)
