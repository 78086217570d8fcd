"""Analysis time per scene, today's analysis against the f20fb52 baseline in the same run, split by stage.

Default scene: 8 s of 1280x720 at 24 fps with one referenced and one invented character, the shape the
design card names. The image embedder is open_clip ViT-B-32; without staged weights it runs with random
weights, which cost the same compute as trained ones (the figures are about speed, not accuracy).
Baseline and new analyses alternate scene by scene (the machine is shared, so both see the same noise);
the figures are medians over `--rounds` passes over the scenes. `--sweep` adds the cost model: the new
analysis at other clip lengths, resolutions and face counts.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ holds the frozen baseline

from gpu_worker.analysis import analyze_clip  # noqa: E402
from gpu_worker.choice import choose_face_engine, embedder_problems  # noqa: E402
from gpu_worker.embedder import ClipEmbedder  # noqa: E402
from gpu_worker.faces.base import EngineUnavailable  # noqa: E402
from tests.analysis_cases import outcome, render_bench_scenes  # noqa: E402
from tests.reference.analysis_f20fb52 import analyze_clip as baseline_analyze_clip  # noqa: E402
from vidpipe_tasks.settings import Settings, load_settings  # noqa: E402

#: "cpu" is this process's CPU time for the whole analysis (all its threads): on a shared machine it
#: moves far less with the load than the wall-clock stages do.
STAGES = ("decode", "detect", "embed", "image_embed", "match", "cluster", "total", "cpu")


def build_embedder(settings: Settings, device: str, batch: int) -> tuple[ClipEmbedder | None, str]:
    """Staged open_clip weights when present, otherwise the same architecture with random weights."""
    staged = not embedder_problems(settings)
    embedder = ClipEmbedder(
        settings.clip_model,
        settings.clip_weights_path if staged else None,
        device=device,
        batch_size=batch,
        random_weights=not staged,
    )
    try:
        embedder.load()
    except EngineUnavailable as exc:
        return None, f"unavailable ({exc})"
    weights = "staged" if staged else "random"
    return embedder, f"{embedder.name} on {embedder.device} ({embedder.dtype}, {weights} weights)"


def load_engine(engine_name: str, device: str, batch: int):  # noqa: ANN201 - a FaceEngine
    settings = replace(load_settings(), face_engine=engine_name, cv_device=device, detect_batch=batch)
    engine, _ = choose_face_engine(settings)
    t0 = time.perf_counter()
    engine.load()
    return settings, engine, (time.perf_counter() - t0) * 1000


def alternate(requests: list[dict], root: Path, engine, embedder, args) -> dict[str, list[dict]]:  # noqa: ANN001
    """Baseline and new analysis of every scene, `args.rounds` times, alternating which goes first."""
    runs = {"baseline": baseline_analyze_clip, "new": analyze_clip}
    results: dict[str, list[dict]] = {"baseline": [], "new": []}
    for name, fn in runs.items():  # warm-up: first calls allocate and (on CUDA) build kernels
        fn(
            dict(requests[0], crops_dir=f"crops/warm-{name}"),
            root,
            engine,
            embedder=embedder,
            max_frames=args.max_frames,
        )
    for round_ in range(args.rounds):
        for i, request in enumerate(requests):
            order = list(runs) if (round_ + i) % 2 == 0 else list(runs)[::-1]
            for name in order:
                req = dict(request, crops_dir=f"crops/{name}-{i}")
                cpu = time.process_time()
                result = runs[name](req, root, engine, embedder=embedder, max_frames=args.max_frames)
                result["timings_ms"]["cpu"] = round((time.process_time() - cpu) * 1000, 1)
                results[name].append(result)
    return results


def median_stage(results: list[dict], stage: str) -> float | None:
    values = [r["timings_ms"][stage] for r in results if r["timings_ms"].get(stage) is not None]
    return statistics.median(values) if values else None


def print_comparison(results: dict[str, list[dict]]) -> None:
    print(f"  {'stage':<12} {'baseline':>10} {'new':>10} {'new/baseline':>13}")
    for stage in STAGES:
        old, new = median_stage(results["baseline"], stage), median_stage(results["new"], stage)
        if old is None or new is None:
            continue
        ratio = f"{new / old:.2f}x" if old > 0.5 else "-"
        print(f"  {stage:<12} {old:8.1f}ms {new:8.1f}ms {ratio:>13}")
    same = all(
        _decision(outcome(a)) == _decision(outcome(b)) for a, b in zip(results["baseline"], results["new"], strict=True)
    )
    total_old, total_new = median_stage(results["baseline"], "total"), median_stage(results["new"], "total")
    cpu_old, cpu_new = median_stage(results["baseline"], "cpu"), median_stage(results["new"], "cpu")
    print(
        f"  speed-up {total_old / total_new:.2f}x (wall), {cpu_old / cpu_new:.2f}x (cpu); "
        f"same matched assets and candidates in every scene: {same}"
    )


def _load_average() -> str:
    """The host's 1-minute load average against its cores (a shared machine inflates every figure)."""
    return f"{os.getloadavg()[0]:.1f}/{os.cpu_count()}" if hasattr(os, "getloadavg") else "n/a"


