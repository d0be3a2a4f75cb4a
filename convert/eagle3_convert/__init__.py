"""EAGLE-3 head conversion to llama.cpp's `eagle3` GGUF, and the reference EAGLE-3 math; DFlash
heads to llama.cpp's `dflash` GGUF likewise (dflash_*.py, reference_dflash.py).

Importable without llama-cpp-python: the converter, the checkpoint readers and the
NumPy reference (`eagle3_convert.reference`) only need NumPy and `gguf`.
"""

from .errors import ConversionError
from .head import Eagle3Config, Eagle3Head

__all__ = ["ConversionError", "Eagle3Config", "Eagle3Head"]
