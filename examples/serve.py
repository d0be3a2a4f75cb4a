"""Writes examples/server_config.json for this install (SmolLM2 with its EAGLE-3 head, and the
same model plain) and starts the OpenAI-compatible server on it.

    python examples/serve.py [--port 8000] [--write-only]

Then, e.g.: curl http://localhost:8000/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{"model": "smollm2-eagle3", "messages": [{"role": "user", "content": "Hi!"}]}'
and GET /v1/eagle3/stats for the speculation counters.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from llama_eagle3.defaults import default_head, smollm2_path

p = argparse.ArgumentParser()
p.add_argument("--port", type=int, default=8000)
p.add_argument("--write-only", action="store_true")
a = p.parse_args()

config = {
    "host": "127.0.0.1",
    "port": a.port,
    "interrupt_requests": False,  # queue concurrent requests instead of cutting a running stream short
    "models": [
        {"model": str(smollm2_path()), "model_alias": "smollm2-eagle3", "n_ctx": 4096,
         "eagle3_head": str(default_head()), "eagle3_draft_max": 4, "eagle3_adaptive": True, "verbose": False},
        {"model": str(smollm2_path()), "model_alias": "smollm2", "n_ctx": 4096, "flash_attn": True, "verbose": False},
    ],
}
path = Path(__file__).with_name("server_config.json")
path.write_text(json.dumps(config, indent=2) + "\n")
print(f"wrote {path}")
if not a.write_only:
    from llama_eagle3.server import main

    main(["--config_file", str(path)])
