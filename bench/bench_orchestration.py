"""Orchestration overhead per scene on the embedded broker, with real worker processes: medians of task gaps."""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import yaml
from sqlalchemy import select

from vidpipe_tasks.celery_app import create_app
from vidpipe_tasks.db.migrate import prepare_installation
from vidpipe_tasks.db.models import Project, TaskRun
from vidpipe_tasks.db.session import session_scope
from vidpipe_tasks.settings import CV_QUEUE, GENERATION_QUEUE, REGISTRY_QUEUE, load_settings
from vidpipe_tasks.storyboard import load_storyboard
from vidpipe_tasks.workers import start_worker, stop_workers, wait_ready
from vidpipe_tasks.workflow import create_project, enqueue_project


def storyboard(scenes: int) -> dict:
    return {
        "title": "orchestration bench",
        "manifest": {
            "name": f"bench-{time.time_ns()}",
            "assets": [{"type": "character", "tag": "ana", "name": "Ana", "reference_image": "stock:face/t1-0"}],
        },
        "characters": [{"tag": "bo", "name": "Bo"}],
        "defaults": {"duration_s": 2, "fps": 12, "size": "640x360"},
        "scenes": [
            {"description": f"scene {i}", "location": "quay", "characters": ["ana", "bo"]} for i in range(1, scenes + 1)
        ],
    }


def run_once(home: Path, scenes: int, poll: float) -> dict[str, list[float]]:
    settings = replace(load_settings({"VIDPIPE_HOME": str(home)}), poll_interval=poll)
    prepare_installation(settings)
    path = home / "bench.yaml"
    path.write_text(yaml.safe_dump(storyboard(scenes)))
    project = create_project(settings, path, load_storyboard(path))
    logs = home / "logs"
    workers = [
        start_worker(settings, "gen", [GENERATION_QUEUE, REGISTRY_QUEUE], logs),
        start_worker(settings, "cv", [CV_QUEUE], logs),
    ]
    try:
        wait_ready(workers)
        enqueue_project(create_app(settings), settings, project)
        while True:
            with session_scope(settings.database_url) as s:
                if s.get(Project, project).status.value in ("COMPLETED", "FAILED"):
                    break
            time.sleep(0.2)
    finally:
        stop_workers(workers)
    with session_scope(settings.database_url) as s:
        runs = {(r.task_name.split(".")[1], r.scene_index): r for r in s.scalars(select(TaskRun))}
    return gaps(runs, scenes)


def gaps(runs: dict, scenes: int) -> dict[str, list[float]]:
    def gap(a, b) -> float:
        return (b.started_at - a.finished_at).total_seconds() * 1000

    out: dict[str, list[float]] = {
        "generate->analyze": [],
        "analyze->register": [],
        "register->next generate": [],
        "overhead per scene": [],
        "work per scene": [],
    }
    for n in range(1, scenes):
        g, a, r, nxt = (
            runs[("generate_clip", n)],
            runs[("analyze_clip", n)],
            runs[("register_entities", n)],
            runs[("generate_clip", n + 1)],
        )
        hops = [gap(g, a), gap(a, r), gap(r, nxt)]
        for key, value in zip(list(out)[:3], hops, strict=True):
            out[key].append(value)
        out["overhead per scene"].append(sum(hops))
        out["work per scene"].append(sum((t.finished_at - t.started_at).total_seconds() * 1000 for t in (g, a, r)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scenes", type=int, default=6)
    parser.add_argument("--polls", default="0.1,1.0", help="filesystem broker poll intervals to compare (s)")
    args = parser.parse_args()
    polls = [float(p) for p in args.polls.split(",")]
    results = {}
    for poll in polls:
        with tempfile.TemporaryDirectory() as tmp:
            results[poll] = run_once(Path(tmp), args.scenes, poll)
    print(f"embedded broker (filesystem://), {args.scenes} scenes, 1 gen+registry worker, 1 cv worker (solo pools)")
    base = statistics.median(results[polls[-1]]["overhead per scene"])
    for poll, figures in results.items():
        print(f"poll interval {poll:g}s:")
        for key, values in figures.items():
            print(f"  {key:<24} median {statistics.median(values):8.1f} ms  (n={len(values)})")
        ratio = statistics.median(figures["overhead per scene"]) / base
        print(f"  overhead vs poll {polls[-1]:g}s: {ratio:.2f}x")


if __name__ == "__main__":
    main()
