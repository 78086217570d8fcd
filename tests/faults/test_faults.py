"""Faults on a real cluster: each nemesis hits 12 projects x 3 scenes; the database must show no harm done.

Workers run under a supervisor that restarts them as systemd would; nothing calls `vidpipe resume`. The
checker reads the database: every project COMPLETED, no duplicate clip, asset or tag, scene N+1 generated
only after scene N committed, no scene degraded by an infrastructure error, no run left open, no temp file;
and a restart that loses no data is ridden out by retries alone (no chain needed the recovery sweep).
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

pytestmark = pytest.mark.faults

PROJECTS, SCENES = 12, 3
RUN_TIMEOUT_S = 300

#: Restarts that lose nothing (Redis saves its AOF on SIGTERM; PostgreSQL commits survive): retries and the
#: long publish policy must carry every chain through them, so no project may need the recovery sweep.
RIDDEN_OUT = {"Redis restart by SIGTERM", "PostgreSQL fast restart"}

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
    print(f"{name}: {len(nemesis.faults)} faults, {report.recoveries} automatic recoveries of "
          f"{report.recovered_projects} projects, {report.completed}/{PROJECTS} completed")  # fmt: skip
    assert nemesis.faults, f"the nemesis never struck: {name}"
    assert report.problems() == [], f"{name}: {states}\nfaults: {nemesis.faults}\n{tails}"
    assert report.completed == PROJECTS
    if name in RIDDEN_OUT:
        assert report.recoveries == 0, f"{name}: chains were lost and had to be recovered"
