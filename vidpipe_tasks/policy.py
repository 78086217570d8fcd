"""Cross-cutting task policy in one place: the task-run log, progress events and outcome recording."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from billiard.process import current_process
from celery import Task
from celery.exceptions import Ignore, SoftTimeLimitExceeded
from sqlalchemy import select

from vidpipe_tasks.db.models import TaskRun
from vidpipe_tasks.db.session import session_scope
from vidpipe_tasks.errors import ProjectCancelled

log = logging.getLogger(__name__)


def _ids(args: tuple) -> tuple[int | None, int | None]:
    payload = args[0] if args and isinstance(args[0], dict) else {}
    return payload.get("project_id"), payload.get("scene_index")


@contextmanager
def solo_soft_time_limit(seconds: float | None) -> Iterator[None]:
    """Raise SoftTimeLimitExceeded in the task after `seconds`, where Celery enforces no limit itself.

    The solo pool (every CV worker: one process owns the GPU and its models) runs tasks on the worker's
    main thread and ignores time limits. There a SIGALRM timer stands in for the soft limit: the
    exception surfaces at the next Python instruction, so an analysis degrades instead of holding its
    GPU until the visibility timeout. Prefork children ("ForkPoolWorker-N") and thread pools keep
    Celery's own enforcement and are left alone. A native call that never returns is not interrupted.
    """
    solo = threading.current_thread() is threading.main_thread() and current_process().name == "MainProcess"
    if not seconds or not solo:
        yield
        return

    def expired(signum: int, frame: object) -> None:
        raise SoftTimeLimitExceeded(f"soft time limit ({seconds:g} s) exceeded")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class PipelineTask(Task):
    """Base for vidpipe tasks: records each run (queue, worker, start, finish, outcome) in `task_runs`.

    The record is written inside `__call__`, so `finished_at` is committed before Celery sends the
    chain's next message; ordering checks can compare it with the next task's `started_at`.
    """

    #: Idempotent by construction, so redelivery after a lost worker is safe.
    acks_late = True
    reject_on_worker_lost = True

    @property
    def database_url(self) -> str:
        return self.app.vidpipe_settings.database_url

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        task_id = self.request.id
        if task_id is None:  # called directly as a function, not through a worker
            return super().__call__(*args, **kwargs)
        self._record_start(task_id, args)
        try:
            with solo_soft_time_limit(self.soft_time_limit):
                result = super().__call__(*args, **kwargs)
        except ProjectCancelled as exc:
            self._record_finish(task_id, "cancelled", str(exc))
            # Ignore ends this task without failing it and without sending the rest of the chain.
            raise Ignore() from exc
        except Exception as exc:
            self._record_finish(task_id, "failure", f"{type(exc).__name__}: {exc}")
            raise
        degraded = isinstance(result, dict) and result.get("outcome") == "degraded"
        self._record_finish(task_id, "degraded" if degraded else "success", result_detail(result))
        return result

    def on_failure(self, exc: Exception, task_id: str, args: tuple, kwargs: dict, einfo: Any) -> None:
        """A task that failed for good ends its chain: mark the project FAILED so `wait` and `status` say so.

        Not called for a redelivery after a lost worker; `vidpipe resume` restarts a failed project.
        """
        project_id, scene_index = _ids(args)
        if project_id is not None:
            from vidpipe_tasks.stages import mark_failed

            mark_failed(
                self.app.vidpipe_settings, int(project_id), scene_index, self.name, f"{type(exc).__name__}: {exc}"
            )

    def _record_start(self, task_id: str, args: tuple) -> None:
        project_id, scene_index = _ids(args)
        delivery = self.request.delivery_info or {}
        with session_scope(self.database_url) as s:
            run = s.scalar(select(TaskRun).where(TaskRun.task_id == task_id))
            if run is None:
                run = TaskRun(task_id=task_id, task_name=self.name, attempts=0)
                s.add(run)
            run.attempts += 1
            run.project_id, run.scene_index = project_id, scene_index
            run.queue = delivery.get("routing_key") or delivery.get("queue")
            run.worker = self.request.hostname
            run.started_at, run.finished_at, run.outcome, run.detail = datetime.now(UTC), None, "running", None

    def _record_finish(self, task_id: str, outcome: str, detail: str | None) -> None:
        with session_scope(self.database_url) as s:
            run = s.scalar(select(TaskRun).where(TaskRun.task_id == task_id))
            if run is not None:
                run.finished_at, run.outcome, run.detail = datetime.now(UTC), outcome, detail

    def progress(self, stage: str, done: int, total: int, **info: Any) -> None:
        """Report progress to the result backend (API clients) and as an event (Flower, `celery events`)."""
        meta = {"stage": stage, "done": done, "total": total, **info}
        if self.request.id is None or self.request.is_eager:  # no worker, nobody watching
            return
        self.update_state(state="PROGRESS", meta=meta)
        self.send_event("task-progress", **meta)


def result_detail(result: Any) -> str | None:
    """A short human-readable detail for the task-run log."""
    if isinstance(result, dict) and result.get("reason"):
        return str(result["reason"])[:500]
    return None
