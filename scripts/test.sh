#!/usr/bin/env bash
# Fresh machine -> tests: install, lint, then unit and integration tiers (gpu tier skips without CUDA).
# The integration tier starts its own Redis and PostgreSQL from the Debian packages installed here.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-services.sh
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
exec .venv/bin/python -m pytest "$@"
