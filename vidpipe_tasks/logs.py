"""JSON-lines logs for log shippers: every record of a worker with its project, scene, task id and worker."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

#: The node name (`gen@host`) of this worker process, set once Celery has chosen it.
_node: dict[str, str | None] = {"name": None}


def set_node_name(name: str | None) -> None:
    _node["name"] = name


def task_context() -> dict[str, Any]:
    """Task id, name, project and scene of the task this thread runs, or {} outside a task.

    The first argument of every pipeline task is its JSON reference ({"project_id", "scene_index", ...});
    it came from a message, so only integers are taken from it.
    """
    from celery._state import get_current_task

    task = get_current_task()
    request = getattr(task, "request", None)
    if task is None or request is None or request.id is None:
        return {}
    args = request.args or []
    ref = args[0] if args and isinstance(args[0], dict) else {}
    context: dict[str, Any] = {"task_id": request.id, "task": task.name}
    for key in ("project_id", "scene_index"):
        value = ref.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            context[key] = value
    if request.hostname:
        context["worker"] = request.hostname
    return context


class JsonLinesFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, message, pid, worker, and the task's context."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
            "worker": _node["name"],
        }
        entry |= task_context()
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def use_json_lines(logger: logging.Logger) -> None:
    """Give every handler of `logger` the JSON-lines format (Celery's own handlers included)."""
    for handler in logger.handlers:
        handler.setFormatter(JsonLinesFormatter())


def install_json_lines() -> None:
    """From process start: Python warnings become log records and every root handler writes JSON lines.

    Called when the app module loads, before Celery configures logging, so what a worker says early (a
    warning at start-up) is a JSON line too; Celery's own handlers get the format on `after_setup_logger`.
    """
    logging.captureWarnings(True)
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler(sys.stderr))
    use_json_lines(root)
