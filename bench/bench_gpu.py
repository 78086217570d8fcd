"""GPU feeding: N scenes through K analysis processes (the CV worker's pool children) sharing one device.

Prints per-stage ms (medians), scenes per second, GPU busy % sampled with NVML every 50 ms, peak GPU
memory (NVML, whole device) and the peak RSS of each analysis process. Each process loads its models
once after it starts (spawned, so no CUDA state is inherited), as the CV worker's pool children do.

Models: a staged insightface pack and open_clip weights when present. Otherwise open_clip ViT-B-32 with
random weights (the real architecture: same compute as trained weights) and, for faces, the synthetic
insightface-shaped ONNX pack of tests/tiny_models.py (SCRFD/ArcFace signatures, tiny compute: its
detect/embed figures measure the plumbing around the models, not SCRFD-10GF or ArcFace-R50). The first
lines printed say which were used. On a CPU the same table is printed, with the GPU columns n/a.
"""

from __future__ import annotations

import argparse
import ctypes
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.analysis_cases import render_bench_scenes  # noqa: E402
from vidpipe_tasks.settings import load_settings  # noqa: E402

STAGES = ("decode", "detect", "embed", "image_embed", "match", "cluster", "total")


class Nvml:
    """GPU utilisation and memory from libnvidia-ml through ctypes (no Python package needed, no CUDA context)."""

    class _Util(ctypes.Structure):
        _fields_ = [("gpu", ctypes.c_uint), ("memory", ctypes.c_uint)]

    class _Mem(ctypes.Structure):
        _fields_ = [("total", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong), ("used", ctypes.c_ulonglong)]

    def __init__(self, index: int = 0) -> None:
        self.lib = ctypes.CDLL("libnvidia-ml.so.1")
        if self.lib.nvmlInit_v2() != 0:
            raise OSError("nvmlInit failed")
        self.handle = ctypes.c_void_p()
        if self.lib.nvmlDeviceGetHandleByIndex_v2(index, ctypes.byref(self.handle)) != 0:
            raise OSError(f"no NVML device {index}")

    def sample(self) -> tuple[int, int]:
        """(GPU busy % over the driver's last sample period, bytes of device memory used)."""
        util, mem = self._Util(), self._Mem()
        self.lib.nvmlDeviceGetUtilizationRates(self.handle, ctypes.byref(util))
        self.lib.nvmlDeviceGetMemoryInfo(self.handle, ctypes.byref(mem))
        return int(util.gpu), int(mem.used)


def open_nvml() -> Nvml | None:
    try:
        return Nvml(int((os.environ.get("CUDA_VISIBLE_DEVICES") or "0").split(",")[0] or 0))
    except (OSError, ValueError):
        return None


