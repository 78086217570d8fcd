"""Faults on quality chains (candidates in chords, gate rounds): killed workers, a Redis restart; no harm done.

The same cluster and checker as test_faults.py, with every manifest project asking for 2 candidates per
round and up to 2 rounds. Beyond the plain checks, the attempt records must show one kept attempt per
registered scene, every attempt ended (none left generating or analysing), no attempt rendered again
after a run of it succeeded, and no scene's first candidate generated before the previous scene's registry commit.
"""

from __future__ import annotations

import signal
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select

from tests.faults.harness import (
    FAST_RECOVERY,
    Cluster,
    Nemesis,
    check,
    kill_during,
    random_kill,
    restart_redis,
    storyboard,
)
from tests.helpers import run_vidpipe
from vidpipe_tasks.db.models import Scene, SceneAttempt, SceneManifest, TaskRun
from vidpipe_tasks.db.session import session_scope
from vidpipe_tasks.settings import Settings

pytestmark = pytest.mark.faults

PROJECTS, SCENES = 6, 3
RUN_TIMEOUT_S = 300
#: A gate the first round often fails (re-renders score 0.85-0.9 on dlib's scale), and two candidates per round.
QUALITY = {"min_identity": 0.88, "min_adherence": 0.0, "max_attempts": 2, "candidates": 2}

NEMESES = {
    "SIGKILL during analyze_candidate": Nemesis(kill_during("vidpipe.analyze_candidate"), (2.0, 4.0), limit=3),
    "SIGKILL during pick_attempt or generate_candidate": Nemesis(
        lambda cluster, rng: kill_during(rng.choice(["vidpipe.pick_attempt", "vidpipe.generate_candidate"]))(
            cluster, rng
        ),
        (2.0, 4.0),
        limit=3,
    ),
    "random SIGKILLs of workers and pool children": Nemesis(random_kill, every_s=(2.0, 5.0), limit=6),
    "Redis restart by SIGKILL": Nemesis(restart_redis(signal.SIGKILL), every_s=(4.0, 8.0), limit=2),
}


def quality_workload(folder: Path) -> list[Path]:
    """The fault tier's storyboards, the ones with a manifest asking for the gate and candidates."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(PROJECTS):
        board = storyboard(i, SCENES)
        if "manifest" in board:
            board["quality"] = QUALITY
        path = folder / f"quality-{i:03d}.yaml"
        path.write_text(yaml.safe_dump(board, sort_keys=False))
        paths.append(path)
    return paths


def _utc(value: datetime | None) -> datetime | None:
    return value if value is None or value.tzinfo else value.replace(tzinfo=UTC)


def attempt_problems(settings: Settings, ids: list[int]) -> list[str]:
    """What the attempt records show wrong: kept attempts, unfinished attempts, double renders, order."""
    problems: list[str] = []
    with session_scope(settings.database_url) as s:
        attempts = list(s.scalars(select(SceneAttempt).where(SceneAttempt.project_id.in_(ids))))
        by_scene: dict[tuple[int, int], list[SceneAttempt]] = defaultdict(list)
        for a in attempts:
            by_scene[(a.project_id, a.scene_index)].append(a)
            if a.state not in ("analysed", "failed"):
                problems.append(f"p{a.project_id} s{a.scene_index} attempt {a.attempt} left {a.state}")
        # A re-run of a generated attempt must reuse its clip: rendering again after the first success would
        # move generated_at past that run's end (and, with a remote generator, pay a second job).
        first_success: dict[tuple[int, int, int], datetime] = {}
        for r in s.scalars(
            select(TaskRun).where(
                TaskRun.project_id.in_(ids),
                TaskRun.task_name == "vidpipe.generate_candidate",
                TaskRun.outcome == "success",
            )
        ):
            key, end = (r.project_id, r.scene_index, r.attempt), _utc(r.finished_at)
            if end is not None and (key not in first_success or end < first_success[key]):
                first_success[key] = end
        for a in attempts:
            done = first_success.get((a.project_id, a.scene_index, a.attempt))
            if done is not None and a.generated_at is not None and _utc(a.generated_at) > done:
                problems.append(f"p{a.project_id} s{a.scene_index} attempt {a.attempt} rendered again after {done}")
        scenes = list(s.scalars(select(Scene).where(Scene.project_id.in_(ids)).order_by(Scene.scene_index)))
        registered: dict[tuple[int, int], datetime | None] = {}
        for scene in scenes:
            sm = s.scalar(select(SceneManifest).where(SceneManifest.scene_id == scene.id))
            registered[(scene.project_id, scene.scene_index)] = _utc(sm.registered_at) if sm else None
        for (project, index), rows in by_scene.items():
            kept = [a.attempt for a in rows if a.kept]
            if registered.get((project, index)) and len(kept) != 1:
                problems.append(f"p{project} s{index}: kept attempts {kept}")
            previous = registered.get((project, index - 1))
            first = min((_utc(a.created_at) for a in rows), default=None)
            if index > 1 and (previous is None or (first is not None and first < previous)):
                problems.append(f"p{project} s{index}: an attempt began {first}, before scene {index - 1} committed")
        if not by_scene:
            problems.append("no attempt was recorded: the workload ran no quality chain")
    return problems


@pytest.mark.parametrize("name", list(NEMESES))
def test_quality_chains_complete_unharmed_under_the_nemesis(name: str, tmp_path) -> None:
    nemesis = NEMESES[name]
    with Cluster(tmp_path, overrides=FAST_RECOVERY) as cluster:
        # Submitted as operators do, by `vidpipe submit` in its own process: a chain that opens with a chord
        # leaves result subscriptions in the submitting process, which must not outlive this cluster's Redis.
        paths = quality_workload(tmp_path / "boards")
        submitted = run_vidpipe(cluster.settings, "submit", *map(str, paths), timeout=120)
        assert submitted.returncode == 0, submitted.stderr
        ids = [int(line) for line in submitted.stdout.split()]
        assert len(ids) == PROJECTS
        nemesis.run(cluster)
        states = cluster.wait(ids, RUN_TIMEOUT_S)
        nemesis.stop()
        report = check(cluster.settings, ids)
        problems = report.problems() + attempt_problems(cluster.settings, ids)
        tails = "" if not problems else cluster.supervisor.log_tails()
    print(f"{name}: {len(nemesis.faults)} faults, {report.recoveries} automatic recoveries, "
          f"{report.completed}/{PROJECTS} completed")  # fmt: skip
    assert nemesis.faults, f"the nemesis never struck: {name}"
    assert problems == [], f"{name}: {states}\nfaults: {nemesis.faults}\n{tails}"
    assert report.completed == PROJECTS
