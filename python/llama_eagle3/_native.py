"""Loads the C++ core after checking that llama-cpp-python is the version it was built for."""

from __future__ import annotations

import importlib

SUPPORTED_LLAMA_CPP_PYTHON = "0.3.36"

try:
    import llama_cpp
except ImportError as e:  # pragma: no cover - a dependency of this package
    raise ImportError("llama-eagle3 needs llama-cpp-python: pip install llama-cpp-python==0.3.36") from e

if getattr(llama_cpp, "__version__", None) != SUPPORTED_LLAMA_CPP_PYTHON:
    raise ImportError(
        f"llama-eagle3 was built for llama-cpp-python {SUPPORTED_LLAMA_CPP_PYTHON} but "
        f"{getattr(llama_cpp, '__version__', 'an unknown version')} is installed: its llama.cpp has other "
        f"internal APIs. Install the supported version (pip install llama-cpp-python=={SUPPORTED_LLAMA_CPP_PYTHON}) "
        f"and reinstall llama-eagle3."
    )

try:
    core = importlib.import_module("llama_eagle3._core")
except ImportError as e:
    raise ImportError(
        f"the llama-eagle3 C++ core failed to load ({e}). It links the libllama of the installed "
        f"llama-cpp-python; reinstall llama-eagle3 after (re)installing llama-cpp-python."
    ) from e

__all__ = ["core", "llama_cpp"]
