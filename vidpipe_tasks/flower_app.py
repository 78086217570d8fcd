"""Flower as vidpipe runs it: project, scene, stage and progress on every task, STARTED kept, and viewer logins.

Imported only by the Flower process (`vidpipe flower`, and deploy/flower/flowerconfig.py for `format_task`).
Everything here extends Flower 2.2 through its own hooks or plain subclasses:

* tasks: Celery's event state (`celery.events.state.State.Task`) gets a Task class with four more fields
  (`_fields`, which `as_dict` and so `/api/tasks` and `/api/task/info` list, and Flower's task page shows), and
  Flower's tasks table learns their column slugs (`flower.views.tasks.TASK_COLUMNS`, read by the
  `tasks_columns` option). `format_task` (a Flower option) turns progress into a line of text for the pages.
* progress: a `task-progress` event updates the task's `progress` and leaves its state STARTED, so Flower's
  "Started" filter lists the running tasks (Celery would make the custom event a state, PROGRESS).
* roles: Flower has basic auth but no roles. `VidpipeFlower.get_handler_delegate` (tornado's documented hook
  between routing and the handler) serves every route through a subclass of its handler that maps the
  basic-auth login to a role: a viewer may GET anything (and POST the tasks table's query) and nothing else,
  and sees the pages as Flower's read-only mode renders them; /metrics needs a login.
"""

from __future__ import annotations

import hmac
import os
import re
import runpy
import signal
from base64 import b64decode
from binascii import Error as Base64Error
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from celery import states
from celery.events.state import Task
from flower.app import Flower
from flower.events import Events, EventsState
from flower.views.monitor import Metrics
from flower.views.tasks import TASK_COLUMNS, TasksDataTable
from tornado.web import HTTPError, RequestHandler

#: The pipeline stage of each task, by task name.
TASK_STAGES = {
    "vidpipe.generate_clip": "generation",
    "vidpipe.analyze_clip": "analysis",
    "vidpipe.register_entities": "registry",
    "vidpipe.finalize_project": "finalize",
    "vidpipe.recover_stalled": "recovery",
}
#: Columns this module adds to Flower's tasks table (slug -> header).
EXTRA_COLUMNS = {"project": "Project", "scene": "Scene", "stage": "Stage", "progress": "Progress"}
#: The tasks table as vidpipe shows it (Flower's `tasks_columns` option).
TASKS_COLUMNS = "name,project,scene,stage,state,progress,received,started,runtime,worker,uuid"
#: Fields every Celery event carries; whatever else a `task-progress` event has is the progress itself.
_EVENT_FIELDS = frozenset({"type", "uuid", "hostname", "timestamp", "utcoffset", "pid", "clock", "local_received"})
#: The ids open every vidpipe task's first argument ({"project_id": .., "scene_index": .., ...}); the worker's
#: argsrepr of it is truncated at 1024 characters, so only its start is read.
_PROJECT = re.compile(r"'project_id': (\d{1,12})\b")
_SCENE = re.compile(r"'scene_index': (\d{1,12})\b")
_ARGS_READ = 400


def ids_from_args(argsrepr: str | None) -> tuple[int | None, int | None]:
    """(project, scene) from the start of a task's argsrepr; None where it names none."""
    head = (argsrepr or "")[:_ARGS_READ]
    project, scene = _PROJECT.search(head), _SCENE.search(head)
    return (int(project.group(1)) if project else None, int(scene.group(1)) if scene else None)


class VidpipeTask(Task):
    """Celery's task state plus project, scene, stage and the last progress report."""

    project = scene = stage = progress = None
    _fields = (*Task._fields, *EXTRA_COLUMNS)

    def event(
        self,
        type_: str,
        timestamp: float | None = None,
        local_received: float | None = None,
        fields: dict | None = None,
        **kw: Any,
    ) -> None:
        fields = fields or {}
        if type_ == "progress":
            self._on_progress(fields, timestamp, local_received)
            return
        super().event(type_, timestamp, local_received, fields, **kw)
        if self.project is None and self.args:
            self.project, self.scene = ids_from_args(self.args)
        if self.stage is None and self.name:
            self.stage = TASK_STAGES.get(self.name)
        if self.state in states.READY_STATES:
            self.progress = None  # the result says how it ended

    def _on_progress(self, fields: dict, timestamp: float | None, local_received: float | None) -> None:
        # Progress is not a state: a task that reports progress has started (its task-started event may
        # still be on its way), and it stays STARTED.
        if self.state in (states.PENDING, states.RECEIVED):
            super().event("started", timestamp, local_received, {})
        self.progress = {k: v for k, v in fields.items() if k not in _EVENT_FIELDS}


class VidpipeEventsState(EventsState):
    """Flower's event state with `VidpipeTask` for every task (pickled as such in persistent mode)."""

    Task = VidpipeTask


