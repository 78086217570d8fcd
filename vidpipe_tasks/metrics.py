"""Prometheus metrics of vidpipe itself, read at each scrape from the database, the broker and NVML."""

from __future__ import annotations

import ctypes
import logging
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from sqlalchemy import case, func, select

from vidpipe_tasks.db.models import (
    OPEN_RUN_OUTCOMES,
    GenerationJob,
    Project,
    ProjectStatus,
    Scene,
    SceneManifest,
    StageStatus,
    TaskRun,
)
from vidpipe_tasks.db.session import session_scope
from vidpipe_tasks.generators.remote import ACTIVE_STATES, UNBILLED_STATES
from vidpipe_tasks.settings import Settings

log = logging.getLogger(__name__)

#: Upper bounds of the task-duration buckets, seconds: a registry commit takes well under a second, a remote
#: generation many minutes (the longest time limit is 900 s; a polled job's last attempt is what is timed).
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0)
#: Continuity scores are cosine similarities in [0, 1] (docs/cv-engines.md); tenths show the distribution.
SCORE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
#: The stage columns of a scene, by the stage name the metrics use.
STAGE_COLUMNS = {"generation": "generation_status", "analysis": "analysis_status", "registry": "registry_status"}
#: Every value `vidpipe_scenes{outcome}` takes (see `scene_outcome`); each is exported, zeros included.
SCENE_OUTCOMES = (
    "pending",
    "running",
    "stalled",
    "recovering",
    "done",
    "degraded",
    "skipped",
    "failed",
    "cancelled",
    "not_run",
)
#: Sources a scrape reads; `vidpipe_exporter_source_up{source}` says which answered.
SOURCES = ("database", "broker", "gpu")
_ACTIVE_PROJECT = (ProjectStatus.PENDING, ProjectStatus.RUNNING)


