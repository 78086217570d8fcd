"""What every `vidpipe` command shares: settings from the global options, and the error a command prints."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from vidpipe_tasks.settings import Settings, load_settings


def settings_from(args: argparse.Namespace) -> Settings:
    """The settings for this invocation: `--home` first, then the environment."""
    if getattr(args, "home", None):
        os.environ["VIDPIPE_HOME"] = str(Path(args.home).resolve())
    settings = load_settings()
    # Child processes and the Celery app module read the same settings from the environment.
    os.environ.update(settings.as_env())
    return settings
