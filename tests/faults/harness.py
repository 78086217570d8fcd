"""The fault tier's workload, cluster and checker (shared by tests/faults and bench/bench_chaos.py)."""

from __future__ import annotations

import os
import random
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import yaml
from sqlalchemy import select

from tests.faults.supervisor import Supervisor, children, kill_tree, worker_pids
from tests.servers import PostgresServer, RedisServer, free_port, start_postgres, start_redis
from vidpipe_tasks.cli.workers import beat_argv, worker_argv
from vidpipe_tasks.db.migrate import prepare_installation
from vidpipe_tasks.db.models import (
    OPEN_RUN_OUTCOMES,
    Asset,
    AssetSource,
    Clip,
    Project,
    Scene,
    SceneManifest,
    StageStatus,
    TaskRun,
)
from vidpipe_tasks.db.session import session_scope
from vidpipe_tasks.settings import GENERATION_QUEUE, REGISTRY_QUEUE, Settings, load_settings

FINAL = ("COMPLETED", "FAILED", "CANCELLED")
CAST = [("mara", "stock:face/t1-0"), ("jonas", "stock:face/t1-1")]
#: Scenes cycle through these casts; "wren" never has a reference image: analysis must register her.
SCENE_CASTS = [["mara", "wren"], ["jonas", "wren"], ["mara", "jonas", "wren"], ["jonas"], ["mara", "wren"]]


def storyboard(index: int, scenes: int) -> dict:
    """Project `index` of the workload: half on one shared manifest, a quarter own manifests, a quarter none."""
    kind = ("shared", "shared", "own", "none")[index % 4]
    board: dict = {
        "title": f"chaos {index} ({kind})",
        "characters": [{"tag": "wren", "name": "Wren"}],
        "defaults": {"duration_s": 1.5, "fps": 8, "size": "320x180"},
        "scenes": [
            {"description": f"project {index} scene {n + 1}", "characters": SCENE_CASTS[n % len(SCENE_CASTS)]}
            for n in range(scenes)
        ],
    }
    if kind != "none":
        name = "chaos-shared" if kind == "shared" else f"chaos-own-{index}"
        assets = [{"type": "character", "tag": tag, "name": tag.title(), "reference_image": ref} for tag, ref in CAST]
        board["manifest"] = {"name": name, "assets": assets}
    else:
        board["characters"] += [{"tag": tag, "name": tag.title()} for tag, _ in CAST]
    return board


