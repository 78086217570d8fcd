"""`python -m vidpipe_tasks.cli`: the same as the `vidpipe` command."""

from vidpipe_tasks.cli import main

raise SystemExit(main())
