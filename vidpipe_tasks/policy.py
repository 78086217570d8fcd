"""Cross-cutting task policy in one place: run log, leases, retries, redelivery guards, progress, outcomes."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from billiard.process import current_process
from celery import Task, states
from celery.exceptions import Ignore, Retry, SoftTimeLimitExceeded, TimeLimitExceeded
from sqlalchemy import func, select, update

from vidpipe_tasks.db.models import Project, TaskRun
from vidpipe_tasks.db.session import session_scope
from vidpipe_tasks.errors import JobPending, PermanentStageError, ProjectCancelled, SkipDelivery
from vidpipe_tasks.transient import backoff_delay, is_transient

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Key of the retry state a transient retry adds to a task's first argument (stripped from results).
RETRY_KEY = "_retry"
#: Outcomes after which a run is over; "retrying"/"polling" wait for their retry message.
FINISHED = ("success", "degraded")


def _ids(args: tuple) -> tuple[int | None, int | None]:
    payload = args[0] if args and isinstance(args[0], dict) else {}
    return payload.get("project_id"), payload.get("scene_index")


def _attempt(args: tuple) -> int | None:
    """The scene attempt a candidate task works on (vidpipe_tasks.candidates); None for other tasks."""
    payload = args[0] if args and isinstance(args[0], dict) else {}
    attempt = payload.get("attempt")
    return attempt if isinstance(attempt, int) and not isinstance(attempt, bool) else None


def _epoch(args: tuple) -> int | None:
    payload = args[0] if args and isinstance(args[0], dict) else {}
    return payload.get("epoch")


def now() -> datetime:
    return datetime.now(UTC)


@contextmanager
def solo_soft_time_limit(seconds: float | None) -> Iterator[None]:
    """Raise SoftTimeLimitExceeded in the task after `seconds`, where Celery enforces no limit itself.

    The solo pool runs tasks on the worker's main thread and ignores time limits. There a SIGALRM timer
    stands in for the soft limit: the exception surfaces at the next Python instruction, so an analysis
    degrades instead of holding its GPU until the visibility timeout. Prefork children ("ForkPoolWorker-N")
    and thread pools keep Celery's own enforcement and are left alone. A native call that never returns is
    not interrupted.
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


def persist(write: Callable[[], T], window: float, what: str, *, required: bool = False) -> T | None:
    """Run a database write, waiting out a transient error (a restart) for up to `window` seconds.

    Bookkeeping (`required=False`): the failure path must never raise (on the solo pool an exception there
    stops the worker), so after the window this logs and returns None; the recovery sweep repairs whatever
    the write would have recorded. A write the task cannot go on without (`required=True`) raises instead.
    """
    deadline = time.monotonic() + window
    attempt = 0
    while True:
        try:
            return write()
        except Exception as exc:
            if not is_transient(exc) or time.monotonic() >= deadline:
                if required:
                    raise
                log.error("could not record %s: %s: %s", what, type(exc).__name__, exc)
                return None
            time.sleep(min(backoff_delay(attempt, 0.2, 2.0), max(0.0, deadline - time.monotonic())))
            attempt += 1


def extend_lease(database_url: str, project_id: int, seconds: float) -> None:
    """Push the project's lease `seconds` into the future (its chain is alive until then)."""
    with session_scope(database_url) as s:
        until = now() + timedelta(seconds=seconds)
        s.execute(update(Project).where(Project.id == project_id).values(lease_until=until))


