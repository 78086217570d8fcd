"""Configuration files agree with the app: the queue topology and the env example."""

from __future__ import annotations

from dataclasses import fields

import yaml

from tests.conftest import REPO
from vidpipe_tasks.celery_app import TASK_ROUTES
from vidpipe_tasks.settings import ALL_QUEUES, Settings, load_settings


def test_queue_topology_file_matches_the_routes() -> None:
    topology = yaml.safe_load((REPO / "config" / "queues.yaml").read_text())["queues"]
    assert list(topology) == list(ALL_QUEUES)
    routes = {task: queue for queue, spec in topology.items() for task in spec["tasks"]}
    assert routes == TASK_ROUTES


def test_env_example_names_only_real_settings_and_parses() -> None:
    lines = (REPO / "config" / "vidpipe.env.example").read_text().splitlines()
    settings_lines = [line.lstrip("# ") for line in lines if line.lstrip("# ").startswith("VIDPIPE_")]
    pairs = [line.split("=", 1) for line in settings_lines]
    known = {f"VIDPIPE_{f.name.upper()}" for f in fields(Settings)}
    assert {k for k, _ in pairs} == known, "every setting is documented in the example, and only real ones"
    settings = load_settings(dict(pairs))
    assert settings.face_engine == "auto" and settings.broker_url.startswith("redis://")