class VidpipeEvents(Events):
    """Flower's event capture on a `VidpipeEventsState` (unless a persisted state was loaded)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if type(self.state) is EventsState and not self.state.tasks:
            limits = {"max_tasks_in_memory": kwargs["max_tasks_in_memory"]}
            if "max_workers_in_memory" in kwargs:
                limits["max_workers_in_memory"] = kwargs["max_workers_in_memory"]
            self.state = VidpipeEventsState(**limits)


def progress_text(progress: dict | None) -> str | None:
    """One line for a progress report, e.g. "analyze: faces 2/4 (50%)"."""
    if not progress:
        return None
    stage, step = progress.get("stage"), progress.get("step") or progress.get("state") or progress.get("node")
    done, total = progress.get("done"), progress.get("total")
    text = f"{stage}:" if stage else ""
    if step:
        text += f" {step}"
    if isinstance(done, int | float) and isinstance(total, int | float) and total > 0:
        text += f" {done:g}/{total:g} ({100 * done / total:.0f}%)"
    return text.strip() or None


def format_task(task: Task) -> Task:
    """Flower's `format_task` hook: progress as a line of text on the tasks table and the task page."""
    if isinstance(getattr(task, "progress", None), dict):
        task.progress = progress_text(task.progress)
    return task


# --- roles -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Roles:
    """Basic-auth logins ("user:password") by role."""

    admins: tuple[str, ...]
    viewers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        both = set(self.admins) & set(self.viewers)
        if both:
            users = sorted(c.split(":", 1)[0] for c in both)
            raise ValueError(f"a login cannot be both admin and viewer: {', '.join(users)}")

    @property
    def logins(self) -> list[str]:
        """Every login Flower's basic auth accepts."""
        return [*self.admins, *self.viewers]

    def role_of(self, authorization: str | None) -> str | None:
        """The role of an Authorization header's login: admin, viewer, or None (no or wrong credentials)."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme != "Basic" or not token:
            return None
        try:
            credential = b64decode(token.strip(), validate=True).decode()
        except (Base64Error, UnicodeDecodeError):
            return None
        # Every comparison runs, in constant time each, so timing tells nothing about which login matched.
        admin = [hmac.compare_digest(credential, c) for c in self.admins]
        viewer = [hmac.compare_digest(credential, c) for c in self.viewers]
        return "admin" if any(admin) else "viewer" if any(viewer) else None


#: Methods that only read; every control action of Flower is a POST.
_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: Handlers whose POST only reads (the tasks table queries by POST).
_READ_POSTS: tuple[type, ...] = (TasksDataTable,)


class RoleGuard(RequestHandler):
    """Mixed in front of each Flower handler: viewers read only; /metrics needs a login."""

    _role: str | None = None

    def prepare(self) -> Any:
        result = super().prepare()
        roles: Roles = self.application.roles
        self._role = roles.role_of(self.request.headers.get("Authorization"))
        if isinstance(self, Metrics) and self._role is None:
            raise HTTPError(401)
        if self._role == "viewer" and not self._is_read():
            raise HTTPError(403, "read-only login: control actions are refused")
        return result

    def _is_read(self) -> bool:
        return self.request.method in _READ_METHODS or isinstance(self, _READ_POSTS)

    def render(self, *args: Any, **kwargs: Any) -> Any:
        if self._role == "viewer":
            kwargs["read_only"] = True  # the pages drop their control buttons, as in Flower's read-only mode
        return super().render(*args, **kwargs)


@cache
def guarded(handler_class: type[RequestHandler]) -> type[RequestHandler]:
    """`handler_class` served through `RoleGuard` (one subclass per handler class)."""
    return type(f"Guarded{handler_class.__name__}", (RoleGuard, handler_class), {})


class VidpipeFlower(Flower):
    """Flower with vidpipe's task columns and with every request served through `RoleGuard`."""

    def __init__(self, *args: Any, roles: Roles, **kwargs: Any) -> None:
        self.roles = roles
        TASK_COLUMNS.update(EXTRA_COLUMNS)
        super().__init__(*args, **kwargs)

    def get_handler_delegate(self, request: Any, target_class: type[RequestHandler], *args: Any, **kwargs: Any) -> Any:
        return super().get_handler_delegate(request, guarded(target_class), *args, **kwargs)


# --- options and serving ---------------------------------------------------------------------------------------


class FlowerRefused(ValueError):
    """Flower cannot be started with these settings (the message says why and what to set)."""


#: The one Flower config file, for `vidpipe flower` and `celery flower` alike (images copy it to FLOWER_CONF).
REPO_CONFIG = Path(__file__).resolve().parents[1] / "deploy" / "flower" / "flowerconfig.py"


def config_path(explicit: str | None = None, environ: Mapping[str, str] | None = None) -> Path:
    """The Flower config file: --conf, else FLOWER_CONF, else the checkout's deploy/flower/flowerconfig.py."""
    env = os.environ if environ is None else environ
    chosen = explicit or env.get("FLOWER_CONF")
    path = Path(chosen) if chosen else REPO_CONFIG
    if not path.is_file():
        raise FlowerRefused(
            f"Flower config file {path} not found: pass --conf PATH or set FLOWER_CONF "
            "(the file is deploy/flower/flowerconfig.py of the vidpipe repository)"
        )
    return path


