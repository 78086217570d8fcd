"""The fault tier needs Redis and PostgreSQL binaries: skip on a laptop without them, fail in CI."""

from __future__ import annotations

import shutil

import pytest

from tests.conftest import in_ci


@pytest.fixture(autouse=True)
def _servers_installed() -> None:
    from tests.servers import ServerUnavailable, _pg_bindir

    missing = [] if shutil.which("redis-server") else ["redis-server"]
    try:
        _pg_bindir()
    except ServerUnavailable:
        missing.append("PostgreSQL")
    if missing:
        if in_ci():
            pytest.fail(f"the fault tier needs {missing} in CI")
        pytest.skip(f"not installed: {missing}")
