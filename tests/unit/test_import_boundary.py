"""The client and CPU workers never load torch, CUDA or onnxruntime."""

from __future__ import annotations

import subprocess
import sys

CPU_SIDE = [
    "vidpipe_tasks.cli",
    "vidpipe_tasks.celery_app",
    "vidpipe_tasks.tasks",
    "vidpipe_tasks.workflow",
    "vidpipe_tasks.stages",
    "vidpipe_tasks.registry",
    "vidpipe_tasks.report",
    "vidpipe_tasks.export",
    "vidpipe_tasks.cli.status",
    "vidpipe_tasks.cli.demo",
    "vidpipe_tasks.generators.procedural",
    "vidpipe_tasks.generators.remote",
    "vidpipe_tasks.generators.comfyui",
    "vidpipe_tasks.generators.veo",
    "vidpipe_tasks.cli.models",
    # The exporter and Flower run on CPU hosts (the exporter's NVML reader is plain ctypes on the driver).
    "vidpipe_tasks.cli.exporter",
    "vidpipe_tasks.metrics",
    "vidpipe_tasks.flower_app",
    "gpu_worker.service",
    # The launcher parent forks CV workers: it must hold no CUDA or onnxruntime state.
    "gpu_worker.__main__",
    "gpu_worker.launcher",
    "gpu_worker.choice",
    "gpu_worker.lifecycle",
]
FORBIDDEN = ["torch", "onnxruntime", "insightface", "open_clip", "cv2", "tensorrt"]


def test_client_and_cpu_worker_modules_load_no_gpu_stack(tmp_path) -> None:
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in CPU_SIDE)
        + f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})\n"
        + "print(','.join(bad))\n"
    )
    env = {"VIDPIPE_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == ""


def test_checking_which_engines_can_run_loads_no_gpu_stack(tmp_path) -> None:
    code = (
        "import sys\n"
        "from vidpipe_tasks.settings import load_settings\n"
        "from vidpipe_tasks.cli.models import models_status\n"
        "from gpu_worker.choice import configuration_problems\n"
        "settings = load_settings()\n"
        "models_status(settings); configuration_problems(settings)\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})\n"
        "print(','.join(bad))\n"
    )
    env = {"VIDPIPE_HOME": str(tmp_path), "VIDPIPE_FACE_ENGINE": "insightface", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == ""
