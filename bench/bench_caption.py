"""Caption rendering time against description length: linear (a length limit plus a bounded fit)."""

from __future__ import annotations

import argparse
import statistics
import time

from vidpipe_tasks.generators.procedural import _caption_bar


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lengths", default="200,2000,20000,200000", help="description lengths, characters")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", default="640x25", help="caption bar WIDTHxHEIGHT (640x360 clips get 640x25)")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    print(f"caption bar {width}x{height}, median of {args.repeats}")
    for n in (int(v) for v in args.lengths.split(",")):
        text = ("the keeper climbs the stair " * (n // 28 + 1))[:n]
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            _caption_bar(text, width, height)
            times.append((time.perf_counter() - start) * 1000)
        print(f"{n:>8} chars: {statistics.median(times):8.1f} ms")


if __name__ == "__main__":
    main()
