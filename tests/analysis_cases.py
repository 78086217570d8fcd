"""Clips to compare analyses on: the bench scenes and the demo storyboards' scenes, rendered procedurally.

Used by the equivalence test (today's analysis against the frozen f20fb52 one) and by bench_analysis.
"""

from __future__ import annotations

from pathlib import Path

from vidpipe_tasks.cli.demo import example_paths
from vidpipe_tasks.generators.base import CharacterSpec, ClipRequest
from vidpipe_tasks.generators.procedural import ProceduralGenerator
from vidpipe_tasks.generators.stock import stock_face
from vidpipe_tasks.storyboard import load_storyboard


def _request(index: int, rel: str, declared: list[str], registry: list[dict], crops: str) -> dict:
    return {
        "project_id": 1,
        "scene_index": index,
        "clip_path": rel,
        "declared_characters": declared,
        "registry": registry,
        "previous_appearances": [],
        "previous_visual": None,
        "crops_dir": crops,
    }


def _reference(root: Path, stock_name: str) -> Path:
    path = root / "refs" / f"{stock_name}.png"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        stock_face(stock_name).save(path)
    return path


#: Characters without a reference that bench scenes can add (the generator invents their faces).
INVENTED = ("bo", "cy", "dee")


def render_bench_scenes(
    root: Path, count: int, size: tuple[int, int], duration: float, fps: int, *, invented: int = 1
) -> list[dict]:
    """`count` scenes with one referenced character (ana) and `invented` new ones (bo, ...); analysis requests."""
    ref = _reference(root, "t1-0")
    generator, requests = ProceduralGenerator(), []
    registry = [{"asset_id": 1, "tag": "ana", "embedding": None, "engine": None, "reference_image": "refs/t1-0.png"}]
    for i in range(1, count + 1):
        rel = f"clips/bench-{size[0]}x{size[1]}-{duration:g}s-{invented}-{i:03d}.mp4"
        generator.generate(
            ClipRequest(
                project_id=1,
                scene_index=i,
                description=f"bench scene {i}",
                location=f"place-{i % 3}",
                characters=(CharacterSpec("ana", ref), *(CharacterSpec(t) for t in INVENTED[:invented])),
                duration_s=duration,
                fps=fps,
                width=size[0],
                height=size[1],
                output_path=root / rel,
            )
        )
        requests.append(_request(i, rel, ["ana", *INVENTED[:invented]], registry, f"crops/bench-{i}"))
    return requests


def render_demo_scenes(root: Path) -> list[dict]:
    """Every scene of the demo storyboards (those with a manifest), against the manifest's references."""
    generator, requests = ProceduralGenerator(), []
    for board_path in example_paths():
        board = load_storyboard(board_path)
        if board.manifest is None:
            continue
        refs = {
            a.tag: a.reference_image.removeprefix("stock:face/")
            for a in board.manifest.assets
            if a.type == "character" and a.reference_image and a.reference_image.startswith("stock:face/")
        }
        registry = [
            {"asset_id": n, "tag": tag, "embedding": None, "engine": None, "reference_image": f"refs/{name}.png"}
            for n, (tag, name) in enumerate(sorted(refs.items()), start=1)
        ]
        for name in refs.values():
            _reference(root, name)
        for i, scene in enumerate(board.scenes, start=1):
            fmt = board.clip_format(scene)
            rel = f"clips/{board_path.stem}-{i:03d}.mp4"
            cast = tuple(
                CharacterSpec(t, root / "refs" / f"{refs[t]}.png" if t in refs else None) for t in scene.characters
            )
            generator.generate(
                ClipRequest(
                    project_id=1,
                    scene_index=i,
                    description=scene.description,
                    location=scene.location,
                    characters=cast,
                    duration_s=fmt.duration_s,
                    fps=fmt.fps,
                    width=fmt.width,
                    height=fmt.height,
                    output_path=root / rel,
                )
            )
            requests.append(_request(i, rel, list(scene.characters), registry, f"crops/{board_path.stem}-{i}"))
    return requests


def outcome(result: dict) -> dict:
    """What an analysis decides: which assets matched in which frames, and which new faces it proposes."""
    return {
        "status": result["status"],
        "matches": sorted((m["asset_id"], m["tag"], tuple(m["frames"])) for m in result["matches"]),
        "candidates": sorted((tuple(c["frames"]), c["face_count"]) for c in result["candidates"]),
    }