def write_workload(folder: Path, projects: int, scenes: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(projects):
        path = folder / f"chaos-{i:03d}.yaml"
        path.write_text(yaml.safe_dump(storyboard(i, scenes), sort_keys=False))
        paths.append(path)
    return paths


def fault_settings(home: Path, redis: RedisServer, postgres: PostgresServer, **overrides: object) -> Settings:
    """Redis + PostgreSQL settings for the fault runs: small clips, no image embedder, short leases."""
    database = f"chaos_{os.getpid()}_{free_port()}"
    chosen = {
        "embedder": "none",
        "analysis_max_frames": 4,
        "generation_time_limit": 120,
        "analysis_time_limit": 120,
        "visibility_timeout": 3600,  # the default: recovery must not lean on Redis redelivering
        **overrides,
    }
    settings = replace(
        load_settings({"VIDPIPE_HOME": str(home)}),
        broker_url=redis.url(0),
        result_backend=redis.url(1),
        database_url=postgres.create_database(database),
        **chosen,
    )
    prepare_installation(settings, migrate=True)
    return settings


#: Faster recovery for the test tier (the bench runs at the defaults). A sweep confirms a lost chain only
#: after 0.9 x recovery_interval; keep that above the publish retry's 2 s poll (celery_app), or a chain whose
#: next link is about to be published after a Redis restart could be resumed for nothing.
FAST_RECOVERY = {
    "heartbeat_interval": 1.5,
    "lease_ttl": 6.0,
    "recovery_interval": 4.0,
    "retry_backoff_base": 0.5,
    "retry_backoff_max": 4.0,
    "transient_retry_window": 120,
}


@dataclass
class Cluster:
    """Redis (AOF on, as deploy/compose runs it), PostgreSQL, and every vidpipe process under a supervisor."""

    workdir: Path
    overrides: dict = field(default_factory=dict)
    cv_processes: int = 1
    redis: RedisServer | None = None
    postgres: PostgresServer | None = None
    settings: Settings | None = None
    supervisor: Supervisor = field(default_factory=Supervisor)

    def __enter__(self) -> Cluster:
        self.redis = start_redis(self.workdir / "redis", appendonly=True)
        self.postgres = start_postgres(self.workdir / "postgres")
        self.settings = fault_settings(self.workdir / "home", self.redis, self.postgres, **self.overrides)
        env = {**os.environ, **self.settings.as_env(), "PYTHONUNBUFFERED": "1"}
        logs = self.workdir / "logs"
        queues = [GENERATION_QUEUE, REGISTRY_QUEUE]
        sup = self.supervisor
        sup.add("gen-a", worker_argv("gen-a", queues, pool="prefork", concurrency=2, embedded=False), env,
                logs / "gen-a.log")  # fmt: skip
        sup.add("gen-b", worker_argv("gen-b", queues, embedded=False), env, logs / "gen-b.log")
        cv = [sys.executable, "-m", "gpu_worker", "--device", "cpu", "--processes", str(self.cv_processes)]
        sup.add("cv", [*cv, "--logdir", str(logs)], env, logs / "cv-launcher.log")
        sup.add("beat", beat_argv(self.settings), env, logs / "beat.log")
        sup.start()
        self._wait_ready(logs)
        return self

    def _wait_ready(self, logs: Path, timeout: float = 120) -> None:
        names = ["gen-a", "gen-b", *[f"cv-cpu{i}" for i in range(self.cv_processes)]]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all((logs / f"{n}.log").is_file() and " ready." in (logs / f"{n}.log").read_text() for n in names):
                return
            time.sleep(0.3)
        raise RuntimeError(f"workers not ready after {timeout:.0f}s:\n{self.supervisor.log_tails()}")

    def __exit__(self, *exc: object) -> None:
        self.supervisor.stop()
        if self.redis:
            self.redis.stop()
        if self.postgres:
            self.postgres.stop()

    def submit(self, paths: list[Path]) -> list[int]:
        from vidpipe_tasks.celery_app import create_app
        from vidpipe_tasks.workflow import submit

        return submit(create_app(self.settings), self.settings, paths)

    def wait(self, ids: list[int], timeout: float) -> dict[int, str]:
        deadline = time.monotonic() + timeout
        while True:
            states = project_states(self.settings, ids)
            if all(s in FINAL for s in states.values()) or time.monotonic() > deadline:
                return states
            time.sleep(0.5)


def project_states(settings: Settings, ids: list[int]) -> dict[int, str]:
    try:
        with session_scope(settings.database_url) as s:
            return {p.id: p.status.value for p in s.scalars(select(Project).where(Project.id.in_(ids)))}
    except Exception:  # PostgreSQL restarting under the nemesis: ask again
        return dict.fromkeys(ids, "UNKNOWN")


# --- nemeses ------------------------------------------------------------------------------------------------


@dataclass
class Fault:
    """One fault the nemesis caused: when, what, and (for kills) which project scene it interrupted."""

    at: datetime
    what: str
    project_id: int | None = None
    scene_index: int | None = None
    task_name: str | None = None


@dataclass
class Nemesis:
    """Runs `action` every `every_s` seconds (with jitter) in a thread, at most `limit` times."""

    action: Callable[[Cluster, random.Random], Fault | None]
    every_s: tuple[float, float]
    limit: int
    seed: int = 1
    faults: list[Fault] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def run(self, cluster: Cluster) -> threading.Thread:
        rng = random.Random(self.seed)

        def loop() -> None:
            while len(self.faults) < self.limit and not self._stop.wait(rng.uniform(*self.every_s)):
                fault = self.action(cluster, rng)
                if fault is not None:
                    self.faults.append(fault)

        self._thread = threading.Thread(target=loop, name="nemesis", daemon=True)
        self._thread.start()
        return self._thread

    def stop(self) -> None:
        """Strike no more, and wait for a fault in progress (a server restarting) to finish."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(120)


def _now() -> datetime:
    return datetime.now(UTC)


def random_kill(cluster: Cluster, rng: random.Random) -> Fault | None:
    """SIGKILL a random worker process whole, or one prefork pool child."""
    targets: list[tuple[str, int]] = []
    for node in ("gen-a", "gen-b", "cv-cpu0"):
        for pid in worker_pids(node, cluster.supervisor.sessions()):
            targets.append((f"{node} worker", pid))
            if node == "gen-a":
                targets += [("gen-a pool child", child) for child in children(pid)]
    if not targets:
        return None
    what, pid = rng.choice(targets)
    # What the worker was running, so the bench can time its recovery (a pool child's task is ambiguous).
    running = _running_on(cluster.settings, what.split()[0]) if what.endswith("worker") else None
    kill_tree(pid) if what.endswith("worker") else os.kill(pid, 9)
    return Fault(_now(), f"SIGKILL {what} {pid}", *(running or (None, None, None)))


def _running_on(settings: Settings, node: str) -> tuple[int, int, str] | None:
    with session_scope(settings.database_url) as s:
        run = s.scalar(select(TaskRun).where(TaskRun.outcome == "running", TaskRun.worker.like(f"{node}@%")).limit(1))
        return (run.project_id, run.scene_index, run.task_name) if run is not None else None


def kill_during(task_name: str) -> Callable[[Cluster, random.Random], Fault | None]:
    """SIGKILL, whole, the worker that is running `task_name` right now (waits up to 20 s for one)."""

    def action(cluster: Cluster, rng: random.Random) -> Fault | None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with session_scope(cluster.settings.database_url) as s:
                run = s.scalar(
                    select(TaskRun).where(TaskRun.task_name == task_name, TaskRun.outcome == "running").limit(1)
                )
                found = (run.worker, run.project_id, run.scene_index) if run is not None and run.worker else None
            if found:
                node = found[0].split("@")[0]
                for pid in worker_pids(node, cluster.supervisor.sessions()):
                    kill_tree(pid)
                    return Fault(_now(), f"SIGKILL {node} during {task_name}", found[1], found[2], task_name)
            time.sleep(0.05)
        return None

    return action


def restart_redis(sig: int) -> Callable[[Cluster, random.Random], Fault | None]:
    def action(cluster: Cluster, rng: random.Random) -> Fault | None:
        down = cluster.redis.restart(sig, down_s=rng.uniform(1.0, 4.0))
        return Fault(_now(), f"redis restart by signal {sig}, unreachable {down:.1f} s")

    return action


def restart_postgres(cluster: Cluster, rng: random.Random) -> Fault | None:
    """A fast shutdown (sessions are cut mid-query), down for 2-6 s, then up again."""
    took = cluster.postgres.restart(down_s=rng.uniform(2.0, 6.0))
    return Fault(_now(), f"postgres fast restart, down {took:.1f} s")


# --- checker ------------------------------------------------------------------------------------------------


@dataclass
class CheckReport:
    """What the database says after a run: Jepsen's checker, for vidpipe's invariants."""

    states: dict[int, str]
    duplicates: list[str] = field(default_factory=list)
    order_violations: list[str] = field(default_factory=list)
    infra_degraded: list[str] = field(default_factory=list)
    open_runs: list[str] = field(default_factory=list)
    temp_files: list[str] = field(default_factory=list)
    recoveries: int = 0
    recovered_projects: int = 0

    @property
    def completed(self) -> int:
        return sum(1 for s in self.states.values() if s == "COMPLETED")

    def problems(self) -> list[str]:
        found = [f"project {p} ended {s}" for p, s in self.states.items() if s != "COMPLETED"]
        return found + self.duplicates + self.order_violations + self.infra_degraded + self.open_runs + self.temp_files


def _utc(value: datetime | None) -> datetime | None:
    return value if value is None or value.tzinfo else value.replace(tzinfo=UTC)


def recovery_seconds(settings: Settings, faults: list[Fault]) -> list[float]:
    """For each kill that interrupted a known scene task: seconds until a task of that scene started again."""
    found = []
    with session_scope(settings.database_url) as s:
        for f in faults:
            if f.project_id is None or f.scene_index is None:
                continue
            started = s.scalars(
                select(TaskRun.started_at).where(
                    TaskRun.project_id == f.project_id,
                    TaskRun.scene_index == f.scene_index,
                    TaskRun.outcome.not_in(("stale", "duplicate", "ignored")),
                )
            )
            later = sorted(t for t in (_utc(x) for x in started) if t > f.at)
            if later:
                found.append((later[0] - f.at).total_seconds())
    return found


def check(settings: Settings, ids: list[int]) -> CheckReport:
    report = CheckReport(project_states(settings, ids))
    skipped = ("stale", "duplicate")
    with session_scope(settings.database_url) as s:
        projects = list(s.scalars(select(Project).where(Project.id.in_(ids))))
        report.recoveries = sum(p.recoveries or 0 for p in projects)
        report.recovered_projects = sum(1 for p in projects if p.recoveries)
        runs: dict[tuple[int, int, str], list[TaskRun]] = defaultdict(list)
        for run in s.scalars(select(TaskRun).where(TaskRun.project_id.in_(ids))):
            if run.outcome in OPEN_RUN_OUTCOMES:
                report.open_runs.append(f"task run {run.task_name} p{run.project_id} s{run.scene_index}: {run.outcome}")
            if run.outcome not in skipped and run.scene_index is not None:
                runs[(run.project_id, run.scene_index, run.task_name)].append(run)
        for project in projects:
            _check_project(s, settings, project, runs, report)
        _check_assets(s, report)
    report.temp_files = [
        f"temp file left: {p}" for pat in (".*.part", ".*.tmp") for p in settings.media_root.rglob(pat)
    ]
    return report


def _check_project(s, settings: Settings, project: Project, runs: dict, report: CheckReport) -> None:
    scenes = list(s.scalars(select(Scene).where(Scene.project_id == project.id).order_by(Scene.scene_index)))
    clips = Counter(c.scene_id for c in s.scalars(select(Clip).where(Clip.scene_id.in_([sc.id for sc in scenes]))))
    previous_done: datetime | None = None
    for scene in scenes:
        tag = f"p{project.id} s{scene.scene_index}"
        if clips[scene.id] != 1:
            report.duplicates.append(f"{tag}: {clips[scene.id]} clip rows")
        sm = s.scalar(select(SceneManifest).where(SceneManifest.scene_id == scene.id))
        if scene.analysis_status == StageStatus.DEGRADED:
            report.infra_degraded.append(f"{tag}: degraded ({sm.degraded_reason if sm else '?'})")
        generations = runs[(project.id, scene.scene_index, "vidpipe.generate_clip")]
        if previous_done is not None:
            for run in generations:
                if _utc(run.started_at) < previous_done:
                    report.order_violations.append(
                        f"{tag}: generate_clip started {_utc(run.started_at)} before scene {scene.scene_index - 1}"
                        f" finished {previous_done}"
                    )
        if project.manifest_id is not None:
            previous_done = _utc(sm.registered_at) if sm else None
        else:
            done = [_utc(r.finished_at) for r in generations if r.outcome == "success" and r.finished_at]
            previous_done = min(done) if done else None


def _check_assets(s, report: CheckReport) -> None:
    """One face becomes one asset: a project registering its invented character twice is a duplicate.

    (Projects sharing a manifest each invent their own face for a reference-less character they declare,
    so one asset per project and character is right.) A tag minted twice in a manifest is a duplicate too.
    """
    extracted = list(s.scalars(select(Asset).where(Asset.source == AssetSource.CLIP_EXTRACT)))
    per_character = Counter((a.manifest_id, a.character, a.origin_project_id) for a in extracted if a.character)
    report.duplicates += [
        f"manifest {m}: project {p} registered {c} {n} times" for (m, c, p), n in per_character.items() if n > 1
    ]
    tags = Counter((a.manifest_id, a.tag) for a in s.scalars(select(Asset)))
    report.duplicates += [f"manifest {m}: tag {t} {n} times" for (m, t), n in tags.items() if n > 1]
