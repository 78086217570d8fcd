"""The gpu tier: every test here is marked `gpu` and skipped where no CUDA device is visible."""

from __future__ import annotations

import shutil
import subprocess

import pytest


def cuda_device_visible() -> bool:
    """Ask nvidia-smi, never CUDA itself: the test process must not initialise CUDA before it forks workers."""
    if shutil.which("nvidia-smi") is None:
        return False
    listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    return listed.returncode == 0 and "GPU" in listed.stdout


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = [item for item in items if "tests/gpu/" in str(item.fspath)]
    if not here:
        return
    visible = cuda_device_visible()
    for item in here:
        item.add_marker(pytest.mark.gpu)
        if not visible:
            item.add_marker(pytest.mark.skip(reason="no CUDA device visible (nvidia-smi lists none)"))
