#!/usr/bin/env bash
# Convert a published EAGLE-3 head and run it. Downloads (a few GB) are yours to make, e.g. with
# `huggingface-cli download`; every head goes with the target it was trained for, and the target
# GGUF may be any quantization of that model.
#
#   head (Hugging Face)                          layout      target GGUF of
#   yuhuili/EAGLE3-LLaMA3.1-Instruct-8B          EAGLE       meta-llama/Llama-3.1-8B-Instruct
#   RedHatAI/Llama-3.1-8B-Instruct-speculator.eagle3  speculators  meta-llama/Llama-3.1-8B-Instruct
#   Tengyunw/qwen3_8b_eagle3                     SpecForge   Qwen/Qwen3-8B
#
#   bash examples/convert_published_head.sh HEAD_DIR TARGET.gguf
set -euo pipefail
HEAD_DIR=${1:?usage: convert_published_head.sh HEAD_DIR TARGET.gguf}
TARGET=${2:?usage: convert_published_head.sh HEAD_DIR TARGET.gguf}
OUT=${OUT:-$(basename "$HEAD_DIR").gguf}
# the converter detects the layout and the layer-id convention and checks the head against the target
convert-eagle3-gguf "$HEAD_DIR" --target "$TARGET" --outfile "$OUT" --outtype f16
python - "$TARGET" "$OUT" <<'PY'
import sys
from llama_eagle3 import Llama
llm = Llama(model_path=sys.argv[1], eagle3_head=sys.argv[2], n_ctx=4096, n_gpu_layers=-1, verbose=False)
out = llm.create_chat_completion([{"role": "user", "content": "Explain speculative decoding in two sentences."}],
                                 max_tokens=128, temperature=0.0)
print(out["choices"][0]["message"]["content"])
print(llm.speculative_stats())
PY
