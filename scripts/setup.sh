#!/usr/bin/env bash
# Create .venv (Python 3.11) and install vidpipe with its pinned dependencies. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# torch==2.14.1 / torchvision==0.29.1 come from the local mirror; the pins are in requirements.txt.
.venv/bin/python -m pip install --quiet -r requirements.txt
.venv/bin/python -m pip install --quiet --no-deps -e .
echo "vidpipe installed in .venv ($(.venv/bin/python --version))"
