"""The Celery app: three explicit queues, routes by task name, JSON only, late acks, events on."""

from __future__ import annotations

import logging
import math
import os

from celery import Celery
from celery.signals import after_setup_logger, after_setup_task_logger, celeryd_after_setup
from kombu import Exchange, Queue

from vidpipe_tasks.settings import ALL_QUEUES, CV_QUEUE, GENERATION_QUEUE, REGISTRY_QUEUE, Settings, load_settings

#: Task name -> queue. Analysis lands on CUDA workers; generation and registry work stay on CPU workers.
TASK_ROUTES: dict[str, str] = {
    "vidpipe.generate_clip": GENERATION_QUEUE,
    "vidpipe.analyze_clip": CV_QUEUE,
    "vidpipe.register_entities": REGISTRY_QUEUE,
    "vidpipe.finalize_project": REGISTRY_QUEUE,
    "vidpipe.recover_stalled": REGISTRY_QUEUE,
    # Quality attempts (docs/quality.md): candidates beside the plain tasks; the pick is registry work.
    "vidpipe.generate_candidate": GENERATION_QUEUE,
    "vidpipe.analyze_candidate": CV_QUEUE,
    "vidpipe.pick_attempt": REGISTRY_QUEUE,
}
# Celery's chord poller (celery.chord_unlock, on result backends without native chords such as the embedded
# file:// one) is unrouted, so it lands on the default queue: the registry queue.

#: Hard time limit of the recovery sweep, seconds (the other tasks' limits are settings).
RECOVERY_TIME_LIMIT = 60


def hard_time_limits(settings: Settings) -> dict[str, int]:
    """Task name -> hard time limit in seconds, from settings; the Redis visibility timeout must exceed each."""
    return {
        "vidpipe.generate_clip": settings.generation_time_limit,
        "vidpipe.analyze_clip": settings.analysis_time_limit,
        "vidpipe.register_entities": settings.registry_time_limit,
        "vidpipe.finalize_project": settings.finalize_time_limit,
        "vidpipe.recover_stalled": RECOVERY_TIME_LIMIT,
        "vidpipe.generate_candidate": settings.generation_time_limit,
        "vidpipe.analyze_candidate": settings.analysis_time_limit,
        "vidpipe.pick_attempt": settings.registry_time_limit,
    }


def task_time_limits(settings: Settings) -> dict[str, tuple[int, int]]:
    """Task name -> (soft, hard) limits in seconds.

    The soft limit (90 % of the hard one) raises SoftTimeLimitExceeded in the task, so an analysis
    degrades its scene instead of failing the project. Celery enforces both in prefork children;
    a solo worker enforces neither (policy.solo_soft_time_limit stands in for the soft one there; the CV
    launcher runs prefork workers). A hard limit kills the pool child: the policy records the run as
    `timeout` and queues the project again; an analysis that timed out degrades its scene on the next try.
    """
    return {name: (max(1, int(limit * 0.9)), limit) for name, limit in hard_time_limits(settings).items()}


def redis_visibility_options(settings: Settings) -> dict:
    """The visibility timeout in all three places Celery reads it (the shortest one wins).

    Raises:
        ValueError: when it would not outlast the longest task time limit (the task would be redelivered
            to a second worker while the first still runs it).
    """
    longest = max(hard for _, hard in task_time_limits(settings).values())
    if settings.visibility_timeout <= longest:
        raise ValueError(
            f"VIDPIPE_VISIBILITY_TIMEOUT={settings.visibility_timeout} must exceed the longest task time limit "
            f"({longest} s)"
        )
    transport = {"visibility_timeout": settings.visibility_timeout}
    return {
        "broker_transport_options": dict(transport),
        "result_backend_transport_options": dict(transport),
        "visibility_timeout": settings.visibility_timeout,
    }


def outage_retry_options(settings: Settings) -> dict:
    """Publishing (the next link of a chain, a retry) and the result backend wait out an outage.

    Celery's defaults give up on a publish after 3 retries in about 0.6 s and never retry the result
    backend, so a Redis restart at a chain hand-off lost the chain (shared/notes/faults.md). Both now retry
    for `transient_retry_window` seconds, polling every few seconds.
    """
    interval_max = 2.0
    retries = math.ceil(settings.transient_retry_window / interval_max) + 5  # +5: the ramp up to interval_max
    return {
        "task_publish_retry": True,
        "task_publish_retry_policy": {
            "max_retries": retries,
            "interval_start": 0,
            "interval_step": 0.5,
            "interval_max": interval_max,
        },
        "result_backend_always_retry": True,
        "result_backend_max_retries": retries,
        "result_backend_base_sleep_between_retries_ms": 200,
        "result_backend_max_sleep_between_retries_ms": int(interval_max * 1000),
        # The consumer reconnects for as long as it takes (None: forever), and the first connection too.
        "broker_connection_max_retries": None,
    }


