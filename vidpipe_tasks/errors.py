"""Exceptions shared by the stages and the task policy."""


class ProjectCancelled(RuntimeError):
    """The project was cancelled; the rest of its chain must not run."""
