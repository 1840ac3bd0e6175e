#!/usr/bin/env bash
# Set up .venv (if needed) with the test extras, then lint, type-check and run every test:
# the main suite in .venv (numpy 2), then the PaddleSeg suite in its own fresh .venv-seg
# (PaddleSeg 2.8.0 needs numpy < 2; skip it with SKIP_PADDLESEG=1).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[dev]"
.venv/bin/python -m ruff check hapi_autoloss tests tests_paddleseg examples scripts
.venv/bin/python -m mypy hapi_autoloss
start=$(date +%s)
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
echo "main suite ran in $(( $(date +%s) - start )) s"
if [ "${SKIP_PADDLESEG:-0}" != "1" ]; then
    bash scripts/test_paddleseg.sh
fi
