"""Generator configuration is checked before anything is queued: at submit, and when a generation worker starts."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import yaml

from tests.conftest import make_settings
from tests.helpers import run_vidpipe as vidpipe
from vidpipe_tasks.cli.workers import start_worker, stop_workers, wait_ready, worker_argv
from vidpipe_tasks.db.models import Project
from vidpipe_tasks.db.session import session_scope
from vidpipe_tasks.settings import GENERATION_QUEUE, REGISTRY_QUEUE


def board(folder: Path, generator: str | None = None) -> Path:
    data = {"title": "remote", "scenes": [{"description": "a quay at dusk"}]}
    if generator:
        data["generator"] = generator
    path = folder / f"board-{generator}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_submit_refuses_a_project_whose_generator_is_not_configured_and_queues_nothing(tmp_path: Path) -> None:
    home = tmp_path / "work"
    good, bad = board(tmp_path), board(tmp_path, "veo")
    result = vidpipe(home, "submit", str(good), str(bad))
    assert result.returncode == 2
    assert "nothing was queued" in result.stderr
    assert f"{bad}: generator: the veo generator needs VIDPIPE_VEO_API_KEY" in result.stderr
    settings = make_settings(home)
    with session_scope(settings.database_url) as s:
        assert s.query(Project).count() == 0  # not even the valid one
    assert not list((settings.broker_dir / "queue").glob("*.msg"))


def test_submit_names_the_setting_when_the_default_generator_is_broken(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "work", generator="comfyui")
    result = vidpipe(settings, "submit", str(board(tmp_path)))
    assert result.returncode == 2
    assert "generator (VIDPIPE_GENERATOR): the comfyui generator needs VIDPIPE_COMFYUI_SERVERS" in result.stderr


def test_generators_lists_problems_and_server_depths(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "work", comfyui_servers="http://127.0.0.1:9")
    report = json.loads(vidpipe(settings, "generators", "--json").stdout)
    by_name = {g["name"]: g for g in report["generators"]}
    assert by_name["procedural"]["default"] and by_name["procedural"]["problem"] is None
    assert by_name["comfyui"]["servers"] == {"http://127.0.0.1:9": None}  # unreachable
    assert "VIDPIPE_VEO_API_KEY" in by_name["veo"]["problem"]


def test_a_generation_worker_refuses_to_start_with_a_broken_generator(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "work", generator="veo")
    env = {**os.environ, **settings.as_env()}
    argv = worker_argv("gen", [GENERATION_QUEUE], embedded=True)
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert (
        "generation worker cannot start: the veo generator needs VIDPIPE_VEO_API_KEY" in result.stdout + result.stderr
    )


def test_a_worker_without_the_generation_queue_starts_anyway(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "work", generator="veo")
    worker = start_worker(settings, "reg", [REGISTRY_QUEUE], settings.home / "logs")
    try:
        wait_ready([worker])
    finally:
        stop_workers([worker])
