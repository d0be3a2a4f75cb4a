#!/usr/bin/env bash
# The main job (README): set everything up, then a streaming chat on SmolLM2-135M-Instruct,
# plain llama-cpp-python vs EAGLE-3 side by side.
set -euo pipefail
cd "$(dirname "$0")/.."
bash examples/setup.sh
. .venv/bin/activate
python examples/demo.py "$@"
