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
    "vidpipe_tasks.status",
    "vidpipe_tasks.demo",
    "vidpipe_tasks.generators.procedural",
    "gpu_worker.service",
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
