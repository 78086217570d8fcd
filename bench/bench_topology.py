"""Topology with real workers: orchestration overhead on Redis vs the embedded broker, and CV-process scaling."""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from common import Stack, new_projects, overhead_run, servers_module, wait_projects  # same folder
from sqlalchemy import select

from vidpipe_tasks.celery_app import create_app
from vidpipe_tasks.cli.workers import WorkerProcess, start_cv_launcher, start_worker, stop_workers, wait_ready
from vidpipe_tasks.db.models import SceneManifest, TaskRun
from vidpipe_tasks.db.session import session_scope
from vidpipe_tasks.settings import CV_QUEUE, GENERATION_QUEUE, REGISTRY_QUEUE
from vidpipe_tasks.workflow import enqueue_project

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Throughput:
    cv_processes: int
    wall_s: float
    scenes: int
    projects: int
    analysis_ms: float  # median analyze_clip run time: shows CPU contention as processes are added
    cv_busy: float  # share of the CV processes' time spent analysing
    engine: str  # face engine the analyses used (settings say "auto": whatever is staged)

    @property
    def scenes_per_s(self) -> float:
        return self.scenes / self.wall_s

    @property
    def projects_per_min(self) -> float:
        return self.projects * 60 / self.wall_s


def throughput_run(stack: Stack, projects: int, scenes: int, cv_processes: int, gen_workers: int) -> Throughput:
    """`projects` concurrent projects on `gen_workers` gen+registry workers and `cv_processes` CV processes."""
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        settings = stack.settings(home)
        ids = new_projects(settings, home, projects, scenes)
        logs = home / "logs"
        launcher = start_cv_launcher(settings, logs, processes=cv_processes)
        workers = [
            start_worker(settings, f"gen{i}", [GENERATION_QUEUE, REGISTRY_QUEUE], logs) for i in range(gen_workers)
        ]
        workers.append(launcher)
        # The launcher's handle waits for its first child; every child must have its engine loaded first.
        children = [
            WorkerProcess(f"cv-cpu{i}", [CV_QUEUE], launcher.process, logs / f"cv-cpu{i}.log")
            for i in range(1, cv_processes)
        ]
        try:
            wait_ready(workers + children, timeout=180)
            app = create_app(settings)
            started = datetime.now(UTC)
            for project in ids:
                enqueue_project(app, settings, project)
            wait_projects(settings, ids, workers)
        finally:
            stop_workers(workers)
        with session_scope(settings.database_url) as s:
            runs = list(s.scalars(select(TaskRun)))
            engines = {sm.cv_analysis_json["engine"]["face"] for sm in s.scalars(select(SceneManifest))}
    finished = max(r.finished_at for r in runs)
    wall = (finished - started).total_seconds()
    analyses = [(r.finished_at - r.started_at).total_seconds() for r in runs if r.task_name == "vidpipe.analyze_clip"]
    return Throughput(
        cv_processes=cv_processes,
        wall_s=wall,
        scenes=projects * scenes,
        projects=projects,
        analysis_ms=statistics.median(analyses) * 1000,
        cv_busy=sum(analyses) / (wall * cv_processes),
        engine=",".join(sorted(engines)),
    )


def print_overhead(results: dict[str, dict[str, list[float]]], scenes: int) -> None:
    print(f"(a) orchestration overhead per scene: 1 project of {scenes} scenes, 1 gen+registry worker, 1 cv worker")
    keys = list(next(iter(results.values())))
    labels = list(results)
    print(f"  {'median (ms)':<24}" + "".join(f"{label:>22}" for label in labels) + f"{'ratio':>10}")
    for key in keys:
        medians = [statistics.median(results[label][key]) for label in labels]
        ratio = medians[0] / medians[1] if medians[1] else float("nan")
        print(f"  {key:<24}" + "".join(f"{m:>22.1f}" for m in medians) + f"{ratio:>9.2f}x")
    print(f"  (ratio = {labels[0]} / {labels[1]}; n = {len(results[labels[0]][keys[0]])} scene transitions each)")


def print_throughput(results: list[list[Throughput]], gen_workers: int) -> None:
    """One line per CV count: the median run by wall time, with the range over repeats."""
    medians = [sorted(runs, key=lambda r: r.wall_s)[len(runs) // 2] for runs in results]
    first = medians[0]
    print(
        f"(b) throughput: {first.projects} concurrent projects x {first.scenes // first.projects} scenes, "
        f"{gen_workers} gen+registry workers, N CV processes (launcher, --device cpu, {first.engine}); "
        f"Redis + PostgreSQL; median of {len(results[0])} run(s)"
    )
    print(
        f"  {'cv processes':>12} {'wall s':>8} {'(range)':>13} {'scenes/s':>9} {'projects/min':>13} {'speedup':>8} "
        f"{'analysis ms':>12} {'cv busy':>8}"
    )
    for runs, r in zip(results, medians, strict=True):
        spread = f"{min(x.wall_s for x in runs):.1f}-{max(x.wall_s for x in runs):.1f}"
        print(
            f"  {r.cv_processes:>12} {r.wall_s:>8.1f} {spread:>13} {r.scenes_per_s:>9.3f} {r.projects_per_min:>13.2f} "
            f"{r.scenes_per_s / first.scenes_per_s:>7.2f}x {r.analysis_ms:>12.0f} {r.cv_busy:>7.0%}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scenes", type=int, default=6, help="scenes of the overhead project")
    parser.add_argument("--projects", type=int, default=4, help="concurrent projects in the throughput runs")
    parser.add_argument("--project-scenes", type=int, default=3, help="scenes per throughput project")
    parser.add_argument("--cv-processes", default="1,2,4", help="CV process counts to compare (first is the baseline)")
    parser.add_argument("--gen-workers", type=int, default=2, help="gen+registry workers in the throughput runs")
    parser.add_argument("--repeats", type=int, default=1, help="throughput runs per CV count (median shown)")
    args = parser.parse_args()
    counts = [int(c) for c in args.cv_processes.split(",")]
    servers = servers_module()
    with tempfile.TemporaryDirectory() as tmp:
        redis = servers.start_redis(Path(tmp) / "redis")
        postgres = servers.start_postgres(Path(tmp) / "postgres")
        try:
            redis_stack = Stack("Redis+PostgreSQL", redis, postgres)
            overhead = {
                "Redis+PostgreSQL": overhead_run(redis_stack, args.scenes),
                "filesystem+SQLite": overhead_run(Stack("filesystem+SQLite"), args.scenes),
            }
            # Interleaved (1, 2, 4, 1, 2, 4, ...) so that a slow spell on the machine does not land on one count.
            throughput: list[list[Throughput]] = [[] for _ in counts]
            for _ in range(args.repeats):
                for runs, k in zip(throughput, counts, strict=True):
                    runs.append(throughput_run(redis_stack, args.projects, args.project_scenes, k, args.gen_workers))
        finally:
            redis.stop()
            postgres.stop()
    python = os.path.relpath(sys.executable)  # .venv/bin/python when run from the repository root
    print(f"command: {' '.join([python, *sys.argv])}")
    print(f"machine: {os.cpu_count()} cores, {platform.machine()}, CV on the CPU")
    print_overhead(overhead, args.scenes)
    print_throughput(throughput, args.gen_workers)


if __name__ == "__main__":
    main()
