"""N concurrent remote jobs against a fake provider: worker slots held while they render, overhead per job."""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from common import REPO, servers_module  # same folder
from sqlalchemy import func, select

from vidpipe_tasks.celery_app import create_app
from vidpipe_tasks.cli.workers import start_worker, stop_workers, wait_ready
from vidpipe_tasks.db.migrate import prepare_installation
from vidpipe_tasks.db.models import GenerationJob, Project, TaskRun
from vidpipe_tasks.db.session import session_scope
from vidpipe_tasks.generators.remote import ACTIVE_STATES
from vidpipe_tasks.settings import GENERATION_QUEUE, REGISTRY_QUEUE, load_settings
from vidpipe_tasks.storyboard import validate_storyboard
from vidpipe_tasks.workflow import create_project, enqueue_project

KEY = "bench-key"


def utc_seconds(value) -> float:  # noqa: ANN001 - a datetime, naive (SQLite) or aware
    return value.timestamp() if value.tzinfo else value.replace(tzinfo=__import__("datetime").UTC).timestamp()


def start_fakes(root: Path, provider: str, servers: int, job_seconds: float) -> list:
    servers_module()  # puts the repository on sys.path for tests.fakes
    from tests.fakes.servers import fake_comfyui, fake_gemini

    if provider == "veo":
        return [fake_gemini(root / "gemini", KEY, "--job-seconds", str(job_seconds))]
    return [fake_comfyui(root / f"comfy{i}", "--job-seconds", str(job_seconds)) for i in range(servers)]


def sample(settings) -> tuple[int, int]:
    """(generate_clip runs executing now, provider jobs in flight now)."""
    with session_scope(settings.database_url) as s:
        running = s.scalar(
            select(func.count()).where(TaskRun.task_name == "vidpipe.generate_clip", TaskRun.outcome == "running")
        )
        active = s.scalar(select(func.count()).where(GenerationJob.state.in_(ACTIVE_STATES)))
    return running, active


def run(args: argparse.Namespace) -> None:
    root = Path(tempfile.mkdtemp(prefix="bench-remote-"))
    fakes = start_fakes(root, args.provider, args.servers, args.job_seconds)
    base = load_settings({"VIDPIPE_HOME": str(root / "work")})
    settings = replace(
        base,
        generator=args.provider,
        comfyui_servers=",".join(f.url for f in fakes) if args.provider == "comfyui" else "",
        veo_api_key=KEY,
        veo_base_url=f"{fakes[0].url}/" if args.provider == "veo" else "",
        generation_poll_s=args.poll,
        generation_max_concurrent=args.jobs,
        generation_submits_per_minute=max(30, args.jobs),
    )
    prepare_installation(settings, migrate=True)
    board = validate_storyboard(
        {"title": "bench", "defaults": {"duration_s": 4, "fps": 8, "size": "640x360"},
         "scenes": [{"description": "a quay at dusk"}]},
        "bench", REPO,
    )  # fmt: skip
    ids = [create_project(settings, root / "bench.yaml", board) for _ in range(args.jobs)]
    worker = start_worker(settings, "gen", [GENERATION_QUEUE, REGISTRY_QUEUE], root / "logs")
    samples: list[tuple[float, int, int]] = []
    try:
        wait_ready([worker])
        app = create_app(settings)
        started = time.time()
        for project_id in ids:
            enqueue_project(app, settings, project_id)
        while True:
            running, active = sample(settings)
            samples.append((time.time(), running, active))
            with session_scope(settings.database_url) as s:
                left = s.scalar(
                    select(func.count()).where(Project.id.in_(ids), Project.status.in_(("PENDING", "RUNNING")))
                )
            if not left:
                break
            time.sleep(0.05)
        wall = time.time() - started
        done = {k: v for fake in fakes for k, v in fake.stats()["finished"].items()}
    finally:
        stop_workers([worker])
        for fake in fakes:
            fake.stop()
    report(settings, ids, samples, wall, done, args)


def report(settings, ids, samples, wall: float, done: dict[str, float], args) -> None:  # noqa: ANN001
    """Print the figures; `done` is when the provider finished each job (its own clock, same host)."""
    in_flight = [(t, r, a) for t, r, a in samples if a > 0]
    slot_seconds = sum(r * (t1 - t0) for (t0, r, _), (t1, _, _) in zip(in_flight, in_flight[1:], strict=False))
    mean_running = statistics.mean(r for _, r, _ in in_flight) if in_flight else 0.0
    mean_active = statistics.mean(a for _, _, a in in_flight) if in_flight else 0.0
    with session_scope(settings.database_url) as s:
        jobs = list(s.scalars(select(GenerationJob).where(GenerationJob.project_id.in_(ids))))
        finished = {p.id: utc_seconds(p.finished_at) for p in s.scalars(select(Project).where(Project.id.in_(ids)))}
        states = sorted({p.status.value for p in s.scalars(select(Project).where(Project.id.in_(ids)))})
    # From the provider finishing a job to the project being done: poll wait, download, storing, finalize.
    overhead = [finished[j.project_id] - done[j.job_id] for j in jobs]
    submit = [utc_seconds(j.submitted_at) - utc_seconds(j.created_at) for j in jobs]
    where = f"{args.servers} fake ComfyUI server(s)" if args.provider == "comfyui" else "the fake Gemini API"
    print(f"{args.jobs} concurrent {args.provider} jobs of {args.job_seconds:g} s on {where}; 1 generation worker "
          f"(solo pool, 1 slot), poll every {args.poll:g} s; projects ended {states}")  # fmt: skip
    print(f"  wall time, all jobs:                         {wall:8.1f} s")
    print(f"  jobs in flight (mean while any ran):         {mean_active:8.2f}")
    print(f"  worker slots held while jobs render (mean):  {mean_running:8.3f}")
    print(f"  worker slots held per in-flight job:         {mean_running / mean_active if mean_active else 0:8.3f}")
    print(f"  slot-seconds held per job:                   {slot_seconds / len(ids):8.3f} s"
          f"   (a blocking call would hold {args.job_seconds:g} s)")  # fmt: skip
    print(f"  polls per job (median):                      {statistics.median(j.polls for j in jobs):8.1f}")
    print(f"  submission (job row to provider's answer):   {statistics.median(submit) * 1000:8.1f} ms median")
    print(f"  orchestration overhead per job (median):     {statistics.median(overhead):8.2f} s"
          "   (provider done -> clip stored and project finished)")  # fmt: skip
    print(f"  orchestration overhead per job (max):        {max(overhead):8.2f} s   (bounded by the poll interval)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--job-seconds", type=float, default=8.0, help="how long the fake provider takes per job")
    parser.add_argument("--poll", type=float, default=1.0, help="VIDPIPE_GENERATION_POLL_S")
    parser.add_argument("--provider", choices=["veo", "comfyui"], default="veo")
    parser.add_argument("--servers", type=int, default=4, help="fake ComfyUI servers (each runs one job at a time)")
    run(parser.parse_args())


if __name__ == "__main__":
    main()
