"""Registry commit time against the number of unbound faces the binding solver has to weigh (SQLite, embedded).

Each size fills one manifest with projects whose first scene registered two faces that stay ambiguous,
then times the commit of fresh projects' first scenes into it (median), alternating commits with the
binding step and without it (the registry as it was before binding, same run), against the first size.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from sqlalchemy import select

from vidpipe_tasks import registry
from vidpipe_tasks.db.migrate import prepare_installation
from vidpipe_tasks.db.models import Scene
from vidpipe_tasks.db.session import session_scope
from vidpipe_tasks.registry import register_scene
from vidpipe_tasks.settings import load_settings
from vidpipe_tasks.stages import _select
from vidpipe_tasks.storyboard import load_storyboard
from vidpipe_tasks.workflow import create_project

ENGINE = {"face": "dlib-offline", "metric": "euclidean", "match_threshold": 0.4, "embedder": None}


def board(manifest: str) -> dict:
    return {
        "title": "bench",
        "manifest": {"name": manifest, "assets": [{"type": "character", "tag": "ada", "name": "Ada"}]},
        "characters": [{"tag": "bea", "name": "Bea"}, {"tag": "cal", "name": "Cal"}],
        "scenes": [{"description": "two at once", "characters": ["bea", "cal"]}],
    }


def analysis(rng: np.random.Generator) -> dict:
    def face() -> list[float]:
        v = rng.normal(size=128)
        return list(0.5 * v / np.linalg.norm(v))

    cands = [
        {"key": f"c{i}", "frames": [0], "face_count": 2, "crop_path": f"c{i}.png", "quality": 0.9, "embedding": face()}
        for i in range(2)
    ]
    return {"status": "ok", "reason": None, "engine": ENGINE, "matches": [], "candidates": cands, "continuity": {}}


def commit(settings, folder: Path, manifest: str, rng: np.random.Generator) -> float:
    path = folder / f"b{rng.integers(1 << 40)}.yaml"
    path.write_text(yaml.safe_dump(board(manifest)))
    pid = create_project(settings, path, load_storyboard(path))
    with session_scope(settings.database_url) as s:
        _select(s, s.scalar(select(Scene).where(Scene.project_id == pid)))
    start = time.perf_counter()
    with session_scope(settings.database_url) as s:
        register_scene(s, s.scalar(select(Scene).where(Scene.project_id == pid)), analysis(rng))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[0, 40, 200], help="unbound faces already there")
    parser.add_argument("--commits", type=int, default=15, help="timed commits per size")
    args = parser.parse_args()
    rng = np.random.default_rng(7)
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings({"VIDPIPE_HOME": tmp})
        prepare_installation(settings, migrate=True)
        resolve = registry.resolve_bindings
        rows = []
        for size in args.sizes:
            manifest = f"bench-{size}"
            for _ in range(size // 2):
                commit(settings, Path(tmp), manifest, rng)
            timed: dict[bool, list[float]] = {True: [], False: []}
            for i in range(2 * args.commits):
                with_binding = i % 2 == 0
                registry.resolve_bindings = resolve if with_binding else (lambda *a, **k: [])
                timed[with_binding].append(commit(settings, Path(tmp), manifest, rng))
            registry.resolve_bindings = resolve
            rows.append((size, statistics.median(timed[True]), statistics.median(timed[False])))
        base = rows[0][1]
        print(f"{'unbound faces':>14} {'commit ms':>10} {'without binding':>16} {'x without':>10} {'x first size':>13}")
        for size, with_b, without in rows:
            ms = f"{with_b * 1000:>10.1f} {without * 1000:>16.1f}"
            print(f"{size:>14} {ms} {with_b / without:>10.2f} {with_b / base:>13.2f}")


if __name__ == "__main__":
    main()
