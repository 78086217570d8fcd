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
