"""The prefork CV worker on CUDA, tensor preprocessing on the device, and bench_gpu on a GPU (gpu tier)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from gpu_worker.embedder import ClipEmbedder
from tests.conftest import REPO, make_settings
from tests.integration.test_launcher import child_pids
from tests.tiny_models import build_tiny_pack


def test_tensor_preprocessing_on_cuda_agrees_with_the_cpu() -> None:
    images = [np.random.default_rng(i).integers(0, 256, (360 + 40 * i, 640, 3), dtype=np.uint8) for i in range(3)]
    cpu = ClipEmbedder("ViT-B-32", None, device="cpu", random_weights=True)
    gpu = ClipEmbedder("ViT-B-32", None, device="cuda", random_weights=True)
    cpu.load(), gpu.load()
    on_cpu, on_gpu = cpu.pixels(images), gpu.pixels(images)
    assert on_gpu.device.type == "cuda" and on_gpu.dtype.is_floating_point
    np.testing.assert_allclose(on_gpu.float().cpu().numpy(), on_cpu.numpy(), atol=2e-2)


def _maps(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text(errors="replace")


def test_the_cv_worker_parent_has_no_cuda_and_its_pool_children_run_the_models_on_cuda(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "work")
    build_tiny_pack(settings.insightface_dir)
    settings = replace(settings, face_engine="insightface")
    env = {**os.environ, **settings.as_env()}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    argv = [sys.executable, "-m", "gpu_worker", "--device", "cuda", "--processes", "1", "--per-gpu", "2"]
    argv += ["--logdir", str(tmp_path)]
    out = tmp_path / "launcher.log"
    launcher = subprocess.Popen(argv, env=env, stdout=out.open("w"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while "cv-gpu0 ready after" not in out.read_text(errors="replace"):
            assert launcher.poll() is None, out.read_text()
            assert time.monotonic() < deadline, out.read_text()[-3000:]
            time.sleep(0.5)
        (worker,) = child_pids(launcher.pid)
        pool = child_pids(worker)
        assert len(pool) == 2
        assert "libcuda" not in _maps(worker), "the parent must never initialise CUDA (it forks)"
        assert all("libcuda" in _maps(p) for p in pool), "each pool child holds its own CUDA context"
    finally:
        launcher.terminate()
        launcher.wait(120)


def test_bench_gpu_reports_gpu_busy_memory_and_throughput_on_cuda() -> None:
    argv = [sys.executable, str(REPO / "bench" / "bench_gpu.py"), "--device", "cuda", "--scenes", "8"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"GPU busy\s+\d+ %", done.stdout) and re.search(r"GPU memory\s+\d+\.\d\d GiB", done.stdout)
    assert "CUDAExecutionProvider" in done.stdout and "open_clip on cuda" in done.stdout
    print(done.stdout)
