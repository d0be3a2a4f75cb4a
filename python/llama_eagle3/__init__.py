"""EAGLE-3 speculative decoding for llama-cpp-python.

    from llama_eagle3 import Llama
    llm = Llama(model_path="model.gguf", eagle3_head="head.gguf")
"""

from ._native import SUPPORTED_LLAMA_CPP_PYTHON
from .llama import Llama

__version__ = "0.1.0"
__all__ = ["Llama", "SUPPORTED_LLAMA_CPP_PYTHON", "__version__"]
