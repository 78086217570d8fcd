"""Chaos at scale: the fault tier's workload and nemeses at 100 projects x 5 scenes, at the default settings.

Prints, per nemesis: projects completed without a manual resume, projects the sweep recovered, projects lost;
duplicates, order violations and scenes degraded by infrastructure errors (the fault tier's checker); the time
until a killed worker's scene task ran again; and the wall time against a no-fault baseline from the same run.

    .venv/bin/python bench/bench_chaos.py                       # 100 x 5, every nemesis (about an hour on 2 cores)
    .venv/bin/python bench/bench_chaos.py --projects 20 --scenes 3 --nemesis "PostgreSQL fast restart"
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: tests.faults is shared

from tests.faults.harness import (  # noqa: E402
    Cluster,
    Nemesis,
    check,
    kill_during,
    random_kill,
    recovery_seconds,
    restart_postgres,
    restart_redis,
    write_workload,
)

#: The defaults a production install runs with (the fault tier shortens the leases to run fast).
DEFAULTS = {"generation_time_limit": 900, "analysis_time_limit": 900, "visibility_timeout": 3600}


def nemeses(scale: float) -> dict[str, Nemesis | None]:
    """The fault tier's nemeses, striking more often the longer the run."""
    n = max(3, round(3 * scale))
    return {
        "none (baseline)": None,
        "random SIGKILLs": Nemesis(random_kill, every_s=(8.0, 16.0), limit=3 * n),
        "SIGKILL in register_entities": Nemesis(kill_during("vidpipe.register_entities"), (10.0, 20.0), limit=n),
        "SIGKILL in analyze_clip": Nemesis(kill_during("vidpipe.analyze_clip"), (10.0, 20.0), limit=n),
        "Redis restart (SIGTERM)": Nemesis(restart_redis(signal.SIGTERM), every_s=(15.0, 30.0), limit=n),
        "Redis restart (SIGKILL)": Nemesis(restart_redis(signal.SIGKILL), every_s=(15.0, 30.0), limit=n),
        "PostgreSQL fast restart": Nemesis(restart_postgres, every_s=(15.0, 30.0), limit=n),
    }


def run_one(name: str, nemesis: Nemesis | None, projects: int, scenes: int, cv: int, timeout: float) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="vidpipe-chaos-"))
    with Cluster(workdir, overrides=DEFAULTS, cv_processes=cv) as cluster:
        boards = write_workload(workdir / "boards", projects, scenes)
        started = time.monotonic()
        ids = cluster.submit(boards)
        if nemesis is not None:
            nemesis.run(cluster)
        cluster.wait(ids, timeout)
        wall = time.monotonic() - started
        if nemesis is not None:
            nemesis.stop()
        report = check(cluster.settings, ids)
        faults = nemesis.faults if nemesis else []
        recover = recovery_seconds(cluster.settings, faults)
    return {
        "name": name,
        "faults": len(faults),
        "completed": report.completed,
        "total": len(ids),
        "recovered": report.recovered_projects,
        "lost": len(ids) - report.completed,
        "duplicates": len(report.duplicates),
        "order": len(report.order_violations),
        "infra_degraded": len(report.infra_degraded),
        "open_runs": len(report.open_runs),
        "recover_median": statistics.median(recover) if recover else None,
        "recover_max": max(recover) if recover else None,
        "wall": wall,
        "problems": report.problems()[:5],
    }


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--projects", type=int, default=100)
    parser.add_argument("--scenes", type=int, default=5)
    parser.add_argument("--cv-processes", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=3600.0, help="per run, seconds")
    parser.add_argument("--nemesis", action="append", help="run only these (default: all, baseline first)")
    args = parser.parse_args()
    chosen = nemeses(args.projects * args.scenes / 36)
    names = ["none (baseline)", *[n for n in chosen if n in (args.nemesis or chosen) and n != "none (baseline)"]]
    print(f"chaos bench: {args.projects} projects x {args.scenes} scenes, {args.cv_processes} CV process(es)")
    header = (
        f"{'nemesis':<30} {'faults':>6} {'completed':>10} {'recovered':>9} {'lost':>4} {'dup':>4} {'order':>5}"
        f" {'infra-deg':>9} {'open':>4} {'recover s (med/max)':>19} {'wall s':>7} {'x base':>6}"
    )
    print(header, flush=True)
    baseline = None
    worst = 0
    for name in names:
        row = run_one(name, chosen[name], args.projects, args.scenes, args.cv_processes, args.timeout)
        baseline = baseline or row["wall"]
        recover = f"{fmt(row['recover_median'])}/{fmt(row['recover_max'])}"
        print(
            f"{name:<30} {row['faults']:>6} {row['completed']:>4}/{row['total']:<5} {row['recovered']:>9}"
            f" {row['lost']:>4} {row['duplicates']:>4} {row['order']:>5} {row['infra_degraded']:>9}"
            f" {row['open_runs']:>4} {recover:>19} {row['wall']:>7.0f} {row['wall'] / baseline:>6.2f}",
            flush=True,
        )
        for problem in row["problems"]:
            print(f"    {problem}", flush=True)
        worst = max(worst, len(row["problems"]))
    return 1 if worst else 0


if __name__ == "__main__":
    raise SystemExit(main())