def _decision(summary: dict) -> tuple:
    return summary["status"], [m[0] for m in summary["matches"]], [c[1] for c in summary["candidates"]]


def run_config(engine_name: str, device: str, requests: list[dict], root: Path, args) -> None:  # noqa: ANN001
    try:
        settings, engine, load_ms = load_engine(engine_name, device, args.batch)
    except EngineUnavailable as exc:
        print(f"\n{engine_name} on {device}: unavailable: {exc}")
        return
    embedder, embedder_note = build_embedder(settings, device, args.batch) if args.embedder else (None, "off")
    before = _load_average()
    results = alternate(requests, root, engine, embedder, args)
    faces = statistics.median(r["faces_detected"] for r in results["new"])
    print(f"\n{engine_name} on {device} (load {load_ms:.0f} ms once per process); image embedder: {embedder_note}")
    print(f"  load average (1 min) {before} before, {_load_average()} after: absolute figures scale with it")
    print(f"  {len(results['new'])} analyses each, {faces:g} faces per scene (median); medians per scene:")
    print_comparison(results)


def sweep(root: Path, args) -> None:  # noqa: ANN001
    """The cost model: the new analysis alone, varying one of clip length, resolution and face count."""
    try:
        settings, engine, _ = load_engine(args.engines.split(",")[0], "cpu", args.batch)
    except EngineUnavailable as exc:
        print(f"\nsweep: unavailable: {exc}")
        return
    embedder, _ = build_embedder(settings, "cpu", args.batch) if args.embedder else (None, "off")
    base = (tuple(int(v) for v in args.size.split("x")), args.duration, 1)
    points = [((640, 360), args.duration, 1), base, ((1920, 1080), args.duration, 1)]
    points += [(base[0], args.duration / 2, 1), (base[0], args.duration * 2, 1), (base[0], args.duration, 2)]
    points += [(base[0], args.duration, 3)]
    print(f"\nsweep (new analysis, {engine.name}, cpu): median over {args.scenes} scenes")
    print(
        f"  {'size':<10} {'length':>7} {'faces':>6} {'decode':>8} {'detect':>8} {'embed':>8} {'image':>8} {'total':>8}"
    )
    for size, duration, invented in points:
        requests = render_bench_scenes(root, args.scenes, size, duration, args.fps, invented=invented)
        results = [analyze_clip(r, root, engine, embedder=embedder, max_frames=args.max_frames) for r in requests]
        stage = {s: median_stage(results, s) or 0.0 for s in STAGES}
        print(
            f"  {size[0]}x{size[1]:<5} {duration:6g}s {invented + 1:>6} {stage['decode']:7.0f}ms "
            f"{stage['detect']:7.0f}ms {stage['embed']:7.0f}ms {stage['image_embed']:7.0f}ms {stage['total']:7.0f}ms"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2, help="passes over the scenes (baseline and new each)")
    parser.add_argument("--size", default="1280x720")
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--fps", type=int, default=24)
    parser.add_argument("--max-frames", type=int, default=12)
    parser.add_argument("--batch", type=int, default=16, help="detector/recognizer and embedder batch size")
    parser.add_argument("--engines", default="dlib-offline,insightface", help="comma-separated face engines")
    parser.add_argument("--devices", default="cpu,cuda", help="comma-separated; cuda is skipped without a GPU")
    parser.add_argument("--no-embedder", dest="embedder", action="store_false", help="leave open_clip out")
    parser.add_argument("--sweep", action="store_true", help="also print the cost model (new analysis only)")
    parser.add_argument("--threads", type=int, help="torch threads for both analyses (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    size = tuple(int(v) for v in args.size.split("x"))
    print(
        f"{args.scenes} scenes of {args.duration:g} s {args.size} @ {args.fps} fps, 2 faces (1 referenced, 1 new), "
        f"up to {args.max_frames} frames sampled per scene, batch {args.batch}; baseline = analysis at f20fb52"
    )
    import torch

    print(f"torch threads: {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        requests = render_bench_scenes(root, args.scenes, size, args.duration, args.fps)
        for device in args.devices.split(","):
            for engine_name in args.engines.split(","):
                if engine_name == "dlib-offline" and device != "cpu":
                    continue  # dlib-bin is a CPU build
                run_config(engine_name, device, requests, root, args)
        if args.sweep:
            sweep(root, args)


if __name__ == "__main__":
    main()
