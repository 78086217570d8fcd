"""What every `vidpipe` command shares: settings from `--home`, exit codes, and errors said in one line."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from vidpipe_tasks.settings import Settings, load_settings

#: Exit codes of every command (docs/cli.md). 124 is what timeout(1) returns; 130 and 141 what a shell
#: reports for a process ended by SIGINT or SIGPIPE.
EXIT_OK = 0
EXIT_FAILED = 1  # the command ran and what it reports failed: a project failed, an id is unknown
EXIT_USAGE = 2  # bad options or bad input (an invalid storyboard); nothing was queued
EXIT_UNAVAILABLE = 3  # the database or the broker cannot be used (wrong --home, server down)
EXIT_TIMEOUT = 124
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141

EXIT_CODES_HELP = (
    "exit codes: 0 ok; 1 failed (a project failed or was cancelled, an id is unknown); 2 usage or invalid input; "
    "3 database or broker unavailable; 124 timed out (wait); 130 interrupted; 141 output closed (a pipe)"
)


class Unavailable(RuntimeError):
    """A service the command needs (the database, the broker) cannot be used; the message says which."""


def home_option(parser: argparse.ArgumentParser) -> None:
    """`--home` on a sub-command too, so it may come before or after the command name."""
    parser.add_argument(
        "--home", default=argparse.SUPPRESS, help="work folder of the embedded default (env VIDPIPE_HOME)"
    )


def settings_from(args: argparse.Namespace) -> Settings:
    """The settings for this invocation: `--home` first, then the environment."""
    if getattr(args, "home", None):
        os.environ["VIDPIPE_HOME"] = str(Path(args.home).resolve())
    settings = load_settings()
    # Child processes and the Celery app module read the same settings from the environment.
    os.environ.update(settings.as_env())
    return settings


def existing_installation(args: argparse.Namespace) -> Settings:
    """Settings for a command that reads what is stored: refuse a home without a database, never create one."""
    settings = settings_from(args)
    if settings.database_url.startswith("sqlite:///"):
        path = Path(settings.database_url.removeprefix("sqlite:///"))
        if not path.is_file():
            raise Unavailable(
                f"no vidpipe database at {path}: pass the --home of an installation (the demo's default is "
                "./vidpipe-work), or set VIDPIPE_HOME / VIDPIPE_DATABASE_URL"
            )
    return settings


def _masked(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # an unparsable URL: say nothing of it rather than leak a password
        return "(the configured database)"


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def unavailable_reason(exc: BaseException) -> str | None:
    """One line for an error that means a service is unreachable, or None when `exc` is something else."""
    from kombu.exceptions import OperationalError as BrokerError
    from redis.exceptions import ConnectionError as RedisConnectionError
    from sqlalchemy.exc import OperationalError

    if isinstance(exc, Unavailable):
        return str(exc)
    if isinstance(exc, OperationalError):
        url = os.environ.get("VIDPIPE_DATABASE_URL", "")
        return f"database {_masked(url)} unavailable: {_first_line(exc)}"
    if isinstance(exc, BrokerError | RedisConnectionError):
        return f"broker unavailable: {_first_line(exc)}"
    return None


def quiet_broken_pipe() -> int:
    """The reader went away (`vidpipe status | head`): stop without a traceback, as SIGPIPE would."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())  # Python's flush at exit would otherwise raise again
    return EXIT_BROKEN_PIPE
