"""On PostgreSQL only `vidpipe db upgrade` migrates; workers and clients refuse a database that is behind."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from vidpipe_tasks.settings import load_settings


def run(module: str, settings, *args: str) -> subprocess.CompletedProcess:
    env = {**settings.as_env(), "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", module, *args], env=env, capture_output=True, text=True, timeout=120)


def test_a_cv_worker_refuses_an_unmigrated_database_until_db_upgrade_runs(tmp_path: Path, postgres_server) -> None:
    url = postgres_server.create_database("schema_check")
    settings = replace(load_settings({"VIDPIPE_HOME": str(tmp_path / "work")}), database_url=url)
    refused = run("gpu_worker", settings, "--device", "cpu", "--logdir", str(tmp_path / "logs"))
    assert refused.returncode == 2
    assert "is at schema revision None" in refused.stderr and "run `vidpipe db upgrade`" in refused.stderr
    assert not (tmp_path / "logs").exists(), "no worker was started"
    upgraded = run("vidpipe_tasks.cli", settings, "db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    status = run("vidpipe_tasks.cli", settings, "status", "1")
    assert "schema revision" not in status.stderr and "no project 1" in status.stderr.lower()
