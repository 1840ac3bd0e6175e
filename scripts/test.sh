#!/usr/bin/env bash
# Set up .venv (if needed) with the test extras, then lint, type-check and run every test.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[dev]"
.venv/bin/python -m ruff check hapi_autoloss tests tests_paddleseg examples scripts
.venv/bin/python -m mypy hapi_autoloss
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
