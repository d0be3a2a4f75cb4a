"""A streaming completion with EAGLE-3, then what speculation did.

    python examples/stream_completion.py ["prompt"]
"""

from __future__ import annotations

import sys

from llama_eagle3 import Llama
from llama_eagle3.defaults import default_head, smollm2_path

llm = Llama(model_path=str(smollm2_path()), eagle3_head=str(default_head()), n_ctx=2048, verbose=False)
prompt = sys.argv[1] if len(sys.argv) > 1 else "The three most useful Python built-in functions are"
for chunk in llm.create_completion(prompt, max_tokens=120, temperature=0.0, stream=True):
    print(chunk["choices"][0]["text"], end="", flush=True)
s = llm.speculative_stats()
print(f"\n\n{s['rounds']} verify rounds, {s['plain_steps']} plain steps, mean accepted length "
      f"{s['mean_accepted_length']:.2f}; the draft policy's measurements: {s['policy']}")
