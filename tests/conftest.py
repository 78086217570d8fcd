"""Shared fixtures: embedded settings in a temporary work folder with a migrated database."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vidpipe_tasks.db.migrate import prepare_installation
from vidpipe_tasks.settings import Settings, load_settings

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"


def in_ci() -> bool:
    """CI sets CI=true; there, tests that need a service must fail rather than skip."""
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def make_settings(home: Path, **overrides: object) -> Settings:
    from dataclasses import replace

    settings = replace(load_settings({"VIDPIPE_HOME": str(home)}), **overrides)
    prepare_installation(settings)
    return settings


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Embedded settings rooted in a fresh temporary folder, database migrated."""
    return make_settings(tmp_path / "work")