class Sampler(threading.Thread):
    """Samples NVML every `period_s` until stopped."""

    def __init__(self, nvml: Nvml, period_s: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.nvml, self.period_s = nvml, period_s
        self.busy: list[int] = []
        self.peak_used = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            busy, used = self.nvml.sample()
            self.busy.append(busy)
            self.peak_used = max(self.peak_used, used)
            time.sleep(self.period_s)


def staged_or_synthetic(root: Path, device: str):  # noqa: ANN201 - (Settings, notes)
    """Settings whose models are staged ones, or the stand-ins the module docstring names."""
    from gpu_worker.choice import embedder_problems, insightface_problems

    settings = replace(load_settings(), cv_device=device, face_engine="insightface")
    notes = []
    if insightface_problems(settings):
        from tests.tiny_models import build_tiny_pack

        # A models folder of our own for the pack; staged open_clip weights, if any, stay where they are.
        clip = str(settings.clip_weights_path) if not embedder_problems(settings) else ""
        settings = replace(settings, models_dir=root / "synthetic-models", clip_weights=clip)
        build_tiny_pack(settings.insightface_dir)
        notes.append("faces: synthetic insightface-shaped pack (tests/tiny_models.py; tiny compute)")
    else:
        notes.append(f"faces: staged insightface pack {settings.insightface_dir}")
    staged_clip = not embedder_problems(settings)
    notes.append(f"image: open_clip {settings.clip_model} " + ("staged weights" if staged_clip else "random weights"))
    return settings, staged_clip, notes


def _worker(settings, staged_clip: bool, root: str, jobs, results) -> None:  # noqa: ANN001 - mp queues
    """One analysis process: load once, analyse scenes from `jobs` until None, report timings and memory."""
    import resource

    from gpu_worker.analysis import analyze_clip
    from gpu_worker.choice import choose_face_engine
    from gpu_worker.embedder import ClipEmbedder

    engine, _ = choose_face_engine(settings)
    engine.load()
    embedder = ClipEmbedder(
        settings.clip_model,
        settings.clip_weights_path if staged_clip else None,
        device=settings.cv_device,
        batch_size=settings.embed_batch,
        random_weights=not staged_clip,
    )
    embedder.load()
    results.put(("ready", os.getpid(), engine.session_providers, embedder.device))
    while (request := jobs.get()) is not None:
        result = analyze_clip(request, Path(root), engine, embedder=embedder)
        results.put(("done", os.getpid(), result["timings_ms"], result["status"]))
    peak_torch = 0
    if embedder.device and embedder.device.startswith("cuda"):
        import torch

        peak_torch = torch.cuda.max_memory_allocated()
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    results.put(("memory", os.getpid(), rss_kb * 1024, peak_torch))


def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        settings, staged_clip, notes = staged_or_synthetic(root, args.device)
        size = tuple(int(v) for v in args.size.split("x"))
        distinct = render_bench_scenes(root, min(args.scenes, 4), size, args.duration, args.fps)
        requests = [dict(distinct[i % len(distinct)], crops_dir=f"crops/{i}") for i in range(args.scenes)]
        ctx = mp.get_context("spawn")  # no CUDA state crosses into the analysis processes
        jobs, results = ctx.Queue(), ctx.Queue()
        procs = [
            ctx.Process(target=_worker, args=(settings, staged_clip, str(root), jobs, results))
            for _ in range(args.concurrency)
        ]
        for p in procs:
            p.start()
        ready = [results.get(timeout=600) for _ in procs]
        for _ in procs:  # one warm-up scene per process (first CUDA calls build kernels and workspaces)
            jobs.put(dict(requests[0], crops_dir="crops/warm"))
        warm = [results.get(timeout=600) for _ in procs]
        nvml = open_nvml()
        sampler = Sampler(nvml) if nvml is not None else None
        if sampler is not None:
            sampler.start()
        started = time.perf_counter()
        for request in requests:
            jobs.put(request)
        done = [results.get(timeout=600) for _ in requests]
        wall = time.perf_counter() - started
        if sampler is not None:
            sampler.stopping.set()
            sampler.join()
        for _ in procs:
            jobs.put(None)
        memory = [results.get(timeout=120) for _ in procs]
        for p in procs:
            p.join(60)
    report(args, notes, ready, warm, done, wall, sampler, memory)


def report(args, notes, ready, warm, done, wall, sampler, memory) -> None:  # noqa: ANN001
    providers, device = ready[0][2], ready[0][3]
    print(
        f"{args.scenes} scenes of {args.duration:g} s {args.size} @ {args.fps} fps, 2 faces each; "
        f"{args.concurrency} analysis process(es) on {args.device}"
    )
    for note in notes:
        print(f"  {note}")
    print(f"  insightface sessions: {providers}; open_clip on {device}")
    statuses = {d[3] for d in done}
    print(f"  outcomes: {sorted(statuses)}; warm-up total {statistics.median(w[2]['total'] for w in warm):.0f} ms")
    print(f"  {'stage':<12} {'median ms':>10}")
    for stage in STAGES:
        values = [d[2][stage] for d in done if d[2].get(stage) is not None]
        if values:
            print(f"  {stage:<12} {statistics.median(values):10.1f}")
    print(f"  scenes/s     {args.scenes / wall:10.2f}  ({wall * 1000 / args.scenes:.0f} ms of wall time per scene)")
    if sampler is not None and sampler.busy:
        busy = statistics.mean(sampler.busy)
        print(f"  GPU busy     {busy:9.0f} %  (NVML, {len(sampler.busy)} samples)")
        print(f"  GPU memory   {sampler.peak_used / 2**30:9.2f} GiB peak used on the device")
    else:
        print("  GPU busy            n/a (no NVML: no GPU here)")
        print("  GPU memory          n/a")
    for _, pid, rss, torch_peak in memory:
        torch_part = f", torch peak {torch_peak / 2**30:.2f} GiB" if torch_peak else ""
        print(f"  process {pid}: peak RSS {rss / 2**20:.0f} MiB{torch_part}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=2, help="analysis processes (pool children per GPU)")
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    parser.add_argument("--size", default="1280x720")
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--fps", type=int, default=24)
    run(parser.parse_args())


if __name__ == "__main__":
    main()
