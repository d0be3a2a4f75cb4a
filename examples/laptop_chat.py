"""Chat in the terminal on a laptop: SmolLM2-135M-Instruct with its EAGLE-3 head, or your own model.

    python examples/laptop_chat.py                              # the embedded default model and head
    python examples/laptop_chat.py --model m.gguf --head h.gguf

On Apple Silicon llama-cpp-python is built with Metal; n_gpu_layers=-1 puts the whole model
on the GPU (ignored by a CPU build). Ctrl-C stops an answer, Ctrl-D quits.
"""

from __future__ import annotations

import argparse

from llama_eagle3 import Llama
from llama_eagle3.chat import run
from llama_eagle3.defaults import default_head, smollm2_path

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--model", default=None)
p.add_argument("--head", default=None)
a = p.parse_args()

llm = Llama(
    model_path=a.model or str(smollm2_path()),
    eagle3_head=a.head or (None if a.model else str(default_head())),
    n_ctx=4096,
    n_gpu_layers=-1,
    verbose=False,
)
run(llm, system="You are a helpful assistant.", max_tokens=512, temperature=0.7)
