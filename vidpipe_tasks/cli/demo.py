"""`vidpipe demo`: the embedded default end to end, with live progress and a summary."""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace
from importlib import resources
from pathlib import Path

from vidpipe_tasks.settings import GENERATION_QUEUE, REGISTRY_QUEUE, Settings, load_settings

TERMINAL = {"COMPLETED", "FAILED", "CANCELLED"}
#: The demo's generator fails now and then, as real models do (docs/generators.md "Imperfection").
DEMO_IMPERFECTION = {"imperfection_drift": 0.1, "imperfection_missing": 0.05, "imperfection_extra": 0.05}


def example_paths() -> list[Path]:
    """The storyboards bundled with the package."""
    folder = resources.files("vidpipe_tasks") / "examples"
    return sorted(Path(str(p)) for p in folder.iterdir() if p.name.endswith((".yaml", ".yml", ".json")))


def _embedded_settings(work_dir: Path) -> Settings:
    base = replace(load_settings({"VIDPIPE_HOME": str(work_dir)}), **DEMO_IMPERFECTION)
    os.environ.update(base.as_env())
    return base


def run_demo(work_dir: Path, *, fresh: bool = False, timeout: float = 1200.0) -> int:
    """Start one generation+registry worker and one CV worker, submit the examples, follow them, stop."""
    from vidpipe_tasks.storyboard import load_storyboards
    from vidpipe_tasks.workflow import purge_queue_folder, reset_work_folder

    settings = _embedded_settings(work_dir.resolve())
    paths = example_paths()
    load_storyboards(paths)  # validate before starting anything
    if fresh:
        reset_work_folder(settings)
    from vidpipe_tasks.db.migrate import prepare_installation

    prepare_installation(settings)
    leftovers = purge_queue_folder(settings)
    if leftovers:
        print(f"removed {leftovers} leftover message(s) from an interrupted run")
    from vidpipe_tasks.cli.workers import start_beat, start_cv_launcher, start_worker, stop_workers, wait_ready

    logs = settings.home / "logs"
    print(f"work folder: {settings.home}\nstarting workers (logs in {logs}) ...")
    workers = [
        start_worker(settings, "gen", [GENERATION_QUEUE, REGISTRY_QUEUE], logs),
        start_cv_launcher(settings, logs, processes=1),
        start_beat(settings, logs),  # the recovery sweep: a lost chain resumes by itself
    ]
    try:
        wait_ready(workers)
        print(
            "workers ready: gen@ consumes generation,registry; cv-cpu0@ (python -m gpu_worker --device cpu) consumes"
            " cv; beat sends the recovery sweep"
        )
        from vidpipe_tasks.celery_app import app
        from vidpipe_tasks.workflow import submit

        ids = submit(app, settings, paths)
        print("submitted projects " + ", ".join(f"{i} ({p.name})" for i, p in zip(ids, paths, strict=True)))
        statuses = follow(settings, ids, timeout)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping workers (each finishes the task it is running)")
        return 130
    finally:
        stop_workers(workers)
    print_summary(statuses)
    return 0 if all(s["status"] == "COMPLETED" for s in statuses) else 1


def _scene_line(project: dict, scene: dict) -> str:
    st = scene["stages"]
    last = scene["tasks"][-1] if scene["tasks"] else None
    where = f" on {last['worker']}" if last and last["worker"] else ""
    return (
        f"  [{project['project_id']}] scene {scene['scene_index']}: generate {st['generation'].lower()}, "
        f"analyse {st['analysis'].lower()}, register {st['registry'].lower()}"
        + (f" ({last['name'].split('.')[-1]}{where})" if last else "")
    )


def follow(settings: Settings, ids: list[int], timeout: float) -> list[dict]:
    """Print a line whenever a scene changes stage, until every project ends or `timeout` passes."""
    from vidpipe_tasks.cli.status import load_status

    seen: dict[tuple[int, int], str] = {}
    deadline = time.monotonic() + timeout
    while True:
        statuses = [load_status(settings, i) for i in ids]
        for project in statuses:
            for scene in project["scenes"]:
                line = _scene_line(project, scene)
                key = (project["project_id"], scene["scene_index"])
                if seen.get(key) != line:
                    seen[key] = line
                    print(line, flush=True)
        if all(s["status"] in TERMINAL for s in statuses):
            return statuses
        if time.monotonic() > deadline:
            print(f"timed out after {timeout:.0f}s")
            return statuses
        time.sleep(0.5)


def _score(value: float | None) -> str:
    return "missing" if value is None else f"{value:.2f}"


def _references(scene: dict) -> str:
    parts = []
    for character, ref in scene["selected_references"].items():
        origin = " (extracted from a clip)" if ref.get("source") == "CLIP_EXTRACT" else ""
        parts.append(f"{character}->{ref['tag']}{origin}")
    return ", ".join(parts) or "none"


def print_summary(statuses: list[dict]) -> None:
    """Per scene: references used, characters matched, assets registered, continuity."""
    print("\n=== summary ===")
    for project in statuses:
        faces = project.get("face_consistency") or {}
        consistency = f"; face consistency {_score(faces['score'])}" if faces else ""
        print(f"project {project['project_id']}: {project['title']} — {project['status']}{consistency}")
        for sc in project["scenes"]:
            if sc["stages"]["analysis"] == "SKIPPED":
                print(f"  scene {sc['scene_index']}: generated; no manifest, so no CV analysis")
                continue
            comps = ", ".join(f"{k}={_score(v)}" for k, v in sc["continuity_components"].items())
            print(
                f"  scene {sc['scene_index']}: references {_references(sc)}; "
                f"matched {', '.join(sc['matched_tags']) or 'none'}; "
                f"new assets {', '.join(sc['new_asset_tags']) or 'none'}; continuity {_score(sc['continuity_score'])}"
                + (f" ({comps})" if comps else "")
            )
            if sc["degraded_reason"]:
                print(f"    degraded: {sc['degraded_reason']}")
    engines = next((sc["engines"] for p in statuses for sc in p["scenes"] if sc.get("engines")), None)
    if engines:
        print(
            f"CV models: face engine {engines['face']} ({engines['choice']}); image embedder "
            f"{engines['embedder'] or 'none'} ({engines['embedder_choice']}); `vidpipe models status` says more"
        )


def cmd_demo(args: argparse.Namespace) -> int:
    # The same home as every other command's, so `vidpipe status` afterwards reads the demo's database.
    home = getattr(args, "home", None) or os.environ.get("VIDPIPE_HOME") or "vidpipe-work"
    return run_demo(Path(home), fresh=args.fresh, timeout=args.timeout)


def add_parser(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser(
        "demo",
        help="run the bundled examples end to end on the embedded default",
        description="Run the bundled examples on the embedded default in --home (default ./vidpipe-work: "
        "database, broker, results and media). Afterwards `vidpipe status` with the same --home shows them.",
    )
    demo.add_argument(
        "--work-dir", dest="home", default=argparse.SUPPRESS, help="the same as --home (kept for old scripts)"
    )
    demo.add_argument("--fresh", action="store_true", help="delete the work folder first")
    demo.add_argument("--timeout", type=float, default=1200.0, help="give up after this many seconds")
    demo.set_defaults(func=cmd_demo)
