#!/usr/bin/env bash
# The one-shot GPU run (docs/performance.md, "On a GPU"): what a session that is lent the device
# runs, stage by stage, from the repository root of a machine with CUDA, torch and pip but no
# network. Everything it installs comes from .gpu/ (ignored by git, carried by the device tool):
#   .gpu/llama-cpp-cuda.tar.xz          llama-cpp-python 0.3.36 built with CUDA for sm_90 elsewhere:
#                                       llama_cpp/ (one copy of each library), include/, and
#                                       bin/llama-speculative-simple (upstream's C++ EAGLE-3), or
#   .gpu/sdist-trim.tar.xz              its sdist, trimmed, built here when the bundle does not load
#   .gpu/gguf-*.whl .gpu/diskcache-*.whl pure-Python dependencies the machine lacks
#   .gpu/smollm2.part-*                 SmolLM2-135M-Instruct Q4_1 in parts (collected across calls)
# State persists in /tmp/le3 while the machine stays warm, so later calls skip finished set-up.
#
#   bash tools/gpu_run.sh setup synthetic diagnose tests     # call 1
#   bash tools/gpu_run.sh collect                            # calls that only carry model parts
#   bash tools/gpu_run.sh setup smollm2 train                # the last call (train: a session of its own)
# Stages: setup, diagnose (tools/gpu_diagnose.py), tests (tests/test_gpu.py), synthetic (simulated
# bench, llama-8b shape, Q4_K_M, every method and upstream), collect (keep carried model parts),
# smollm2 (shipped head: greedy and temperature 0.7 benches), train (a SmolLM2 head on 8x the
# shipped head's data: CUDA answers and captures, torch trains on CUDA; head, recipe and report
# come back). Dry run on a CPU machine: SYNTHETIC=tiny NGL=0 bash tools/gpu_run.sh synthetic, and
# TRAIN_PROMPTS=4 TRAIN_TOKENS=8 TRAIN_SEQ=4 TRAIN_EPOCHS=0.5 HELDOUT=<2 prompts> NGL=0 ... train
set -uo pipefail
ROOT=$PWD
G=$ROOT/.gpu
W=${GPU_WORK:-/tmp/le3}
SITE=$W/site
OUT=${OUT:-$W/out}
SYNTHETIC=${SYNTHETIC:-llama-8b}
NGL=${NGL:--1}
PY=${PYTHON:-python3}
mkdir -p "$W" "$SITE" "$OUT" "$W/parts"
export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HOME=$W
log() { echo "[$(date +%T)] $*"; }
[ -f "$W/env" ] && . "$W/env"  # library paths found by an earlier call's set-up

upstream_bin() {  # a wrapper that finds the build's libraries
  local bin=""
  for b in "$SITE/bin/llama-speculative-simple" "$W/lcpp-build/bin/llama-speculative-simple"; do
    [ -x "$b" ] && bin=$b && break
  done
  [ -n "$bin" ] || return 1
  printf '#!/bin/sh\nLD_LIBRARY_PATH=%s/llama_cpp/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} exec %s "$@"\n' \
    "$SITE" "$bin" > "$W/llama-speculative-simple"
  chmod +x "$W/llama-speculative-simple"
  echo "$W/llama-speculative-simple"
}

setup() {
  if "$PY" -c "import llama_eagle3" 2>/dev/null; then log "set up already"; return 0; fi
  log "setup: $($PY --version), $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null)"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$G"/gguf-*.whl "$G"/diskcache-*.whl
  local gpu_ok=0
  if [ -f "$G/llama-cpp-cuda.tar.xz" ]; then
    tar xJf "$G/llama-cpp-cuda.tar.xz" -C "$SITE"
    find_cuda_libraries
    "$PY" -c "import llama_cpp, sys; sys.exit(0 if llama_cpp.llama_supports_gpu_offload() else 1)" && gpu_ok=1
    [ $gpu_ok = 1 ] && log "prebuilt CUDA build loads" || log "prebuilt CUDA build does not load: building"
  fi
  if [ $gpu_ok = 0 ]; then
    rm -rf "$SITE"/llama_cpp "$SITE"/llama_cpp_python-*
    tar xJf "$G/sdist-trim.tar.xz" -C "$W"
    local t0=$SECONDS
    CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAVA_BUILD=OFF \
      -DLLAMA_BUILD_EXAMPLES=ON -DLLAMA_BUILD_TOOLS=OFF" \
      "$PY" -m pip install -q --no-build-isolation --no-deps --no-compile --target "$SITE" \
      -C build-dir="$W/lcpp-build" "$W/llama_cpp_python-0.3.36" || { log "llama-cpp-python build failed"; return 1; }
    log "built llama-cpp-python with CUDA in $((SECONDS - t0)) s"
  fi
  "$PY" -m pip install -q --no-build-isolation --no-deps --no-compile --target "$SITE" "$ROOT" \
    || { log "llama-eagle3 build failed"; return 1; }
  "$PY" -c "import llama_cpp, llama_eagle3; print('llama_cpp', llama_cpp.__version__, 'gpu offload',
    llama_cpp.llama_supports_gpu_offload())"
}

