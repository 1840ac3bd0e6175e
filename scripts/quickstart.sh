#!/usr/bin/env bash
# Set up .venv (if needed) and run the flagship example: trains, writes logs and a plot.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[examples]"
.venv/bin/python examples/quickstart.py "$@"
