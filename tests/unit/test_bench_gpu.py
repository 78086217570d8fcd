"""bench/bench_gpu.py runs on a CPU (the CI smoke run) and prints its whole table."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import REPO


def test_the_gpu_bench_prints_stages_throughput_gpu_columns_and_memory_on_a_cpu() -> None:
    argv = [sys.executable, str(REPO / "bench" / "bench_gpu.py"), "--device", "cpu", "--scenes", "2"]
    argv += ["--concurrency", "2", "--size", "320x180", "--duration", "1", "--fps", "12"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "synthetic insightface-shaped pack" in out and "random weights" in out  # says what it ran
    for stage in ("decode", "detect", "embed", "image_embed", "total"):
        assert re.search(rf"^  {stage}\s+\d+\.\d$", out, re.M), (stage, out)
    assert re.search(r"scenes/s\s+\d+\.\d\d", out)
    assert "outcomes: ['ok']" in out
    assert "GPU busy            n/a" in out and "GPU memory          n/a" in out
    assert len(re.findall(r"peak RSS \d+ MiB", out)) == 2
