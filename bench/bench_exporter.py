"""What one scrape of `vidpipe exporter` costs against the size of the run log: database read and exposition.

Seeds a SQLite database with N projects of 5 scenes each (3 task runs per scene, one continuity score per
scene) and times the collector's database read plus Prometheus' text exposition, median of several scrapes.
The embedded database is the slow case; PostgreSQL does the GROUP BYs server-side.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from vidpipe_tasks.db.migrate import prepare_installation
from vidpipe_tasks.db.models import Project, ProjectStatus, Scene, SceneManifest, StageStatus, TaskRun
from vidpipe_tasks.db.session import session_scope
from vidpipe_tasks.metrics import VidpipeCollector
from vidpipe_tasks.settings import load_settings

TASKS = ("vidpipe.generate_clip", "vidpipe.analyze_clip", "vidpipe.register_entities")


def seed(settings, projects: int, scenes: int = 5) -> int:  # noqa: ANN001 - Settings
    """Projects, scenes, manifests and task runs as a finished run leaves them; returns the task-run count."""
    now = datetime.now(UTC)
    runs = 0
    with session_scope(settings.database_url) as s:
        for p in range(projects):
            project = Project(title=f"p{p}", status=ProjectStatus.COMPLETED, storyboard_json={}, created_at=now)
            s.add(project)
            s.flush()
            for i in range(1, scenes + 1):
                done = StageStatus.DONE
                scene = Scene(
                    project_id=project.id, scene_index=i, duration_s=2, fps=12, width=64, height=36,
                    generation_status=done, analysis_status=done, registry_status=done,
                )  # fmt: skip
                s.add(scene)
                s.flush()
                s.add(SceneManifest(scene_id=scene.id, continuity_score=(i * 0.17) % 1))
                for t, name in enumerate(TASKS):
                    started = now + timedelta(seconds=i * 10 + t)
                    s.add(
                        TaskRun(
                            task_id=f"{p}-{i}-{t}", task_name=name, project_id=project.id, scene_index=i,
                            attempts=1, retries=0, polls=0, crashes=0, started_at=started,
                            finished_at=started + timedelta(seconds=0.5 + t), outcome="success",
                        )
                    )  # fmt: skip
                    runs += 1
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--projects", default="100,1000,4000", help="project counts (5 scenes each)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"SQLite, 5 scenes and 15 task runs per project; median of {args.repeats} scrapes (database source only)")
    for count in (int(v) for v in args.projects.split(",")):
        home = Path(tempfile.mkdtemp(prefix="bench-exporter-"))
        settings = load_settings({"VIDPIPE_HOME": str(home)})
        prepare_installation(settings, migrate=True)
        runs = seed(settings, count)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(VidpipeCollector(settings, ("database",)))
        times, size = [], 0
        for _ in range(args.repeats):
            start = time.perf_counter()
            size = len(generate_latest(registry))
            times.append((time.perf_counter() - start) * 1000)
        print(f"{count:>6} projects, {runs:>6} task runs: {statistics.median(times):8.1f} ms per scrape, {size} bytes")


if __name__ == "__main__":
    main()
