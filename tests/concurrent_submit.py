"""A submitter process for the concurrency tests: loads everything, says it is ready, submits on a signal.

Run as ``python -m tests.concurrent_submit READY GO STORYBOARD...`` with the settings in VIDPIPE_* variables.
Imports and validation happen before READY is written, so every process reaches the database at once.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    ready, go, *boards = argv
    from vidpipe_tasks.celery_app import create_app
    from vidpipe_tasks.inputs import load_inputs
    from vidpipe_tasks.settings import load_settings
    from vidpipe_tasks.workflow import submit_inputs

    settings = load_settings()
    app = create_app(settings)
    inputs = load_inputs(boards)
    Path(ready).write_text("ready")
    deadline = time.monotonic() + 60
    while not Path(go).exists():
        if time.monotonic() > deadline:
            print("no go signal", file=sys.stderr)
            return 3
        time.sleep(0.005)
    ids = submit_inputs(app, settings, inputs)
    print(" ".join(str(i) for i in ids))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
