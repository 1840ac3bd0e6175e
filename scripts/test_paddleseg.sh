#!/usr/bin/env bash
# The PaddleSeg suite (tests_paddleseg/) in its own fresh virtual environment: PaddleSeg 2.8.0
# needs numpy < 2, while the main suite (scripts/test.sh, .venv) keeps numpy 2.
#   bash scripts/test_paddleseg.sh             # rebuilds .venv-seg, then runs every PaddleSeg test
#   SEG_VENV=/tmp/seg bash scripts/test_paddleseg.sh -k config
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${SEG_VENV:-.venv-seg}"
start=$(date +%s)
rm -rf "$VENV"
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e ".[paddleseg]" pytest
built=$(date +%s)
echo "PaddleSeg environment built in $((built - start)) s"
"$VENV/bin/python" -c "import numpy, paddle, paddleseg; print('numpy', numpy.__version__, 'paddle', paddle.__version__, 'paddleseg', paddleseg.__version__)" 2>/dev/null
"$VENV/bin/python" -m pytest -q -p no:cacheprovider -W "ignore::DeprecationWarning" tests_paddleseg "$@"
echo "PaddleSeg tests ran in $(( $(date +%s) - built )) s"
