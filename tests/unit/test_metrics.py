"""vidpipe's Prometheus collector: scene outcomes, histograms from the run log, sources that fail or are absent."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from vidpipe_tasks.db.models import (
    GenerationJob,
    Project,
    ProjectStatus,
    Scene,
    SceneManifest,
    StageStatus,
    TaskRun,
)
from vidpipe_tasks.db.session import session_scope
from vidpipe_tasks.metrics import VidpipeCollector, cumulative_buckets, scene_outcome
from vidpipe_tasks.settings import Settings

D, R, P, F, S, G = (
    StageStatus.DONE,
    StageStatus.RUNNING,
    StageStatus.PENDING,
    StageStatus.FAILED,
    StageStatus.SKIPPED,
    StageStatus.DEGRADED,
)
NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def samples(collector: VidpipeCollector) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted labels) -> value, as Prometheus would parse the exposition."""
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.mark.parametrize(
    ("stages", "project", "expired", "recovered", "expected"),
    [
        ((D, D, D), ProjectStatus.COMPLETED, False, False, "done"),
        ((D, S, S), ProjectStatus.COMPLETED, False, False, "done"),  # no manifest: nothing to register
        ((D, G, D), ProjectStatus.RUNNING, False, False, "degraded"),
        ((S, S, S), ProjectStatus.RUNNING, False, False, "skipped"),
        ((D, F, P), ProjectStatus.FAILED, False, False, "failed"),
        ((P, P, P), ProjectStatus.FAILED, False, False, "not_run"),
        ((D, P, P), ProjectStatus.CANCELLED, False, False, "cancelled"),
        ((R, P, P), ProjectStatus.RUNNING, True, False, "stalled"),
        ((R, P, P), ProjectStatus.RUNNING, True, True, "stalled"),
        ((D, R, P), ProjectStatus.RUNNING, False, True, "recovering"),
        ((D, R, P), ProjectStatus.RUNNING, False, False, "running"),
        ((P, P, P), ProjectStatus.PENDING, False, False, "pending"),
    ],
)
def test_each_scene_gets_one_outcome_from_its_stages_and_its_projects_state(
    stages: tuple, project: ProjectStatus, expired: bool, recovered: bool, expected: str
) -> None:
    assert scene_outcome(*stages, project, lease_expired=expired, recovered=recovered) == expected


def test_histogram_buckets_are_cumulative_and_end_with_every_value() -> None:
    assert cumulative_buckets([0.05, 0.5, 0.5, 3.0, 99.0], (0.1, 1.0, 10.0)) == [
        ("0.1", 1.0),
        ("1.0", 3.0),
        ("10.0", 4.0),
        ("+Inf", 5.0),
    ]


def _seed(settings: Settings) -> None:
    """Two projects: one completed (a degraded scene), one running whose lease ran out; runs and jobs."""
    with session_scope(settings.database_url) as s:
        done = Project(title="done", status=ProjectStatus.COMPLETED, storyboard_json={}, created_at=NOW)
        stuck = Project(
            title="stuck",
            status=ProjectStatus.RUNNING,
            storyboard_json={},
            created_at=NOW - timedelta(hours=1),
            lease_until=NOW - timedelta(minutes=5),
        )
        s.add_all([done, stuck])
        s.flush()
        common = {"duration_s": 2, "fps": 12, "width": 64, "height": 36}
        scenes = [
            Scene(project_id=done.id, scene_index=1, generation_status=D, analysis_status=D, registry_status=D),
            Scene(project_id=done.id, scene_index=2, generation_status=D, analysis_status=G, registry_status=D),
            Scene(project_id=stuck.id, scene_index=1, generation_status=R, analysis_status=P, registry_status=P),
        ]
        for scene in scenes:
            for key, value in common.items():
                setattr(scene, key, value)
        s.add_all(scenes)
        s.flush()
        s.add_all(
            [
                SceneManifest(scene_id=scenes[0].id, continuity_score=0.95),
                SceneManifest(scene_id=scenes[1].id, continuity_score=0.42),
            ]
        )
        started = NOW - timedelta(minutes=10)
        for i, (name, seconds, outcome, attempts, crashes) in enumerate(
            [
                ("vidpipe.generate_clip", 3.0, "success", 1, 0),
                ("vidpipe.generate_clip", 40.0, "success", 3, 1),
                ("vidpipe.analyze_clip", 0.5, "degraded", 1, 0),
                ("vidpipe.analyze_clip", 0.0, "duplicate", 2, 0),
                ("vidpipe.generate_clip", 0.0, "running", 1, 0),
            ]
        ):
            s.add(
                TaskRun(
                    task_id=f"t{i}",
                    task_name=name,
                    project_id=done.id,
                    attempts=attempts,
                    retries=1 if attempts > 2 else 0,
                    polls=0,
                    crashes=crashes,
                    started_at=started,
                    finished_at=None if outcome == "running" else started + timedelta(seconds=seconds),
                    outcome=outcome,
                )
            )
        s.add_all(
            [
                GenerationJob(
                    project_id=done.id,
                    scene_index=1,
                    provider="veo",
                    state="downloaded",
                    cost_estimate=3.2,
                    generated_seconds=8.0,
                ),
                GenerationJob(project_id=done.id, scene_index=2, provider="veo", state="running"),
                GenerationJob(
                    project_id=done.id, scene_index=3, provider="veo", state="not_submitted", cost_estimate=9.0
                ),
            ]
        )


