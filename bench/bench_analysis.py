"""Analysis throughput per face engine and device: sampled frames per second and ms per scene, split by stage.

Default scene: 8 s of 1280x720 at 24 fps with one referenced and one invented character, the shape the
design card names. The image embedder is open_clip ViT-B-32; without staged weights it runs with random
weights, which cost the same compute as trained ones (the figures are about speed, not accuracy).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from gpu_worker.analysis import analyze_clip
from gpu_worker.choice import choose_face_engine, embedder_problems
from gpu_worker.embedder import ClipEmbedder
from gpu_worker.faces.base import EngineUnavailable
from vidpipe_tasks.generators.base import CharacterSpec, ClipRequest
from vidpipe_tasks.generators.procedural import ProceduralGenerator
from vidpipe_tasks.generators.stock import stock_face
from vidpipe_tasks.settings import Settings, load_settings

STAGES = ("decode", "detect", "embed", "image_embed", "match", "cluster", "total")


def render_scenes(root: Path, count: int, size: tuple[int, int], duration: float, fps: int) -> list[dict]:
    """Render `count` scenes with one referenced and one invented character; return analysis requests."""
    ref = root / "refs" / "t1-0.png"
    ref.parent.mkdir(parents=True)
    stock_face("t1-0").save(ref)
    generator, requests = ProceduralGenerator(), []
    for i in range(1, count + 1):
        rel = f"clips/scene-{i:03d}.mp4"
        generator.generate(
            ClipRequest(
                project_id=1,
                scene_index=i,
                description=f"bench scene {i}",
                location=f"place-{i % 3}",
                characters=(CharacterSpec("ana", ref), CharacterSpec("bo")),
                duration_s=duration,
                fps=fps,
                width=size[0],
                height=size[1],
                output_path=root / rel,
            )
        )
        requests.append(
            {
                "project_id": 1,
                "scene_index": i,
                "clip_path": rel,
                "declared_characters": ["ana", "bo"],
                "registry": [
                    {"asset_id": 1, "tag": "ana", "embedding": None, "engine": None, "reference_image": "refs/t1-0.png"}
                ],
                "previous_appearances": [],
                "previous_visual": None,
                "crops_dir": f"crops/{i}",
            }
        )
    return requests


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


def run_config(engine_name: str, device: str, requests: list[dict], root: Path, args) -> None:
    settings = replace(load_settings(), face_engine=engine_name, cv_device=device, detect_batch=args.batch)
    try:
        engine, _ = choose_face_engine(settings)
        t0 = time.perf_counter()
        engine.load()
        load_ms = (time.perf_counter() - t0) * 1000
    except EngineUnavailable as exc:
        print(f"\n{engine_name} on {device}: unavailable: {exc}")
        return
    embedder, embedder_note = build_embedder(settings, device, args.batch) if args.embedder else (None, "off")
    warm = dict(requests[0], crops_dir="crops/warm")
    analyze_clip(warm, root, engine, embedder=embedder, max_frames=args.max_frames)  # first CUDA call is slow
    results = [analyze_clip(r, root, engine, embedder=embedder, max_frames=args.max_frames) for r in requests]
    frames = statistics.median(r["frames"]["sampled"] for r in results)
    total = statistics.median(r["timings_ms"]["total"] for r in results)
    print(f"\n{engine_name} on {device} (load {load_ms:.0f} ms once per process); image embedder: {embedder_note}")
    print(f"  median {frames:g} frames sampled, {statistics.median(r['faces_detected'] for r in results):g} faces")
    for stage in STAGES:
        values = [r["timings_ms"][stage] for r in results if r["timings_ms"].get(stage) is not None]
        if values:
            print(f"  {stage:<12} median {statistics.median(values):9.1f} ms per scene")
    print(f"  throughput   {frames / total * 1000:9.1f} sampled frames/s, {total:.0f} ms per scene")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=4)
    parser.add_argument("--size", default="1280x720")
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--fps", type=int, default=24)
    parser.add_argument("--max-frames", type=int, default=12)
    parser.add_argument("--batch", type=int, default=16, help="detector/recognizer and embedder batch size")
    parser.add_argument("--engines", default="dlib-offline,insightface", help="comma-separated face engines")
    parser.add_argument("--devices", default="cpu,cuda", help="comma-separated; cuda is skipped without a GPU")
    parser.add_argument("--no-embedder", dest="embedder", action="store_false", help="leave open_clip out")
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    print(
        f"{args.scenes} scenes of {args.duration:g} s {args.size} @ {args.fps} fps, up to {args.max_frames} "
        f"frames sampled per scene, batch {args.batch}; medians after one warm-up scene"
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        requests = render_scenes(root, args.scenes, size, args.duration, args.fps)
        for device in args.devices.split(","):
            for engine_name in args.engines.split(","):
                if engine_name == "dlib-offline" and device != "cpu":
                    continue  # dlib-bin is a CPU build
                run_config(engine_name, device, requests, root, args)


if __name__ == "__main__":
    main()
