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
    prepare_installation(settings, migrate=True)
    return settings


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Embedded settings rooted in a fresh temporary folder, database migrated."""
    return make_settings(tmp_path / "work")


def _service_or_skip(start, workdir: Path, what: str):
    """Start a throwaway server; skip without its binaries on a laptop, fail in CI (CI=true)."""
    from tests.servers import ServerUnavailable

    try:
        return start(workdir)
    except ServerUnavailable as exc:
        if in_ci():
            pytest.fail(f"{what} is required in CI: {exc}")
        pytest.skip(f"{what} not available: {exc}")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory):
    """A redis-server for the whole test session on a free loopback port (databases via `redis_db_pair`)."""
    from tests.servers import start_redis

    server = _service_or_skip(start_redis, tmp_path_factory.mktemp("redis"), "redis-server")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory):
    """A PostgreSQL cluster for the whole test session (use `create_database` per test)."""
    from tests.servers import start_postgres

    server = _service_or_skip(start_postgres, tmp_path_factory.mktemp("postgres"), "PostgreSQL")
    yield server
    server.stop()


_REDIS_DBS = iter(range(1, 16))


def redis_db_pair() -> tuple[int, int]:
    """A broker db and a result db of the session's Redis that no other module uses (16 databases in all)."""
    return next(_REDIS_DBS), next(_REDIS_DBS)


def production_settings(
    home: Path, redis_server, postgres_server, database: str, dbs: tuple[int, int] | None = None
) -> Settings:
    """Settings on the session's Redis (broker and result databases) and a new, migrated PostgreSQL database."""
    broker_db, result_db = dbs or redis_db_pair()
    return make_settings(
        home,
        broker_url=redis_server.url(broker_db),
        result_backend=redis_server.url(result_db),
        database_url=postgres_server.create_database(database),
    )
