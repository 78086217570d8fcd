"""Faults on a real cluster: each nemesis hits 12 projects x 3 scenes; the database must show no harm done.

Workers run under a supervisor that restarts them as systemd would; nothing calls `vidpipe resume`. The
checker reads the database: every project COMPLETED, no duplicate clip, asset or tag, scene N+1 generated
only after scene N committed, no scene degraded by an infrastructure error, no run left open, no temp file.
"""

from __future__ import annotations

import signal

import pytest

from tests.faults.harness import (
    FAST_RECOVERY,
    Cluster,
    Nemesis,
    check,
    kill_during,
    random_kill,
    restart_postgres,
    restart_redis,
    write_workload,
)

PROJECTS, SCENES = 12, 3
RUN_TIMEOUT_S = 300

NEMESES = {
    "random SIGKILLs of workers and pool children": Nemesis(random_kill, every_s=(2.0, 5.0), limit=8),
    "SIGKILL during register_entities": Nemesis(kill_during("vidpipe.register_entities"), (2.0, 4.0), limit=3),
    "SIGKILL during analyze_clip": Nemesis(kill_during("vidpipe.analyze_clip"), (2.0, 4.0), limit=3),
    "Redis restart by SIGTERM": Nemesis(restart_redis(signal.SIGTERM), every_s=(4.0, 8.0), limit=3),
    "Redis restart by SIGKILL": Nemesis(restart_redis(signal.SIGKILL), every_s=(4.0, 8.0), limit=3),
    "PostgreSQL fast restart": Nemesis(restart_postgres, every_s=(4.0, 8.0), limit=3),
}


@pytest.mark.parametrize("name", list(NEMESES))
def test_every_project_completes_unharmed_under_the_nemesis(name: str, tmp_path) -> None:
    nemesis = NEMESES[name]
    with Cluster(tmp_path, overrides=FAST_RECOVERY) as cluster:
        ids = cluster.submit(write_workload(tmp_path / "boards", PROJECTS, SCENES))
        nemesis.run(cluster)
        states = cluster.wait(ids, RUN_TIMEOUT_S)
        nemesis.stop()
        report = check(cluster.settings, ids)
        tails = "" if not report.problems() else cluster.supervisor.log_tails()
    assert nemesis.faults, f"the nemesis never struck: {name}"
    assert report.problems() == [], f"{name}: {states}\nfaults: {nemesis.faults}\n{tails}"
    assert report.completed == PROJECTS