@contextmanager
def heartbeat(database_url: str, project_id: int | None, interval: float, ttl: float) -> Iterator[None]:
    """Refresh the project's lease every `interval` seconds while the task runs (a thread; errors ignored)."""
    if project_id is None:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval):
            try:
                extend_lease(database_url, project_id, ttl)
            except Exception as exc:  # a database restart: the next beat tries again
                log.debug("heartbeat for project %s failed: %s", project_id, exc)

    thread = threading.Thread(target=beat, name=f"vidpipe-heartbeat-{project_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()


class PipelineTask(Task):
    """Base for vidpipe tasks: the one place where retries, leases, guards and the task-run log live.

    * Every run is recorded in `task_runs` inside `__call__`, so `finished_at` is committed before Celery
      sends the chain's next message (ordering checks compare it with the next task's `started_at`).
    * A transient infrastructure error (broker, result backend, database) is retried with backoff and jitter
      for `transient_retry_window` seconds; publishing the next link retries as long (celery_app).
    * `JobPending` becomes a retry with its countdown: a remote job is polled without holding a worker slot.
    * `PermanentStageError` and any other exception fail the task for good: `_fail` marks the scene's
      stage and the project FAILED with the reason. The failure path never raises.
    * A delivery from a superseded chain (older epoch) or a redelivery of a finished task whose chain went on
      is skipped; a task interrupted `max_task_crashes` times fails its project (a poison scene).
    * While a task runs, a heartbeat keeps its project's lease fresh; the recovery sweep resumes chains whose
      lease ran out with nothing queued (vidpipe_tasks.recovery).
    """

    #: Idempotent by construction, so redelivery after a lost worker is safe.
    acks_late = True
    reject_on_worker_lost = True
    #: Retries are bounded by the transient window (and polls by the scene deadline), not by a count.
    max_retries = None

    @property
    def settings(self):  # noqa: ANN201 - vidpipe_tasks.settings.Settings (kept import-free)
        return self.app.vidpipe_settings

    @property
    def database_url(self) -> str:
        return self.settings.database_url

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        task_id = self.request.id
        if task_id is None:  # called directly as a function, not through a worker
            return super().__call__(*args, **kwargs)
        project_id, _ = _ids(args)
        try:
            skip = self._begin(task_id, args)
            if skip:
                log.warning("%s[%s] skipped: %s", self.name, task_id, skip)
                # Ignore acks the message without storing a result or sending the rest of its chain.
                raise Ignore()
            timed_out = self._earlier_timeout(args)
            if timed_out is not None and (given_up := self.after_timeout(args, timed_out)) is not None:
                self._record(task_id, "degraded", timed_out, lease=project_id)
                return self._carry_epoch(given_up, args)
            with (
                heartbeat(self.database_url, project_id, self.settings.heartbeat_interval, self.settings.lease_ttl),
                solo_soft_time_limit(self.soft_time_limit),
            ):
                result = super().__call__(*args, **kwargs)
        except (Ignore, Retry):
            raise
        except ProjectCancelled as exc:
            self._record(task_id, "cancelled", str(exc))
            raise Ignore() from exc
        except SkipDelivery as exc:
            log.warning("%s[%s] ignored: %s", self.name, task_id, exc)
            self._record(task_id, "ignored", str(exc))
            raise Ignore() from exc
        except JobPending as pending:
            self._poll_later(task_id, args, kwargs, pending)
        except Exception as exc:
            permanent = isinstance(exc, PermanentStageError)
            if not permanent and is_transient(exc):
                self._retry_transient(task_id, args, kwargs, exc)
            reason = f"{exc.reason}: {exc}" if permanent else f"{type(exc).__name__}: {exc}"
            contained = self._contain(task_id, args, reason)
            if contained is not None:
                return contained
            self._fail(task_id, args, reason)
            raise
        result = self._carry_epoch(result, args)
        degraded = isinstance(result, dict) and result.get("outcome") == "degraded"
        self._record(task_id, "degraded" if degraded else "success", result_detail(result), lease=project_id)
        return result

    # -- guards at the start of a run -------------------------------------------------------------------

    def _begin(self, task_id: str, args: tuple) -> str | None:
        """Record the start; return why this delivery must be skipped, or None to run it.

        Raises:
            PermanentStageError: the scene's task was interrupted too often (poison scene).

        """
        project_id, scene_index = _ids(args)
        next_ids = [first_task_id(link) for link in self.next_links()]
        delivery = self.request.delivery_info or {}

        def write() -> str | None:
            with session_scope(self.database_url) as s:
                project = s.get(Project, project_id) if project_id is not None else None
                epoch = _epoch(args)
                run = s.scalar(select(TaskRun).where(TaskRun.task_id == task_id))
                if project is not None and epoch is not None and epoch != project.chain_epoch:
                    return self._close(s, run, task_id, args, "stale", f"chain epoch {epoch} superseded")
                went_on = not next_ids or any(i is None or _has_run(s, i) for i in next_ids)
                if run is not None and run.outcome in FINISHED and went_on:
                    return self._close(s, run, task_id, args, "duplicate", "redelivery of a finished task")
                if run is None:
                    run = self._new_run(s, task_id)
                elif run.outcome == "running":
                    run.crashes += 1  # the previous start never finished: its worker was lost
                run.attempts += 1
                run.project_id, run.scene_index, run.attempt = project_id, scene_index, _attempt(args)
                run.queue = delivery.get("routing_key") or delivery.get("queue")
                run.worker = self.request.hostname
                run.started_at, run.finished_at, run.outcome, run.detail = now(), None, "running", None
                if project is not None:
                    project.lease_until = now() + timedelta(seconds=self.settings.lease_ttl)
                s.flush()
                crashes = _crash_count(s, project_id, scene_index, self.name, _attempt(args))
            if scene_index is not None and crashes >= self.settings.max_task_crashes:
                raise PermanentStageError(
                    "poison",
                    f"{self.name.removeprefix('vidpipe.')} of scene {scene_index} was interrupted {crashes} times "
                    f"(worker lost mid-run; limit VIDPIPE_MAX_TASK_CRASHES={self.settings.max_task_crashes})",
                )
            return None

        # Past 30 s the task is retried through Celery instead, freeing its slot.
        return persist(write, min(self.settings.transient_retry_window, 30.0), f"start of {task_id}", required=True)

    def after_timeout(self, args: tuple, reason: str) -> Any:
        """The result to return, without running, for a scene task that already hit its hard time limit.

        None (the default): run it again (the timeout counted as a crash toward the poison cap). The
        analysis task returns a degraded analysis: a hung analysis degrades its scene, the chain goes on.
        """
        return None

    def _earlier_timeout(self, args: tuple) -> str | None:
        project_id, scene_index = _ids(args)
        if project_id is None or scene_index is None:
            return None
        attempt = _attempt(args)
        with session_scope(self.database_url) as s:
            detail = s.scalar(
                select(TaskRun.detail)
                .where(
                    TaskRun.project_id == project_id,
                    TaskRun.scene_index == scene_index,
                    TaskRun.task_name == self.name,
                    TaskRun.outcome == "timeout",
                    *(() if attempt is None else (TaskRun.attempt == attempt,)),
                )
                .limit(1)
            )
        return None if detail is None else f"an earlier attempt was ended by its hard time limit ({detail})"

    def contained_failure(self, args: tuple, reason: str) -> Any:
        """The result to return instead of failing the project when the task fails for good.

        None (the default): the failure ends the chain and the project (`_fail`). A candidate task records
        its attempt as failed and passes that on: one failed candidate does not fail its scene.
        """
        return None

    def _contain(self, task_id: str, args: tuple, reason: str) -> Any:
        """`contained_failure`'s result, recorded as a degraded run (finished: a redelivery of it is a duplicate).

        None when the task has no such result or it could not be recorded: the task then fails as usual.
        """
        project_id, _ = _ids(args)
        result = persist(lambda: self.contained_failure(args, reason), self.settings.transient_retry_window,
                         f"contained failure of {task_id}")  # fmt: skip
        if result is None:
            return None
        log.warning("%s[%s] failed; recorded and passed on: %s", self.name, task_id, reason)
        self._record(task_id, "degraded", reason[:500], lease=project_id)
        return self._carry_epoch(result, args)

    def on_failure(self, exc: Exception, task_id: str, args: tuple, kwargs: dict, einfo: Any) -> None:
        """The pool parent's report of a hard time limit: the child was killed, so record it and go on.

        Failures raised inside the task were recorded by `__call__` already. A hard time limit kills the
        pool child mid-run and acks the message, so the chain would be lost: the run is closed as `timeout`
        and the project is queued again at once; the next attempt of an analysis degrades its scene
        (`after_timeout`), other tasks run again until the poison cap.
        """
        if not isinstance(exc, TimeLimitExceeded):
            return
        project_id, _ = _ids(args)
        self._record(task_id, "timeout", f"hard time limit: {exc}")
        if project_id is None:
            return
        from vidpipe_tasks.workflow import enqueue_project

        def requeue() -> None:
            try:
                enqueue_project(self.app, self.settings, int(project_id), closing="abandoned: hard time limit")
            except (LookupError, ValueError, RuntimeError) as err:  # finished, cancelled or queued meanwhile
                log.info("project %s not queued again after a time limit: %s", project_id, err)

        persist(requeue, self.settings.transient_retry_window, f"requeue of project {project_id}")

    def _close(self, s: Any, run: TaskRun | None, task_id: str, args: tuple, outcome: str, detail: str) -> str:
        project_id, scene_index = _ids(args)
        if run is None:
            run = self._new_run(s, task_id)
            run.project_id, run.scene_index, run.started_at = project_id, scene_index, now()
        if run.outcome not in FINISHED:  # a finished run keeps its outcome; the skip is only logged
            run.outcome, run.detail, run.finished_at = outcome, detail, now()
        return detail

    def _new_run(self, s: Any, task_id: str) -> TaskRun:
        run = TaskRun(task_id=task_id, task_name=self.name, attempts=0, retries=0, polls=0, crashes=0)
        s.add(run)
        return run

    def next_links(self) -> list[dict]:
        """The links this task may send next; a finished run whose chain started any of them is a duplicate.

        Celery keeps the rest of the chain reversed in the message; the next link is the last entry. A task
        that removes links before sending the next one (the pick of a kept attempt) names them all.
        """
        return list((self.request.chain or [])[-1:])

    # -- retries --------------------------------------------------------------------------------------------

    def _retry_transient(self, task_id: str, args: tuple, kwargs: dict, exc: Exception) -> None:
        """Schedule a retry with backoff, or return (the caller fails the task) once the window is spent."""
        settings = self.settings
        payload = args[0] if args and isinstance(args[0], dict) else {}
        state = payload.get(RETRY_KEY) or {}
        since, count = float(state.get("since", time.time())), int(state.get("count", 0))
        if time.time() - since > settings.transient_retry_window:
            spent = time.time() - since
            log.error("%s[%s]: transient errors for %.0f s, giving up: %s", self.name, task_id, spent, exc)
            return
        delay = backoff_delay(count, settings.retry_backoff_base, settings.retry_backoff_max)
        delay = max(delay, float(getattr(exc, "retry_after", None) or 0))
        detail = f"{type(exc).__name__}: {exc}"[:500]
        log.warning("%s[%s]: transient error, retry %d in %.1f s: %s", self.name, task_id, count + 1, delay, detail)
        self._mark_waiting(task_id, args, "retrying", detail, delay, counter="retries")
        retried = ({**payload, RETRY_KEY: {"since": since, "count": count + 1}}, *args[1:]) if payload else args
        raise self.retry(args=retried, kwargs=kwargs, countdown=delay, exc=exc)

    def _poll_later(self, task_id: str, args: tuple, kwargs: dict, pending: JobPending) -> None:
        """Re-send the task after `poll_after` seconds; no slot is held meanwhile and no attempt is counted."""
        self.progress(self.name.removeprefix("vidpipe."), **{"done": 0, "total": 1, **pending.progress})
        self._mark_waiting(task_id, args, "polling", str(pending)[:500], pending.poll_after, counter="polls")
        payload = args[0] if args and isinstance(args[0], dict) else {}
        fresh = ({k: v for k, v in payload.items() if k != RETRY_KEY}, *args[1:]) if payload else args
        raise self.retry(args=fresh, kwargs=kwargs, countdown=pending.poll_after)

    def _mark_waiting(self, task_id: str, args: tuple, outcome: str, detail: str, delay: float, counter: str) -> None:
        project_id, _ = _ids(args)

        def write() -> None:
            with session_scope(self.database_url) as s:
                run = s.scalar(select(TaskRun).where(TaskRun.task_id == task_id))
                if run is not None:
                    run.outcome, run.detail = outcome, detail
                    setattr(run, counter, (getattr(run, counter) or 0) + 1)
                if project_id is not None:
                    lease = now() + timedelta(seconds=delay + self.settings.lease_ttl)
                    s.execute(update(Project).where(Project.id == project_id).values(lease_until=lease))

        # Short: the database may be the thing that is down, and the retry must still be sent.
        persist(write, min(5.0, self.settings.transient_retry_window), f"{outcome} of {task_id}")

    # -- outcomes ---------------------------------------------------------------------------------------------

    def _fail(self, task_id: str, args: tuple, reason: str) -> None:
        """A task that failed for good ends its chain: its scene stage and project become FAILED, with why.

        Recorded here rather than in `on_failure`, which gets the exception back through the result
        serializer (a PermanentStageError arrives as a plain RuntimeError, its reason lost). Never raises:
        if the database stays down, the project keeps RUNNING with an expiring lease and the recovery sweep
        resumes it (the failure then recurs and is recorded).
        """
        self._record(task_id, "failure", reason)
        project_id, scene_index = _ids(args)
        if project_id is None:
            return
        from vidpipe_tasks.stages import mark_failed

        persist(
            lambda: mark_failed(self.settings, int(project_id), scene_index, self.name, reason),
            self.settings.transient_retry_window,
            f"failure of project {project_id}",
        )

    def _record(self, task_id: str, outcome: str, detail: str | None, lease: int | None = None) -> None:
        def write() -> None:
            with session_scope(self.database_url) as s:
                run = s.scalar(select(TaskRun).where(TaskRun.task_id == task_id))
                if run is not None:
                    run.finished_at, run.outcome, run.detail = now(), outcome, detail
                if lease is not None:
                    # Covers the hand-off: the next link is published right after this returns.
                    until = now() + timedelta(seconds=self.settings.lease_ttl)
                    s.execute(update(Project).where(Project.id == lease).values(lease_until=until))

        persist(write, self.settings.transient_retry_window, f"{outcome} of {task_id}")

    @staticmethod
    def _carry_epoch(result: Any, args: tuple) -> Any:
        """The next link receives this result as its argument: it carries the chain's epoch on."""
        epoch = _epoch(args)
        if isinstance(result, dict) and epoch is not None and "epoch" not in result:
            return {**result, "epoch": epoch}
        return result

    def progress(self, stage: str, done: int, total: int, **info: Any) -> None:
        """Report progress to the result backend (API clients) and as an event (Flower), best effort.

        The state stays STARTED (as `task_track_started` stored it) with the progress in its meta, so
        `AsyncResult.state` and Flower's "Started" filter both show a running task as started; the
        `task-progress` event carries the same fields (vidpipe_tasks.flower_app keeps the state STARTED
        there too). Progress must never fail or stall the work: a broker or backend outage skips the
        report (a backend without retries is used, and after a failure reports pause for a few seconds).
        """
        if self.request.id is None or self.request.is_eager:  # no worker, nobody watching
            return
        if time.monotonic() < _PROGRESS_PAUSED_UNTIL.get("t", 0.0):
            return
        meta = {"stage": stage, "done": done, "total": total, **info}
        # What task_track_started stores (pid, hostname), so the STARTED meta only grows.
        started = {"pid": os.getpid(), "hostname": self.request.hostname}
        try:
            quick_backend(self.app).store_result(
                self.request.id, {**started, **meta}, states.STARTED, request=self.request
            )
            self.send_event("task-progress", retry=False, **meta)
        except Exception as exc:
            _PROGRESS_PAUSED_UNTIL["t"] = time.monotonic() + 5.0
            log.info("progress report skipped (%s: %s)", type(exc).__name__, exc)


_PROGRESS_PAUSED_UNTIL: dict[str, float] = {}
_QUICK_BACKENDS: dict[int, Any] = {}


def quick_backend(app: Any) -> Any:
    """A second result-backend client for progress only: no retries, so an outage costs one failed call."""
    key = os.getpid()
    backend = _QUICK_BACKENDS.get(key)
    if backend is None:
        backend = type(app.backend)(app=app, url=app.conf.result_backend)
        backend.always_retry = False
        if isinstance(getattr(backend, "retry_policy", None), dict):
            backend.retry_policy = {**backend.retry_policy, "max_retries": 0}
        _QUICK_BACKENDS[key] = backend
    return backend


def first_task_id(signature: object) -> str | None:
    """The id of the first task a chain link runs: a task's own; a chord's or group's first header task.

    A scene with candidates starts with a chord (vidpipe_tasks.workflow): the guard against a redelivered
    finished task must look at the first candidate, which runs as soon as the chord is sent, not at the
    chord's callback.
    """
    if isinstance(signature, list | tuple):  # a chord's header before it became a group
        return first_task_id(signature[0]) if signature else None
    if not isinstance(signature, dict):
        return None
    kind, kwargs = signature.get("subtask_type"), signature.get("kwargs") or {}
    if kind == "chord":
        return first_task_id(kwargs.get("header"))
    if kind in ("group", "chain"):
        tasks = kwargs.get("tasks") or []
        return first_task_id(tasks[0]) if tasks else None
    return (signature.get("options") or {}).get("task_id")


def _has_run(session: Any, task_id: str) -> bool:
    return session.scalar(select(func.count()).select_from(TaskRun).where(TaskRun.task_id == task_id)) > 0


def _crash_count(
    session: Any, project_id: int | None, scene_index: int | None, task_name: str, attempt: int | None = None
) -> int:
    """Interruptions of one scene's task: starts that found it still running, abandoned and timed-out attempts.

    Per scene attempt for candidate tasks: K candidates abandoned at once by one resume count once each.
    """
    if project_id is None or scene_index is None:
        return 0
    where = (TaskRun.project_id == project_id, TaskRun.scene_index == scene_index, TaskRun.task_name == task_name)
    if attempt is not None:
        where = (*where, TaskRun.attempt == attempt)
    crashes = session.scalar(select(func.coalesce(func.sum(TaskRun.crashes), 0)).where(*where))
    ended = TaskRun.outcome.in_(("abandoned", "timeout"))
    abandoned = session.scalar(select(func.count()).select_from(TaskRun).where(*where, ended))
    return int(crashes) + int(abandoned)


def result_detail(result: Any) -> str | None:
    """A short human-readable detail for the task-run log."""
    if isinstance(result, dict) and result.get("reason"):
        return str(result["reason"])[:500]
    return None