def beat_options(settings: Settings) -> dict:
    """Celery beat sends the recovery sweep every `recovery_interval` seconds.

    A sweep message that waited longer than one interval expires: the next one is as good.
    """
    return {
        "beat_schedule": {
            "vidpipe-recover-stalled": {
                "task": "vidpipe.recover_stalled",
                "schedule": settings.recovery_interval,
                "options": {"expires": settings.recovery_interval},
            }
        },
        "beat_schedule_filename": str(settings.home / "celerybeat-schedule"),
    }


def celery_config(settings: Settings) -> dict:
    """Celery settings derived from vidpipe settings (lowercase Celery 5 names)."""
    conf = {
        "broker_url": settings.broker_url,
        "result_backend": settings.result_backend,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_queues": [Queue(q, Exchange(q, type="direct"), routing_key=q) for q in ALL_QUEUES],
        # Unrouted tasks (none of ours) go to the cheap registry queue; no queue is ever created implicitly.
        "task_default_queue": REGISTRY_QUEUE,
        "task_default_exchange": REGISTRY_QUEUE,
        "task_default_routing_key": REGISTRY_QUEUE,
        "task_create_missing_queues": False,
        "task_routes": {name: {"queue": q, "routing_key": q} for name, q in TASK_ROUTES.items()},
        "task_annotations": {
            name: {"time_limit": hard, "soft_time_limit": soft}
            for name, (soft, hard) in task_time_limits(settings).items()
        },
        # Every task is idempotent (side effects keyed on project, scene and stage), so late acks are safe.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # Scenes take seconds to minutes: a worker reserves only what it is running.
        "worker_prefetch_multiplier": 1,
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "task_track_started": True,
        "result_expires": 7 * 24 * 3600,
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
        **outage_retry_options(settings),
        **beat_options(settings),
    }
    if settings.is_redis_broker or settings.result_backend.startswith(("redis://", "rediss://")):
        conf.update(redis_visibility_options(settings))
    if settings.is_filesystem_broker:
        queue_dir = str(settings.broker_dir / "queue")
        conf["broker_transport_options"] = {
            "data_folder_in": queue_dir,
            "data_folder_out": queue_dir,
            "processed_folder": str(settings.broker_dir / "processed"),
            "store_processed": settings.store_processed,
            # Absolute, or `celery inspect` run from another directory sees no workers.
            "control_folder": str(settings.broker_dir / "control"),
            "polling_interval": settings.poll_interval,
        }
    return conf


def create_app(settings: Settings) -> Celery:
    """Build the Celery app for `settings` and register vidpipe's tasks on it."""
    if settings.is_filesystem_broker:
        from vidpipe_tasks.fsbroker import install

        install()  # atomic message files for the embedded broker
    app = Celery("vidpipe")
    app.config_from_object(celery_config(settings))
    app.vidpipe_settings = settings
    return app


settings = load_settings()
if settings.log_format == "json":
    from vidpipe_tasks.logs import install_json_lines

    install_json_lines()
app = create_app(settings)


@after_setup_logger.connect
@after_setup_task_logger.connect
def _log_format(logger: logging.Logger, **_: object) -> None:
    """VIDPIPE_LOG_FORMAT=json: worker and beat logs as JSON lines with project, scene, task id and worker."""
    if settings.log_format == "json":
        from vidpipe_tasks.logs import use_json_lines

        use_json_lines(logger)


@celeryd_after_setup.connect
def _remember_node_name(sender: str, **_: object) -> None:
    from vidpipe_tasks.logs import set_node_name

    set_node_name(sender)


@celeryd_after_setup.connect
def _warm_cv_models(**_: object) -> None:
    """CV workers started by the launcher load their models before taking the first task.

    Runs once logging is set up (so the choice and its reason reach the worker log) and before the
    consumer starts.

    A model named explicitly in the settings that cannot load stops the worker here, with the reason,
    instead of degrading every scene it would take.
    """
    if os.environ.get("VIDPIPE_WARM_ENGINE") != "1":
        return
    from gpu_worker.faces.base import EngineUnavailable  # only CV workers set the variable
    from gpu_worker.lifecycle import get_models

    try:
        get_models(settings)
    except EngineUnavailable as exc:
        raise SystemExit(f"CV worker cannot start: {exc}") from exc


# Registers the tasks on `app`; imported last because the tasks module needs `app`.
import vidpipe_tasks.tasks  # noqa: E402, F401
