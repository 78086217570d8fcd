"""Engine choice from settings: auto prefers a staged insightface pack; explicit names never fall back."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from gpu_worker.choice import choose_embedder, choose_face_engine, configuration_problems
from gpu_worker.embedder import EmbedderUnavailable
from gpu_worker.faces.base import EngineUnavailable
from tests.conftest import make_settings
from tests.tiny_clip import write_tiny_clip
from tests.tiny_models import build_tiny_pack
from vidpipe_tasks.settings import Settings


@pytest.fixture
def bare(tmp_path: Path) -> Settings:
    """Settings whose model directory is empty."""
    return make_settings(tmp_path / "work")


@pytest.fixture
def staged(tmp_path: Path) -> Settings:
    """Other settings with a tiny insightface pack and tiny open_clip weights staged where they look."""
    settings = make_settings(tmp_path / "staged")
    build_tiny_pack(settings.insightface_dir)
    name, _, weights = write_tiny_clip(settings.models_dir / "open_clip")
    return replace(settings, clip_model=name, clip_weights=str(weights))


def test_auto_takes_the_offline_engine_and_says_why_when_no_pack_is_staged(bare) -> None:
    engine, reason = choose_face_engine(bare)
    assert engine.name == "dlib-offline"
    assert reason.startswith("auto: offline engine") and str(bare.insightface_dir) in reason
    assert engine.match_threshold == bare.dlib_threshold


def test_auto_takes_insightface_with_its_configured_threshold_and_batch_when_its_pack_is_staged(staged) -> None:
    engine, reason = choose_face_engine(replace(staged, insightface_threshold=0.42, detect_batch=3))
    assert engine.name == "insightface" and reason.startswith("auto: insightface pack found")
    assert engine.match_threshold == 0.42 and engine.detect_batch == 3


def test_insightface_named_explicitly_without_its_pack_refuses_with_a_staging_hint(bare) -> None:
    with pytest.raises(EngineUnavailable, match="vidpipe models stage --insightface"):
        choose_face_engine(replace(bare, face_engine="insightface"))


def test_the_embedder_is_optional_under_auto_and_required_when_named(bare, staged) -> None:
    embedder, reason = choose_embedder(bare)
    assert embedder is None and reason.startswith("auto: no image embedder")
    with pytest.raises(EmbedderUnavailable, match="vidpipe models stage --open-clip"):
        choose_embedder(replace(bare, embedder="open_clip"))
    assert choose_embedder(replace(bare, embedder="none"))[0] is None
    embedder, reason = choose_embedder(staged)
    assert embedder is not None and embedder.name.startswith("open_clip:") and "auto" in reason


def test_configuration_problems_list_only_explicitly_named_engines(bare, staged) -> None:
    assert configuration_problems(bare) == []
    problems = configuration_problems(replace(bare, face_engine="insightface", embedder="open_clip"))
    assert any(p.startswith("face engine insightface:") for p in problems)
    assert any(p.startswith("embedder open_clip:") for p in problems)
    assert configuration_problems(replace(staged, face_engine="insightface", embedder="open_clip")) == []


def _run_gpu_worker(settings: Settings, *args: str) -> subprocess.CompletedProcess:
    env = {**settings.as_env(), "PATH": "/usr/bin:/bin"}
    argv = [sys.executable, "-m", "gpu_worker", "--device", "cpu", "--logdir", str(settings.home / "logs"), *args]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)


def test_the_launcher_refuses_to_start_when_a_named_engine_has_no_weights(bare) -> None:
    done = _run_gpu_worker(replace(bare, face_engine="insightface"))
    assert done.returncode == 2
    assert "cannot start" in done.stderr and str(bare.insightface_dir) in done.stderr
    assert "vidpipe models stage --insightface" in done.stderr
    assert not (bare.home / "logs").exists(), "no worker process was started"


def test_a_cv_worker_started_directly_stops_at_start_when_a_named_engine_cannot_load(bare) -> None:
    from vidpipe_tasks.cli.workers import worker_argv

    settings = replace(bare, embedder="open_clip")
    env = {**settings.as_env(), "PATH": "/usr/bin:/bin", "VIDPIPE_WARM_ENGINE": "1"}
    argv = worker_argv("cv-check", ["cv"], embedded=True)
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "CV worker cannot start" in done.stdout + done.stderr
    assert "vidpipe models stage --open-clip" in done.stdout + done.stderr