find_cuda_libraries() {  # the CUDA runtime and cuBLAS the prebuilt libraries were linked against
  local lib=$SITE/llama_cpp/lib/libggml-cuda.so d
  ldd "$lib" | grep "not found" || return 0
  for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
      $("$PY" -c "import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], 'cu13', 'lib'))" 2>/dev/null); do
    [ -d "$d" ] || continue
    export LD_LIBRARY_PATH=$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    ldd "$lib" | grep -q "not found" || break
  done
  echo "export LD_LIBRARY_PATH=$LD_LIBRARY_PATH" > "$W/env"
  log "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"; ldd "$lib" | grep -E "cudart|cublas|libcuda|not found"
}

diagnose() {
  local sm=()
  [ -f "$W/smollm2.gguf" ] && sm=(--smollm2 "$W/smollm2.gguf")
  "$PY" "$ROOT/tools/gpu_diagnose.py" --out "$OUT/diagnose.json" "${sm[@]}"
}

tests() {
  (cd "$ROOT" && timeout 300 "$PY" -m pytest -q -p no:cacheprovider tests/test_gpu.py -m "not slow" 2>&1 \
    | tee "$OUT/test_gpu.log" | tail -15)
}

synthetic() {
  local up=() bin
  bin=$(upstream_bin) && up=(--upstream "$bin" --upstream-n-max 1,2,3,4)
  "$PY" -m llama_eagle3.cli bench --synthetic "$SYNTHETIC" --synthetic-quant Q4_K_M \
    --simulate-acceptance 0.5,0.7,0.8,0.9,0.95 --prompts "$ROOT/examples/prompts/heldout.jsonl" --max-prompts 4 \
    --max-tokens 128 --draft-max 6 --threads 4 --n-gpu-layers "$NGL" "${up[@]}" \
    --json "$OUT/sim-$SYNTHETIC.json"
}

collect() {
  for p in "$G"/smollm2.part-*; do [ -f "$p" ] && cp "$p" "$W/parts/" && log "kept $(basename "$p")"; done
  ls -la "$W/parts"
}

smollm2() {
  collect
  cat "$W"/parts/smollm2.part-* > "$W/smollm2.gguf"
  log "smollm2.gguf: $(stat -c %s "$W/smollm2.gguf") bytes, sha256 $(sha256sum "$W/smollm2.gguf" | cut -c1-16)"
  local m=$W/smollm2.gguf h=$ROOT/heads/smollm2-135m-instruct/head.gguf p=$ROOT/examples/prompts/heldout.jsonl
  "$PY" -m llama_eagle3.cli bench --model "$m" --head "$h" --prompts "$p" --max-prompts 16 --max-tokens 200 \
    --methods plain,eagle3,auto --n-gpu-layers "$NGL" --threads 4 --json "$OUT/smollm2-greedy.json"
  "$PY" -m llama_eagle3.cli bench --model "$m" --head "$h" --prompts "$p" --max-prompts 16 --max-tokens 200 \
    --methods plain,eagle3,auto --n-gpu-layers "$NGL" --threads 4 --temperature 0.7 --json "$OUT/smollm2-t07.json"
  "$PY" -m llama_eagle3.cli bench --model "$m" --head "$h" --prompts "$p" --max-prompts 8 --max-tokens 128 \
    --simulate-acceptance 0.5,0.8,0.95 --n-gpu-layers "$NGL" --threads 4 --json "$OUT/sim-smollm2.json"
}

BUDGET=${BUDGET:-540}  # seconds: a stage that starts later is skipped (the device tool stops a call at 600)
train() {  # issue 18 part 3: the SmolLM2 head on >= 8x the shipped head's answered tokens (358k)
  [ -f "$W/smollm2.gguf" ] || { collect; cat "$W"/parts/smollm2.part-* > "$W/smollm2.gguf"; }
  local t=$W/train-smollm2
  "$PY" -m llama_eagle3.cli train --model "$W/smollm2.gguf" --out "$t" --n-prompts "${TRAIN_PROMPTS:-16000}" \
    --max-new-tokens "${TRAIN_TOKENS:-192}" --n-seq "${TRAIN_SEQ:-256}" --n-gpu-layers "$NGL" --threads 8 \
    --epochs "${TRAIN_EPOCHS:-4}" --batch-tokens 16384 --heldout "${HELDOUT:-$ROOT/examples/prompts/heldout.jsonl}"
  for f in head.gguf config.json report.json report.png data_config.json train_config.json; do
    [ -f "$t/$f" ] && cp "$t/$f" "$OUT/train-$f"
  done
}

for stage in "$@"; do
  if [ $SECONDS -gt "$BUDGET" ]; then log "== $stage skipped: $SECONDS s of the $BUDGET s budget spent"; continue; fi
  log "== $stage"
  t0=$SECONDS
  "$stage" || log "$stage failed"
  log "== $stage: $((SECONDS - t0)) s"
done
