"""`vidpipe generators`: each generator's configuration problems, ComfyUI queue depths, jobs in flight."""

from __future__ import annotations

from sqlalchemy import func, select

from vidpipe_tasks.settings import Settings


def generators_report(settings: Settings, probe: bool = True) -> dict:
    """What an operator needs before sending work to a remote generator.

    Args:
        settings: the installation.
        probe: ask each ComfyUI server for its queue depth (GET /queue); off, nothing leaves this host.

    """
    from vidpipe_tasks.generators import GENERATOR_NAMES, remote_adapter, validate_generator

    active = _active_jobs(settings)
    out = []
    for name in GENERATOR_NAMES:
        entry: dict = {"name": name, "default": name == settings.generator, "problem": None}
        try:
            validate_generator(settings, name)
        except ValueError as exc:
            entry["problem"] = str(exc)
        if name != "procedural":
            entry["jobs_in_flight"] = active.get(name, 0)
            entry["limits"] = {
                "max_concurrent": settings.generation_max_concurrent,
                "submits_per_minute": settings.generation_submits_per_minute,
            }
        if name == "comfyui" and settings.comfyui_servers and probe:
            # None: the server did not answer.
            entry["servers"] = remote_adapter(settings, name).depths()
        out.append(entry)
    return {"generators": out}


def _active_jobs(settings: Settings) -> dict[str, int]:
    from vidpipe_tasks.db.models import GenerationJob
    from vidpipe_tasks.db.session import session_scope
    from vidpipe_tasks.generators.remote import ACTIVE_STATES

    with session_scope(settings.database_url) as s:
        rows = s.execute(
            select(GenerationJob.provider, func.count())
            .where(GenerationJob.state.in_(ACTIVE_STATES))
            .group_by(GenerationJob.provider)
        )
        return dict(rows.all())


def render_generators(report: dict) -> str:
    lines = []
    for g in report["generators"]:
        mark = " (default)" if g["default"] else ""
        state = f"not usable: {g['problem']}" if g["problem"] else "ok"
        lines.append(f"{g['name']}{mark}: {state}")
        if "jobs_in_flight" in g:
            limits = g["limits"]
            lines.append(
                f"  jobs in flight: {g['jobs_in_flight']} (limit {limits['max_concurrent']}, "
                f"{limits['submits_per_minute']} submissions/min)"
            )
        for server, depth in (g.get("servers") or {}).items():
            lines.append(f"  {server}: " + ("unreachable" if depth is None else f"{depth} queued or running"))
    return "\n".join(lines)
