"""Exceptions shared by the stages, the task policy and the commands (no heavy imports here)."""


class ProjectCancelled(RuntimeError):
    """The project was cancelled; the rest of its chain must not run."""


class SchemaNotReady(RuntimeError):
    """The database is not at the schema this code expects; `vidpipe db upgrade` fixes it."""


class TransientError(RuntimeError):
    """A failure expected to pass by itself (a server restarting, a 429, a 5xx): the task is retried with backoff.

    Raised by stages and adapters; `vidpipe_tasks.policy.PipelineTask` retries it like a broker or database
    disconnect. `retry_after` is the wait the remote side asked for (e.g. a `Retry-After` header), if any.
    """

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentStageError(RuntimeError):
    """A failure that retrying cannot fix (a bad request, an invalid workflow, content policy).

    The scene's stage fails with `reason` (a short machine-readable word such as "content_policy") and the
    message; the task is not retried. `detail` carries the provider's own words (JSON-serialisable).
    """

    def __init__(self, reason: str, message: str, detail: dict | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.detail = detail or {}


class JobPending(RuntimeError):
    """A remote job is still running: come back in `poll_after` seconds without holding a worker slot.

    Raised by a stage that polls a provider job it already stored; `PipelineTask` turns it into a Celery
    retry with that countdown (the rest of the chain travels with the retried message and waits for it).
    Polling is not an attempt: it never counts against the retry or poison-scene caps. `progress` is an
    optional dict reported as the task's progress (e.g. {"done": 40, "total": 100, "state": "running"}).
    """

    def __init__(self, message: str, poll_after: float, progress: dict | None = None) -> None:
        super().__init__(message)
        self.poll_after = poll_after
        self.progress = progress or {}


class SkipDelivery(RuntimeError):
    """This delivery is out of order or superseded (e.g. an analysis for a scene that has no clip yet).

    The task is acknowledged and its chain stops, changing no state; if the chain really needed it, the
    recovery sweep resumes the project from its first unfinished scene.
    """


class MessageIgnored(SkipDelivery):
    """A task message for a scene in the wrong state (e.g. analysis of a scene with no clip): it is dropped.

    A SkipDelivery, so `PipelineTask` acknowledges it and records the run as `ignored` (Celery's Ignore: no
    failure, the project is not marked FAILED, no later task of that message's chain is sent). A chain the
    system built never sends such a message; a crafted or stale one must not fail the project.
    """
