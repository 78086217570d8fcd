"""Orchestration overhead per scene on the embedded broker, with real worker processes: medians of task gaps."""

from __future__ import annotations

import argparse
import statistics

from common import Stack, overhead_run  # same folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scenes", type=int, default=6)
    parser.add_argument("--polls", default="0.1,1.0", help="filesystem broker poll intervals to compare (s)")
    args = parser.parse_args()
    polls = [float(p) for p in args.polls.split(",")]
    results = {poll: overhead_run(Stack(f"poll {poll:g}s", poll_interval=poll), args.scenes) for poll in polls}
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
