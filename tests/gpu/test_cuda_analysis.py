"""Analysis on CUDA: onnxruntime's CUDA provider, open_clip in fp16, and the launcher pinning one GPU per worker."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from gpu_worker.analysis import analyze_clip
from gpu_worker.embedder import ClipEmbedder
from gpu_worker.faces.insightface_engine import InsightFaceEngine
from tests.conftest import make_settings
from tests.tiny_models import build_tiny_pack
from vidpipe_tasks.generators.base import CharacterSpec, ClipRequest
from vidpipe_tasks.generators.procedural import ProceduralGenerator


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cuda-clip")
    ProceduralGenerator().generate(
        ClipRequest(
            project_id=1,
            scene_index=1,
            description="a scene analysed on the GPU",
            location="quay",
            characters=(CharacterSpec("bo"),),
            duration_s=2.0,
            fps=12,
            width=640,
            height=360,
            output_path=root / "clip.mp4",
        )
    )
    return root


@pytest.fixture(scope="module")
def cuda_embedder() -> ClipEmbedder:
    embedder = ClipEmbedder("ViT-B-32", None, device="cuda", batch_size=16, random_weights=True)
    embedder.load()
    return embedder


def test_insightface_runs_its_sessions_on_the_cuda_provider(tmp_path: Path) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.fail("a GPU host needs onnxruntime-gpu (the GPU image installs it in place of onnxruntime)")
    engine = InsightFaceEngine(build_tiny_pack(tmp_path / "pack"), device="cuda")
    engine.load()
    assert engine.providers[0] == "CUDAExecutionProvider"
    frame = np.zeros((360, 640, 3), dtype=np.uint8)
    frame[100:132, 200:232, 0] = 255
    faces = engine.detect_and_embed([frame], [0])
    assert faces and all(np.isclose(np.linalg.norm(f.embedding), 1.0, atol=1e-4) for f in faces)


def test_open_clip_embeds_in_fp16_on_cuda_and_agrees_with_the_cpu(cuda_embedder: ClipEmbedder) -> None:
    import torch

    assert cuda_embedder.device == "cuda" and cuda_embedder.dtype == "float16"
    images = [np.random.default_rng(i).integers(0, 255, (224, 224, 3), dtype=np.uint8) for i in range(5)]
    on_gpu = cuda_embedder.embed(images)
    cpu = ClipEmbedder("ViT-B-32", None, device="cpu", random_weights=True)
    cpu.load()
    cpu.model.load_state_dict({k: v.float().cpu() for k, v in cuda_embedder.model.state_dict().items()})
    on_cpu = cpu.embed(images)
    assert on_gpu.dtype == np.float32 and on_gpu.shape == on_cpu.shape
    assert (np.sum(on_gpu * on_cpu, axis=1) > 0.99).all(), "fp16 on CUDA drifted from fp32 on the CPU"
    assert torch.cuda.is_available()


def test_a_clip_is_analysed_on_cuda_with_visual_embeddings(clip: Path, cuda_embedder: ClipEmbedder) -> None:
    engine = InsightFaceEngine(build_tiny_pack(clip / "pack"), device="auto")
    engine.load()
    request = {
        "project_id": 1,
        "scene_index": 1,
        "clip_path": "clip.mp4",
        "declared_characters": ["bo"],
        "registry": [],
        "previous_appearances": [],
        "previous_visual": None,
        "crops_dir": "crops",
    }
    result = analyze_clip(request, clip, engine, embedder=cuda_embedder, max_frames=8)
    assert result["status"] == "ok"
    assert result["engine"]["embedder"] == "open_clip:ViT-B-32"
    assert len(result["visual_embedding"]) == 512
    assert result["timings_ms"]["image_embed"] > 0


def test_the_launcher_starts_one_worker_per_gpu_with_the_gpu_pinned(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "work")
    env = {**os.environ, **settings.as_env()}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    argv = [sys.executable, "-m", "gpu_worker", "--device", "cuda", "--processes", "1", "--logdir", str(tmp_path)]
    launcher = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        log = tmp_path / "cv-gpu0.log"
        deadline = time.monotonic() + 120
        while not (log.is_file() and " ready." in log.read_text(errors="replace")):
            assert launcher.poll() is None, launcher.stdout.read()
            if time.monotonic() > deadline:
                pytest.fail(f"cv-gpu0 not ready:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.2)
    finally:
        launcher.terminate()
        out, _ = launcher.communicate(timeout=120)
    assert "CUDA_VISIBLE_DEVICES='0'" in out and "GPU memory at start" in out
