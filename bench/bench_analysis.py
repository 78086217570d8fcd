"""Per-scene analysis time split by stage (decode, detect, embed, match, cluster): medians over scenes."""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from gpu_worker.analysis import analyze_clip
from gpu_worker.lifecycle import get_engine
from vidpipe_tasks.generators.base import CharacterSpec, ClipRequest
from vidpipe_tasks.generators.procedural import ProceduralGenerator
from vidpipe_tasks.generators.stock import stock_face

STAGES = ("decode", "detect", "embed", "detect_embed", "match", "cluster", "total")


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
                "crops_dir": f"crops/{i}",
            }
        )
    return requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scenes", type=int, default=6)
    parser.add_argument("--size", default="640x360")
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--fps", type=int, default=12)
    parser.add_argument("--engine", default="auto")
    parser.add_argument("--max-frames", type=int, default=12)
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        requests = render_scenes(root, args.scenes, size, args.duration, args.fps)
        t0 = time.perf_counter()
        engine = get_engine(args.engine)
        load_ms = (time.perf_counter() - t0) * 1000
        analyze_clip(requests[0], root, engine, max_frames=args.max_frames)  # warm-up, not counted
        results = [analyze_clip(r, root, engine, max_frames=args.max_frames) for r in requests]
    print(
        f"engine {engine.name}; {args.scenes} scenes of {args.duration:g}s {args.size} @ {args.fps} fps; "
        f"up to {args.max_frames} frames sampled; engine load {load_ms:.0f} ms (once per process)"
    )
    frames = statistics.median(r["frames"]["sampled"] for r in results)
    faces = statistics.median(r["faces_detected"] for r in results)
    print(f"median frames sampled {frames:g}, faces detected {faces:g} per scene")
    for stage in STAGES:
        values = [r["timings_ms"].get(stage) for r in results if r["timings_ms"].get(stage) is not None]
        if values:
            print(
                f"  {stage:<13} median {statistics.median(values):8.1f} ms   (min {min(values):.1f}, "
                f"max {max(values):.1f})"
            )
    total = statistics.median(r["timings_ms"]["total"] for r in results)
    print(f"  per sampled frame: {total / frames:.1f} ms")


if __name__ == "__main__":
    main()
