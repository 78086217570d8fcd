"""CV worker process model: a prefork parent that stays responsive, models loaded once in each pool child.

The launcher starts every CV worker as `celery worker -P prefork -c K -I gpu_worker.process_model`. The
parent process never imports torch or onnxruntime: it consumes the queue, sends heartbeats and events
(Flower shows the worker online with its active task) and answers `inspect`/`ping` while a child
analyses, and it enforces the soft and hard time limits (a hung native call is killed with its child,
and billiard forks a fresh one). Each child loads its models in `worker_process_init`, after the fork,
so no CUDA state ever crosses a fork (CUDA cannot be re-initialised in a forked child).

Importing this module is cheap and CUDA-free: the heavy imports happen inside the handlers, in the child.
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

from celery.signals import worker_init, worker_process_init, worker_ready

log = logging.getLogger("gpu_worker.process_model")

#: This module, as the launcher passes it to `celery worker --include`.
MODULE = __name__
#: VIDPIPE_WARM_ENGINE value that asks for models loaded in each pool child (solo workers use "1").
WARM_IN_CHILD = "child"
#: Seconds a pool child may take in `worker_process_init` (Celery's default of 4 s kills a child that is
#: still loading an insightface pack and open_clip weights, or creating its first CUDA context).
MODEL_LOAD_TIMEOUT_S = 300.0
#: Environment variable naming the file where a worker reports readiness to the launcher.
READY_FILE_ENV = "VIDPIPE_READY_FILE"
#: Lines written to the ready file: the parent once its consumer runs, each child once its models loaded.
CONSUMER_READY, MODELS_READY = "consumer", "models"


def warms_in_child(environ: dict[str, str] | None = None) -> bool:
    """True in a CV worker the launcher started (models belong in the pool children)."""
    return (os.environ if environ is None else environ).get("VIDPIPE_WARM_ENGINE") == WARM_IN_CHILD


def report_ready(line: str) -> None:
    """Append one readiness line to the launcher's ready file, if it gave one (small appends are atomic)."""
    path = os.environ.get(READY_FILE_ENV)
    if path:
        with Path(path).open("a") as out:
            out.write(f"{line} {os.getpid()}\n")


def ready_counts(path: Path) -> dict[str, int]:
    """How many lines of each kind the ready file holds (missing file: none)."""
    counts = {CONSUMER_READY: 0, MODELS_READY: 0}
    if path.is_file():
        for line in path.read_text().splitlines():
            kind = line.split(" ", 1)[0]
            if kind in counts:
                counts[kind] += 1
    return counts


@worker_init.connect
def _raise_child_start_timeout(sender: object = None, **_: object) -> None:
    """Give pool children time to load models (set before the pool starts, which reads it)."""
    if warms_in_child() and sender is not None:
        conf = sender.app.conf
        conf.worker_proc_alive_timeout = max(float(conf.worker_proc_alive_timeout or 0), MODEL_LOAD_TIMEOUT_S)


@worker_ready.connect
def _consumer_ready(**_: object) -> None:
    if warms_in_child():
        report_ready(CONSUMER_READY)


@worker_process_init.connect
def _load_models_in_child(**_: object) -> None:
    """Load this child's models once, before its first task; a model that cannot load stops the worker."""
    if not warms_in_child():
        return
    from gpu_worker.faces.base import EngineUnavailable
    from gpu_worker.lifecycle import get_models
    from vidpipe_tasks.celery_app import settings

    try:
        get_models(settings)
    except EngineUnavailable as exc:
        # Ask the parent for a warm shutdown (the launcher restarts it with backoff) rather than degrade
        # every scene this worker would take; exiting here would only make billiard fork another child.
        log.error("CV worker cannot start: %s", exc)
        os.kill(os.getppid(), signal.SIGTERM)
        return
    report_ready(MODELS_READY)
