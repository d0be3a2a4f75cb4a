"""A GGUF file's metadata and tensor directory, read without touching tensor data: the
load-time check of a head (check_head_gguf) runs on every llama_eagle3.Llama construction.
gguf-py's GGUFReader builds a numpy view per array element; the target vocabulary a head
GGUF carries (49k tokens and merges for SmolLM2) takes it about 5 s, this reader about 0.1 s.

Layout (GGUF v2/v3, little-endian): "GGUF", u32 version, u64 n_tensors, u64 n_kv; n_kv
(key string, u32 type, value); n_tensors (name string, u32 n_dims, u64 ne[n_dims], u32 type,
u64 offset); tensor data from the next multiple of general.alignment (default 32), each
tensor at its offset. A string is u64 length + UTF-8 bytes; an array is u32 element type,
u64 count, elements.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConversionError

_STRING, _ARRAY = 8, 9
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_ELEMENTS = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "?", 10: "<u8", 11: "<i8",
             12: "<f8"}
_MAX_DIMS = 4  # GGML_MAX_DIMS


@dataclass(frozen=True)
class TensorInfo:
    name: str
    ne: tuple[int, ...]  # ggml order: ne[0] is the contiguous dimension
    type: int            # a gguf.GGMLQuantizationType value
    offset: int          # absolute byte offset of the data in the file


@dataclass
class GgufHeader:
    path: Path
    meta: dict[str, Any]             # key -> int | float | bool | str | list
    tensors: dict[str, TensorInfo]   # by name
    size: int                        # file size in bytes

    def read(self, t: TensorInfo, dtype: np.dtype) -> np.ndarray:
        """The data of a tensor of a plain element type, flat."""
        dtype = np.dtype(dtype)
        count = int(np.prod(t.ne))
        if t.offset + count * dtype.itemsize > self.size:
            raise ConversionError(f"{self.path}: tensor {t.name} runs past the end of the file (truncated?)")
        with open(self.path, "rb") as f:
            f.seek(t.offset)
            return np.frombuffer(f.read(count * dtype.itemsize), dtype=dtype)


class _Cursor:
    def __init__(self, buf: mmap.mmap):
        self.buf, self.pos = buf, 0

    def take(self, fmt: str) -> Any:
        (v,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += struct.calcsize(fmt)
        return v

    def _span(self, n_bytes: int) -> int:
        end = self.pos + n_bytes
        if n_bytes < 0 or end > len(self.buf):
            raise ValueError("a length runs past the end of the file")
        return end

    def string(self) -> str:
        end = self._span(self.take("<Q"))
        s = self.buf[self.pos : end].decode("utf-8", errors="replace")
        self.pos = end
        return s

    def value(self, vtype: int) -> Any:
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            etype, n = self.take("<I"), self.take("<Q")
            if etype == _STRING:
                self._span(8 * n)  # every element has at least its length
                return [self.string() for _ in range(n)]
            if etype not in _ELEMENTS:
                raise ValueError(f"arrays of value type {etype} are not supported")
            dt = np.dtype(_ELEMENTS[etype])
            end = self._span(n * dt.itemsize)
            out = np.frombuffer(self.buf, dtype=dt, count=n, offset=self.pos).tolist()
            self.pos = end
            return out
        if vtype not in _SCALARS:
            raise ValueError(f"unknown value type {vtype}")
        return self.take(_SCALARS[vtype])


def read_gguf_header(path: Path) -> GgufHeader:
    """Raises ConversionError when the file is missing, truncated or not a GGUF."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path}: no such GGUF file")
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _parse(path, buf)
    except ConversionError:
        raise
    except (ValueError, struct.error, OverflowError, MemoryError) as e:  # truncated or damaged
        raise ConversionError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from None


def _parse(path: Path, buf: mmap.mmap) -> GgufHeader:
    c = _Cursor(buf)
    if buf[:4] != b"GGUF":
        raise ValueError("no GGUF magic")
    c.pos = 4
    version = c.take("<I")
    if version not in (2, 3):
        raise ValueError(f"GGUF version {version} (2 or 3 expected)")
    n_tensors, n_kv = c.take("<Q"), c.take("<Q")
    if 8 * (n_tensors + n_kv) > len(buf):
        raise ValueError(f"{n_tensors} tensors and {n_kv} keys cannot fit in {len(buf)} bytes")
    meta: dict[str, Any] = {}
    for _ in range(n_kv):
        key = c.string()
        meta[key] = c.value(c.take("<I"))
    infos = []
    for _ in range(n_tensors):
        name = c.string()
        n_dims = c.take("<I")
        if not 1 <= n_dims <= _MAX_DIMS:
            raise ValueError(f"tensor {name} has {n_dims} dimensions")
        ne = tuple(c.take("<Q") for _ in range(n_dims))
        infos.append((name, ne, c.take("<I"), c.take("<Q")))
    align = meta.get("general.alignment", 32)
    if not isinstance(align, int) or align <= 0:
        raise ValueError(f"general.alignment is {align!r}")
    data = -(-c.pos // align) * align
    tensors = {name: TensorInfo(name, ne, ttype, data + off) for name, ne, ttype, off in infos}
    return GgufHeader(path=path, meta=meta, tensors=tensors, size=len(buf))