def test_the_collector_reports_projects_scenes_runs_scores_and_jobs_from_the_database(settings: Settings) -> None:
    _seed(settings)
    found = samples(VidpipeCollector(settings, ("database",)))

    def value(name: str, **labels: str) -> float:
        return found[(name, tuple(sorted(labels.items())))]

    assert value("vidpipe_projects", status="completed") == 1 and value("vidpipe_projects", status="running") == 1
    assert value("vidpipe_projects", status="failed") == 0
    assert value("vidpipe_scenes", outcome="done") == 1
    assert value("vidpipe_scenes", outcome="degraded") == 1
    # The running project's lease ran out before now: its scene is stalled, not running.
    assert value("vidpipe_scenes", outcome="stalled") == 1 and value("vidpipe_scenes", outcome="running") == 0
    assert value("vidpipe_scene_stages", stage="analysis", status="degraded") == 1
    assert value("vidpipe_scene_stages", stage="generation", status="running") == 1
    # Durations: the two finished generations (3 s and 40 s); the running one is not timed yet.
    gen = {"task": "generate_clip", "outcome": "success"}
    assert value("vidpipe_task_duration_seconds_count", **gen) == 2
    # SQLite subtracts Julian days: exact to well under a millisecond.
    assert value("vidpipe_task_duration_seconds_sum", **gen) == pytest.approx(43.0, abs=1e-3)
    assert value("vidpipe_task_duration_seconds_bucket", le="5.0", **gen) == 1
    assert value("vidpipe_task_duration_seconds_bucket", le="60.0", **gen) == 2
    assert value("vidpipe_task_runs", task="generate_clip", outcome="running") == 1
    assert value("vidpipe_task_attempts_total", task="generate_clip") == 5
    assert value("vidpipe_task_retries_total", task="generate_clip") == 1
    assert value("vidpipe_task_crashes_total", task="generate_clip") == 1
    # Redeliveries: a crash (generate_clip) or a skipped duplicate of a finished task (analyze_clip).
    assert value("vidpipe_task_redeliveries_total", task="generate_clip") == 1
    assert value("vidpipe_task_redeliveries_total", task="analyze_clip") == 1
    assert value("vidpipe_continuity_score_count") == 2
    assert value("vidpipe_continuity_score_bucket", le="0.5") == 1
    assert value("vidpipe_continuity_score_sum") == pytest.approx(1.37)
    assert value("vidpipe_generation_jobs_in_flight", provider="veo") == 1
    # A job the provider never took costs nothing.
    assert value("vidpipe_generation_spend_usd_total", provider="veo") == pytest.approx(3.2)
    assert value("vidpipe_exporter_source_up", source="database") == 1


def test_a_source_that_fails_is_reported_down_and_the_others_still_answer(settings: Settings) -> None:
    def broker_down() -> list:
        raise ConnectionError("broker unreachable")

    collector = VidpipeCollector(settings, ("database", "broker", "gpu"), queue_depths=broker_down)
    found = samples(collector)
    assert found[("vidpipe_exporter_source_up", (("source", "broker"),))] == 0
    assert found[("vidpipe_exporter_source_up", (("source", "database"),))] == 1
    assert not any(name.startswith("vidpipe_queue_") for name, _ in found)


def test_without_nvml_the_gpu_source_is_down_and_no_gpu_series_is_invented(settings: Settings) -> None:
    from vidpipe_tasks.metrics import nvml_samples

    assert nvml_samples("libnvidia-ml-not-here.so.1") is None
    collector = VidpipeCollector(settings, ("gpu",), gpu_samples=lambda: nvml_samples("libnvidia-ml-not-here.so.1"))
    found = samples(collector)
    assert found[("vidpipe_exporter_source_up", (("source", "gpu"),))] == 0
    assert not any(name.startswith("vidpipe_gpu_") for name, _ in found)


def test_an_unknown_source_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown metric source"):
        VidpipeCollector(None, ("database", "disk"))  # type: ignore[arg-type]
