#!/usr/bin/env bash
# Fresh machine -> demo: install, then run the bundled examples on the embedded default.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/vidpipe demo --fresh "$@"
