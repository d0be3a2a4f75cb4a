#!/usr/bin/env bash
# Train an EAGLE-3 head for the exact GGUF you run, then chat with it.
#   bash examples/train_your_own.sh MODEL.gguf [OUT_DIR] [PROMPTS.jsonl]
# Without a prompt file the model writes its own requests. Needs the train extra:
#   pip install 'llama-eagle3[train]'
set -euo pipefail
MODEL=${1:?usage: train_your_own.sh MODEL.gguf [OUT_DIR] [PROMPTS.jsonl]}
OUT=${2:-heads/$(basename "$MODEL" .gguf)}
PROMPTS=${3:+--prompts $3}
llama-eagle3 train --model "$MODEL" --out "$OUT" $PROMPTS --heldout examples/prompts/heldout.jsonl
llama-eagle3 chat --model "$MODEL" --head "$OUT/head.gguf"
