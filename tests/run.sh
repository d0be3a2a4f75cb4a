#!/usr/bin/env bash
# The test command (README): sets everything up, then runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash examples/setup.sh test train
. .venv/bin/activate
python -m pytest -q tests "$@"