def _utc(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; every stored time is UTC.
    return value if value is None or value.tzinfo else value.replace(tzinfo=UTC)


def scene_outcome(
    generation: StageStatus,
    analysis: StageStatus,
    registry: StageStatus,
    project_status: ProjectStatus,
    *,
    lease_expired: bool,
    recovered: bool,
) -> str:
    """One word for where a scene stands (the `outcome` label of `vidpipe_scenes`).

    Finished scenes: done, degraded (registered with a degraded analysis), skipped (a content policy
    blocked it under skip-scene) or failed. Unfinished scenes of a finished project: cancelled, or not_run
    (the project failed or ended before reaching it). Unfinished scenes of an active project: stalled (the
    project's lease ran out: its chain may be lost, the recovery sweep is checking), recovering (the sweep
    resumed the project at least once and its new chain is alive), running or pending.
    """
    stages = (generation, analysis, registry)
    if StageStatus.FAILED in stages:
        return "failed"
    if generation == StageStatus.SKIPPED:
        return "skipped"
    if generation == StageStatus.DONE and registry in (StageStatus.DONE, StageStatus.SKIPPED):
        return "degraded" if analysis == StageStatus.DEGRADED else "done"
    if project_status == ProjectStatus.CANCELLED:
        return "cancelled"
    if project_status not in _ACTIVE_PROJECT:
        return "not_run"
    if lease_expired:
        return "stalled"
    if recovered:
        return "recovering"
    return "running" if StageStatus.RUNNING in stages else "pending"


def cumulative_buckets(values: Iterable[float], bounds: tuple[float, ...]) -> list[tuple[str, float]]:
    """Prometheus histogram buckets (cumulative counts, `+Inf` last) of `values`."""
    values = list(values)
    buckets = [(repr(float(b)), float(sum(1 for v in values if v <= b))) for b in bounds]
    return [*buckets, ("+Inf", float(len(values)))]


# --- the database --------------------------------------------------------------------------------------------------


def project_metrics(session: Any, now: datetime, lease_ttl: float) -> Iterator[Metric]:
    """Projects by status, scenes by stage and status, and scenes by outcome."""
    projects = GaugeMetricFamily("vidpipe_projects", "Projects by status.", labels=["status"])
    counts = Counter(dict(session.execute(select(Project.status, func.count()).group_by(Project.status)).all()))
    for status in ProjectStatus:
        projects.add_metric([status.value.lower()], counts.get(status, 0))
    yield projects
    recoveries = CounterMetricFamily(
        "vidpipe_project_recoveries", "Automatic recoveries of lost chains (sum over projects)."
    )
    recoveries.add_metric([], session.scalar(select(func.coalesce(func.sum(Project.recoveries), 0))))
    yield recoveries

    stages = GaugeMetricFamily(
        "vidpipe_scene_stages", "Scenes by stage and that stage's status.", labels=["stage", "status"]
    )
    for stage, column in STAGE_COLUMNS.items():
        column_attr = getattr(Scene, column)
        by_status = dict(session.execute(select(column_attr, func.count()).group_by(column_attr)).all())
        for status in StageStatus:
            stages.add_metric([stage, status.value.lower()], by_status.get(status, 0))
    yield stages

    stage_columns = (Scene.generation_status, Scene.analysis_status, Scene.registry_status)
    outcomes: Counter[str] = Counter()
    # Finished projects need no lease: one row per combination of states, however many scenes.
    grouped = session.execute(
        select(*stage_columns, Project.status, func.count())
        .join(Project, Scene.project_id == Project.id)
        .where(Project.status.not_in(_ACTIVE_PROJECT))
        .group_by(*stage_columns, Project.status)
    )
    for generation, analysis, registry, status, count in grouped:
        outcomes[scene_outcome(generation, analysis, registry, status, lease_expired=False, recovered=False)] += count
    active = session.execute(
        select(*stage_columns, Project.status, Project.lease_until, Project.created_at, Project.recoveries)
        .join(Project, Scene.project_id == Project.id)
        .where(Project.status.in_(_ACTIVE_PROJECT))
    )
    for generation, analysis, registry, status, lease_until, created_at, recovered in active:
        # The recovery sweep's test: an active project's chain is vouched for until its lease (or, before the
        # first task started, lease_ttl after creation).
        alive_until = _utc(lease_until) or _utc(created_at) + timedelta(seconds=lease_ttl)
        outcome = scene_outcome(
            generation, analysis, registry, status, lease_expired=alive_until <= now, recovered=bool(recovered)
        )
        outcomes[outcome] += 1
    scenes = GaugeMetricFamily("vidpipe_scenes", "Scenes by outcome (see docs/operations.md).", labels=["outcome"])
    for outcome in SCENE_OUTCOMES:
        scenes.add_metric([outcome], outcomes[outcome])
    yield scenes


def task_run_metrics(session: Any) -> Iterator[Metric]:
    """Task runs by outcome, attempts, retries, polls, crashes and redeliveries, and duration histograms.

    Read from the task-run log (`task_runs`, one row per Celery task id), not from Celery events: the figures
    survive an exporter restart, need no event stream (the embedded broker has none) and agree with
    `vidpipe status`. A duration is the last attempt's (`finished_at - started_at`; a start resets it).
    """
    runs = GaugeMetricFamily(
        "vidpipe_task_runs", "Task runs (task ids) by task and outcome.", labels=["task", "outcome"]
    )
    for task, outcome, count in session.execute(
        select(TaskRun.task_name, TaskRun.outcome, func.count()).group_by(TaskRun.task_name, TaskRun.outcome)
    ):
        runs.add_metric([_short(task), outcome], count)
    yield runs

    sums = session.execute(
        select(
            TaskRun.task_name,
            func.sum(TaskRun.attempts),
            func.sum(TaskRun.retries),
            func.sum(TaskRun.polls),
            func.sum(TaskRun.crashes),
            func.sum(case((TaskRun.outcome == "duplicate", 1), else_=0)),
        ).group_by(TaskRun.task_name)
    ).all()
    families = {
        "attempts": CounterMetricFamily(
            "vidpipe_task_attempts",
            "Starts of tasks by a worker (retries, polls, redeliveries included).",
            labels=["task"],
        ),
        "retries": CounterMetricFamily(
            "vidpipe_task_retries", "Retries scheduled after a transient infrastructure error.", labels=["task"]
        ),
        "polls": CounterMetricFamily("vidpipe_task_polls", "Polls of a remote generation job.", labels=["task"]),
        "crashes": CounterMetricFamily(
            "vidpipe_task_crashes",
            "Starts that found the previous run still running (its worker was lost).",
            labels=["task"],
        ),
        "redeliveries": CounterMetricFamily(
            "vidpipe_task_redeliveries",
            "Deliveries of a task id that had started before: crashes plus skipped duplicates of finished tasks.",
            labels=["task"],
        ),
    }
    for task, attempts, retries, polls, crashes, duplicates in sums:
        values = {
            "attempts": attempts,
            "retries": retries,
            "polls": polls,
            "crashes": crashes,
            "redeliveries": (crashes or 0) + (duplicates or 0),
        }
        for key, family in families.items():
            family.add_metric([_short(task)], values[key] or 0)
    yield from families.values()

    # Counted by the database (one row per task and outcome), so a scrape costs the same for any run-log size
    # in Python; the duration is the dialect's own arithmetic on the two timestamps.
    timed = (
        select(
            TaskRun.task_name.label("task"),
            TaskRun.outcome.label("outcome"),
            _seconds_between(session, TaskRun.started_at, TaskRun.finished_at).label("seconds"),
        )
        .where(TaskRun.finished_at.is_not(None), TaskRun.outcome.not_in(OPEN_RUN_OUTCOMES))
        .subquery()
    )
    finished = session.execute(
        select(
            timed.c.task,
            timed.c.outcome,
            func.count(),
            func.coalesce(func.sum(timed.c.seconds), 0.0),
            *(func.sum(case((timed.c.seconds <= bound, 1), else_=0)) for bound in DURATION_BUCKETS),
        ).group_by(timed.c.task, timed.c.outcome)
    )
    histogram = HistogramMetricFamily(
        "vidpipe_task_duration_seconds",
        "Duration of finished task runs (last attempt), seconds.",
        labels=["task", "outcome"],
    )
    for task, outcome, count, total, *in_buckets in sorted(finished, key=lambda row: (row[0], row[1])):
        buckets = [(repr(float(b)), float(n or 0)) for b, n in zip(DURATION_BUCKETS, in_buckets, strict=True)]
        histogram.add_metric([_short(task), outcome], [*buckets, ("+Inf", float(count))], float(total))
    yield histogram


def _seconds_between(session: Any, start: Any, end: Any) -> Any:
    """SQL for `end - start` in seconds (PostgreSQL's interval epoch; SQLite's Julian days, to about 50 us)."""
    if session.bind.dialect.name == "postgresql":
        return func.extract("epoch", end - start)
    return (func.julianday(end) - func.julianday(start)) * 86400.0


def score_metrics(session: Any) -> Iterator[Metric]:
    """The distribution of the scenes' continuity scores (scenes analysed with a score)."""
    scores = [
        float(v)
        for v in session.scalars(
            select(SceneManifest.continuity_score).where(SceneManifest.continuity_score.is_not(None))
        )
    ]
    histogram = HistogramMetricFamily("vidpipe_continuity_score", "Continuity score of analysed scenes (0..1).")
    histogram.add_metric([], cumulative_buckets(scores, SCORE_BUCKETS), sum(scores))
    yield histogram


def generation_metrics(session: Any) -> Iterator[Metric]:
    """Provider jobs by state, those in flight, and the estimated spend and generated seconds."""
    jobs = GaugeMetricFamily(
        "vidpipe_generation_jobs", "Remote generation jobs by provider and state.", labels=["provider", "state"]
    )
    in_flight = GaugeMetricFamily(
        "vidpipe_generation_jobs_in_flight",
        "Remote generation jobs the provider may be working on.",
        labels=["provider"],
    )
    flying: Counter[str] = Counter()
    for provider, state, count in session.execute(
        select(GenerationJob.provider, GenerationJob.state, func.count()).group_by(
            GenerationJob.provider, GenerationJob.state
        )
    ):
        jobs.add_metric([provider, state], count)
        flying[provider] += count if state in ACTIVE_STATES else 0
    for provider, count in sorted(flying.items()):
        in_flight.add_metric([provider], count)
    yield jobs
    yield in_flight
    spend = CounterMetricFamily(
        "vidpipe_generation_spend_usd",
        "Estimated spend on remote generation, USD (jobs the provider took).",
        labels=["provider"],
    )
    seconds = CounterMetricFamily(
        "vidpipe_generation_generated_seconds", "Seconds of video the providers generated.", labels=["provider"]
    )
    billed = session.execute(
        select(GenerationJob.provider, func.sum(GenerationJob.cost_estimate), func.sum(GenerationJob.generated_seconds))
        .where(GenerationJob.state.not_in(UNBILLED_STATES))
        .group_by(GenerationJob.provider)
    )
    for provider, cost, generated in billed:
        spend.add_metric([provider], float(cost or 0.0))
        seconds.add_metric([provider], float(generated or 0.0))
    yield spend
    yield seconds


def _short(task_name: str) -> str:
    return task_name.removeprefix("vidpipe.")


def database_metrics(settings: Settings, now: datetime | None = None) -> list[Metric]:
    """Everything the database tells, in one read-only session."""
    now = now or datetime.now(UTC)
    with session_scope(settings.database_url) as s:
        return [
            *project_metrics(s, now, settings.lease_ttl),
            *task_run_metrics(s),
            *score_metrics(s),
            *generation_metrics(s),
        ]


# --- the broker ----------------------------------------------------------------------------------------------------


def broker_metrics(rows: list[dict[str, Any]]) -> list[Metric]:
    """Queue depths from `vidpipe_tasks.queues.queue_depths`: per queue, per priority list, unacknowledged."""
    depth = GaugeMetricFamily(
        "vidpipe_queue_depth", "Messages waiting in a queue (every priority list).", labels=["queue"]
    )
    lists = GaugeMetricFamily(
        "vidpipe_queue_list_depth",
        "Messages waiting in one priority list of a queue (Redis; kombu's priority steps).",
        labels=["queue", "priorities"],
    )
    unacked = GaugeMetricFamily(
        "vidpipe_queue_unacked", "Messages workers hold unacknowledged (reserved or running; Redis).", labels=["queue"]
    )
    for row in rows:
        depth.add_metric([row["queue"]], row["depth"])
        for sub in row["lists"]:
            lists.add_metric([row["queue"], sub["priorities"]], sub["depth"])
        if row["unacked"] is not None:
            unacked.add_metric([row["queue"]], row["unacked"])
    return [depth, lists, unacked]


# --- NVML (CV hosts) -----------------------------------------------------------------------------------------------


class _Utilization(ctypes.Structure):
    _fields_ = [("gpu", ctypes.c_uint), ("memory", ctypes.c_uint)]


class _Memory(ctypes.Structure):
    _fields_ = [("total", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong), ("used", ctypes.c_ulonglong)]


@dataclass(frozen=True)
class GpuSample:
    index: int
    memory_used: int
    memory_total: int
    #: Percent of the driver's last sample period in which a kernel ran.
    utilization: int


def nvml_samples(library: str = "libnvidia-ml.so.1") -> list[GpuSample] | None:
    """Memory and utilisation of every GPU NVML sees on this host; None where NVML is absent (never faked).

    Plain ctypes on the driver's library (as bench/bench_gpu.py does): no Python package, no CUDA context.
    """
    try:
        lib = ctypes.CDLL(library)
    except OSError:
        return None
    if lib.nvmlInit_v2() != 0:
        return None
    try:
        count = ctypes.c_uint()
        if lib.nvmlDeviceGetCount_v2(ctypes.byref(count)) != 0:
            return None
        samples = []
        for index in range(count.value):
            handle, util, mem = ctypes.c_void_p(), _Utilization(), _Memory()
            if lib.nvmlDeviceGetHandleByIndex_v2(index, ctypes.byref(handle)) != 0:
                continue
            if lib.nvmlDeviceGetMemoryInfo(handle, ctypes.byref(mem)) != 0:
                continue
            busy = util.gpu if lib.nvmlDeviceGetUtilizationRates(handle, ctypes.byref(util)) == 0 else 0
            samples.append(GpuSample(index, int(mem.used), int(mem.total), int(busy)))
        return samples
    finally:
        lib.nvmlShutdown()


def gpu_metrics(samples: list[GpuSample]) -> list[Metric]:
    used = GaugeMetricFamily("vidpipe_gpu_memory_used_bytes", "GPU memory in use (NVML).", labels=["gpu"])
    total = GaugeMetricFamily("vidpipe_gpu_memory_total_bytes", "GPU memory in all (NVML).", labels=["gpu"])
    busy = GaugeMetricFamily(
        "vidpipe_gpu_utilization_ratio", "Share of the last NVML sample period a kernel ran (0..1).", labels=["gpu"]
    )
    for sample in samples:
        label = [str(sample.index)]
        used.add_metric(label, sample.memory_used)
        total.add_metric(label, sample.memory_total)
        busy.add_metric(label, sample.utilization / 100.0)
    return [used, total, busy]


# --- the collector -------------------------------------------------------------------------------------------------


class VidpipeCollector(Collector):
    """Reads every source at each scrape; a source that fails is reported down, the others still answer."""

    def __init__(
        self,
        settings: Settings,
        sources: tuple[str, ...] = SOURCES,
        *,
        queue_depths: Callable[[], list[dict[str, Any]]] | None = None,
        gpu_samples: Callable[[], list[GpuSample] | None] = nvml_samples,
    ) -> None:
        unknown = sorted(set(sources) - set(SOURCES))
        if unknown or not sources:
            raise ValueError(f"unknown metric source(s) {unknown}; choose from {list(SOURCES)}")
        self.settings, self.sources = settings, sources
        self._queue_depths = queue_depths or self._broker_depths
        self._gpu_samples = gpu_samples
        self._app = None

    def _broker_depths(self) -> list[dict[str, Any]]:
        from vidpipe_tasks.celery_app import create_app
        from vidpipe_tasks.queues import queue_depths

        if self._app is None:
            self._app = create_app(self.settings)
        return queue_depths(self._app, self.settings)

    def _read(self, source: str) -> list[Metric] | None:
        if source == "database":
            return database_metrics(self.settings)
        if source == "broker":
            return broker_metrics(self._queue_depths())
        samples = self._gpu_samples()
        return None if samples is None else gpu_metrics(samples)

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("vidpipe_exporter_source_up", "1 if the source answered this scrape.", labels=["source"])
        took = GaugeMetricFamily(
            "vidpipe_exporter_source_seconds", "Seconds reading the source took this scrape.", labels=["source"]
        )
        for source in self.sources:
            started = time.monotonic()
            try:
                metrics = self._read(source)
            except Exception as exc:  # a database or broker outage: report it down, keep the scrape alive
                log.warning("metrics: %s did not answer: %s: %s", source, type(exc).__name__, exc)
                metrics = None
            up.add_metric([source], 0 if metrics is None else 1)
            took.add_metric([source], time.monotonic() - started)
            yield from metrics or []
        yield up
        yield took


def registry_for(settings: Settings, sources: tuple[str, ...] = SOURCES) -> CollectorRegistry:
    """A registry holding only vidpipe's collector (no process metrics of the exporter itself)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(VidpipeCollector(settings, sources))
    return registry


def run_exporter(settings: Settings, address: str, port: int, sources: tuple[str, ...] = SOURCES) -> int:
    """Serve /metrics on `address:port` until SIGTERM or Ctrl-C; returns the exit status."""
    from prometheus_client import start_http_server

    registry = registry_for(settings, sources)
    server, thread = start_http_server(port, addr=address, registry=registry)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    bound = server.server_address[1]
    print(f"vidpipe exporter on http://{address}:{bound}/metrics (sources: {', '.join(sources)})", flush=True)
    stop.wait()
    server.shutdown()
    thread.join(5)
    return 0
