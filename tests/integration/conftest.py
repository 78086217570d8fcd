"""A real distributed run on the embedded broker: two worker processes, three projects at once."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from celery import Celery
from sqlalchemy import select

from tests.conftest import DATA, make_settings
from tests.helpers import enqueue_and_wait, pipeline_workers
from vidpipe_tasks import media
from vidpipe_tasks.celery_app import create_app
from vidpipe_tasks.cli.demo import example_paths
from vidpipe_tasks.cli.workers import WorkerProcess
from vidpipe_tasks.db.models import Clip, Scene
from vidpipe_tasks.db.session import session_scope
from vidpipe_tasks.settings import Settings
from vidpipe_tasks.storyboard import load_storyboard
from vidpipe_tasks.workflow import create_project

RUN_TIMEOUT_S = 420


@dataclass
class PipelineRun:
    settings: Settings
    app: Celery
    workers: list[WorkerProcess]
    lighthouse: int
    quay: int
    market: int


def example_path(name: str) -> Path:
    return next(p for p in example_paths() if p.name == name)


def _corrupt_clip(settings: Settings, project_id: int, scene_index: int) -> None:
    """Store a garbage file as the scene's finished clip: generate_clip reuses it, analysis cannot read it."""
    garbage = b"this is not an mp4 file\n" * 64
    relative = media.clip_path(project_id, scene_index)
    path = media.absolute(settings.media_root, relative)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(garbage)
    with session_scope(settings.database_url) as s:
        scene = s.scalar(select(Scene).where(Scene.project_id == project_id, Scene.scene_index == scene_index))
        s.add(
            Clip(
                scene_id=scene.id,
                path=relative,
                size_bytes=len(garbage),
                frame_count=0,
                fps=12,
                width=640,
                height=360,
                generator="test-corrupt",
            )
        )


@pytest.fixture(scope="session")
def pipeline_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PipelineRun]:
    """Submit three projects at once to one generation+registry worker and one CV worker."""
    # JSON-lines logs here, so test_pipeline_embedded also checks what a log shipper receives.
    settings = make_settings(tmp_path_factory.mktemp("pipeline") / "work", store_processed=True, log_format="json")
    app = create_app(settings)
    lighthouse, quay, market = (
        create_project(settings, path, load_storyboard(path))
        for path in (example_path("lighthouse.yaml"), DATA / "quay.yaml", example_path("market.yaml"))
    )
    _corrupt_clip(settings, quay, 2)
    with pipeline_workers(settings) as workers:
        enqueue_and_wait(settings, workers, [lighthouse, quay, market], RUN_TIMEOUT_S)
        yield PipelineRun(settings, app, workers, lighthouse, quay, market)
