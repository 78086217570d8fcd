"""What the benchmarks share: a bench storyboard, the stacks they run on, real workers, and task-gap figures."""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml
from sqlalchemy import select

from vidpipe_tasks.celery_app import create_app
from vidpipe_tasks.cli.workers import WorkerProcess, start_worker, stop_workers, wait_ready
from vidpipe_tasks.db.migrate import prepare_installation
from vidpipe_tasks.db.models import Project, TaskRun
from vidpipe_tasks.db.session import session_scope
from vidpipe_tasks.settings import CV_QUEUE, GENERATION_QUEUE, REGISTRY_QUEUE, Settings, load_settings
from vidpipe_tasks.storyboard import load_storyboard
from vidpipe_tasks.workflow import create_project, enqueue_project

REPO = Path(__file__).resolve().parents[1]


def storyboard(scenes: int) -> dict:
    return {
        "title": "orchestration bench",
        "manifest": {
            "name": f"bench-{time.time_ns()}",
            "assets": [{"type": "character", "tag": "ana", "name": "Ana", "reference_image": "stock:face/t1-0"}],
        },
        "characters": [{"tag": "bo", "name": "Bo"}],
        "defaults": {"duration_s": 2, "fps": 12, "size": "640x360"},
        "scenes": [
            {"description": f"scene {i}", "location": "quay", "characters": ["ana", "bo"]} for i in range(1, scenes + 1)
        ],
    }


def gaps(runs: dict, scenes: int) -> dict[str, list[float]]:
    def gap(a, b) -> float:
        return (b.started_at - a.finished_at).total_seconds() * 1000

    out: dict[str, list[float]] = {
        "generate->analyze": [],
        "analyze->register": [],
        "register->next generate": [],
        "overhead per scene": [],
        "work per scene": [],
    }
    for n in range(1, scenes):
        g, a, r, nxt = (
            runs[("generate_clip", n)],
            runs[("analyze_clip", n)],
            runs[("register_entities", n)],
            runs[("generate_clip", n + 1)],
        )
        hops = [gap(g, a), gap(a, r), gap(r, nxt)]
        for key, value in zip(list(out)[:3], hops, strict=True):
            out[key].append(value)
        out["overhead per scene"].append(sum(hops))
        out["work per scene"].append(sum((t.finished_at - t.started_at).total_seconds() * 1000 for t in (g, a, r)))
    return out


def servers_module() -> ModuleType:
    """tests/servers.py: throwaway Redis and PostgreSQL from the installed binaries (not an installed package)."""
    sys.path.insert(0, str(REPO))
    from tests import servers

    return servers


@dataclass
class Stack:
    """Where a run's broker, results and database live; `settings` builds fresh ones for each run."""

    label: str
    redis: Any = None  # tests.servers.RedisServer
    postgres: Any = None  # tests.servers.PostgresServer
    runs: int = 0
    poll_interval: float = 0.1  # filesystem broker only

    def settings(self, home: Path) -> Settings:
        base = load_settings({"VIDPIPE_HOME": str(home)})
        if self.redis is None:
            settings = replace(base, poll_interval=self.poll_interval)
        else:
            import redis

            self.runs += 1
            broker, results = self.redis.url(0), self.redis.url(1)
            for url in (broker, results):  # runs are sequential: nothing of the previous run may remain
                redis.Redis.from_url(url).flushdb()
            database = self.postgres.create_database(f"bench_{self.runs}")
            settings = replace(base, broker_url=broker, result_backend=results, database_url=database)
        prepare_installation(settings, migrate=True)  # a fresh database: the bench is its own migration job
        return settings


def wait_projects(settings: Settings, ids: list[int], workers: list[WorkerProcess], timeout: float = 1800) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with session_scope(settings.database_url) as s:
            states = [s.get(Project, i).status.value for i in ids]
        if all(st in ("COMPLETED", "FAILED", "CANCELLED") for st in states):
            if set(states) != {"COMPLETED"}:
                raise RuntimeError(f"projects ended {states}")
            return
        if any(w.process.poll() is not None for w in workers):
            raise RuntimeError("a worker died; see its log under the bench's work folder")
        time.sleep(0.1)
    raise TimeoutError(f"projects not finished after {timeout:.0f}s")


def new_projects(settings: Settings, home: Path, count: int, scenes: int) -> list[int]:
    ids = []
    for i in range(count):
        path = home / f"bench-{i}.yaml"
        path.write_text(yaml.safe_dump(storyboard(scenes)))  # each with its own manifest
        ids.append(create_project(settings, path, load_storyboard(path)))
    return ids


def overhead_run(stack: Stack, scenes: int) -> dict[str, list[float]]:
    """One project, one gen+registry worker and one cv worker (the topology of bench_orchestration)."""
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        settings = stack.settings(home)
        (project,) = new_projects(settings, home, 1, scenes)
        logs = home / "logs"
        workers = [
            start_worker(settings, "gen", [GENERATION_QUEUE, REGISTRY_QUEUE], logs),
            start_worker(settings, "cv", [CV_QUEUE], logs),
        ]
        try:
            wait_ready(workers)
            enqueue_project(create_app(settings), settings, project)
            wait_projects(settings, [project], workers)
        finally:
            stop_workers(workers)
        with session_scope(settings.database_url) as s:
            runs = {(r.task_name.split(".")[1], r.scene_index): r for r in s.scalars(select(TaskRun))}
    return gaps(runs, scenes)
