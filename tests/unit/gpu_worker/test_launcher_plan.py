"""Launcher planning: one slot per GPU pinned by CUDA_VISIBLE_DEVICES, or N CPU slots; no CUDA touched."""

from __future__ import annotations

import sys

import pytest

from gpu_worker.launcher import discover_gpus, plan_slots


def test_visible_devices_give_one_pinned_slot_per_gpu() -> None:
    gpus = discover_gpus({"CUDA_VISIBLE_DEVICES": "0,3"})
    slots = plan_slots("auto", None, gpus)
    assert [(s.name, s.env["CUDA_VISIBLE_DEVICES"]) for s in slots] == [("cv-gpu0", "0"), ("cv-gpu3", "3")]


def test_cpu_slots_hide_every_gpu() -> None:
    slots = plan_slots("cpu", 3, ["0"])
    assert [s.name for s in slots] == ["cv-cpu0", "cv-cpu1", "cv-cpu2"]
    assert all(s.env["CUDA_VISIBLE_DEVICES"] == "" for s in slots)


def test_asking_for_cuda_without_a_gpu_is_a_clear_error() -> None:
    assert discover_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []
    with pytest.raises(RuntimeError, match="no GPU found"):
        plan_slots("cuda", None, [])


def test_planning_imports_no_cuda_library() -> None:
    import subprocess

    code = "import sys, gpu_worker.__main__; print(sorted({'torch', 'onnxruntime'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