def _credentials(raw: Any, what: str) -> tuple[str, ...]:
    items = [raw] if isinstance(raw, str) else list(raw or [])
    found = tuple(c.strip() for item in items for c in str(item).split(",") if c.strip())
    for credential in found:
        user, _, password = credential.partition(":")
        if not user or not password:
            raise FlowerRefused(f"{what} must be user:password (both non-empty), comma-separated for several")
    return found


def load_options(path: Path, overrides: Mapping[str, Any]) -> Roles:
    """Fill Flower's options as `celery flower` would (FLOWER_* variables, then the file), then `overrides`.

    `overrides` are the command line's options (None: not given) plus `viewer_auth`. Returns the roles; Flower's
    `basic_auth` option then holds every login of both roles.

    Raises:
        FlowerRefused: no admin login, a malformed login, OAuth configured, or an option out of range.

    """
    from flower.command import apply_env_options
    from flower.options import options

    apply_env_options()
    try:
        config = runpy.run_path(str(path))
    except RuntimeError as exc:  # the file refuses to load without credentials
        raise FlowerRefused(f"{path}: {exc}") from exc
    viewers = config.get("vidpipe_viewer_auth", ())
    for name, value in config.items():
        if not name.startswith("_") and name in options:
            setattr(options, name, value)
    for name, value in overrides.items():
        if name == "viewer_auth":
            viewers = value if value is not None else viewers
        elif name == "purge_offline_workers" and value == 0:
            options.purge_offline_workers = None  # 0 on the command line: keep them (Flower's None)
        elif value is not None:
            setattr(options, name, value)
    roles = _checked_roles(options, viewers)
    options.basic_auth = roles.logins
    return roles


def _checked_roles(options: Any, viewers: Any) -> Roles:
    if options.auth:
        raise FlowerRefused("Flower's OAuth (--auth) is not supported: vidpipe's roles work on basic auth")
    admins = _credentials(options.basic_auth, "basic auth")
    if not admins:
        raise FlowerRefused(
            "no basic auth configured: Flower can shut workers down and revoke tasks, so vidpipe never runs it "
            "open. Pass --basic-auth user:password or set VIDPIPE_FLOWER_BASIC_AUTH."
        )
    if not 0 <= options.port <= 65535:
        raise FlowerRefused(f"port {options.port} is out of range 0..65535")
    if options.max_tasks < 1:
        raise FlowerRefused("--max-tasks must be at least 1")
    if options.purge_offline_workers is not None and options.purge_offline_workers < 0:
        raise FlowerRefused("--purge-offline-workers must be 0 (keep) or more seconds")
    try:
        return Roles(admins, _credentials(viewers, "viewer auth"))
    except ValueError as exc:
        raise FlowerRefused(str(exc)) from exc


def serve(app: Any, roles: Roles, config: Path) -> int:
    """Serve Flower for `app` with the options `load_options` set, until SIGTERM or Ctrl-C; the exit status."""
    import asyncio

    from flower.command import extract_settings, setup_logging
    from flower.options import options
    from flower.urls import settings as web_settings
    from kombu.utils.url import maybe_sanitize_url
    from tornado.ioloop import IOLoop

    extract_settings()  # cookie secret, TLS files and URL prefix from the options, as `celery flower` does
    setup_logging()
    app.set_current()  # Flower's /api/task/result builds AsyncResult on the current app
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    io_loop = IOLoop.current()
    for signum in (signal.SIGTERM, signal.SIGINT):
        # Stop the loop from inside it: raising in a handler could land in any thread's join at exit.
        loop.add_signal_handler(signum, io_loop.stop)
    events = VidpipeEvents(
        app,
        io_loop=io_loop,
        db=options.db,
        persistent=options.persistent,
        state_save_interval=options.state_save_interval,
        enable_events=options.enable_events,
        max_workers_in_memory=options.max_workers,
        max_tasks_in_memory=options.max_tasks,
    )
    flower_app = VidpipeFlower(capp=app, options=options, events=events, io_loop=io_loop, roles=roles, **web_settings)
    port = flower_app.start_http_server()
    users = ", ".join(c.split(":", 1)[0] for c in roles.admins)
    viewers = ", ".join(c.split(":", 1)[0] for c in roles.viewers) or "none"
    print(
        f"Flower for vidpipe on http://{options.address or '0.0.0.0'}:{port} (broker "
        f"{maybe_sanitize_url(app.conf.broker_url)}; admins {users}; viewers {viewers}; config {config}; "
        f"last {options.max_tasks} tasks kept{', persistent in ' + options.db if options.persistent else ''})",
        flush=True,
    )
    try:
        flower_app.start()  # returns when a signal stops the loop
    finally:
        flower_app.stop()  # saves the state in persistent mode
    return 0
