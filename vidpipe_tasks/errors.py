"""Exceptions shared by the stages, the task policy and the commands (no heavy imports here)."""


class ProjectCancelled(RuntimeError):
    """The project was cancelled; the rest of its chain must not run."""


class SchemaNotReady(RuntimeError):
    """The database is not at the schema this code expects; `vidpipe db upgrade` fixes it."""
