"""Reading HF checkpoints without torch: safetensors (own parser) and PyTorch .bin
(zip + a restricted unpickler that only rebuilds tensors, never runs other code).

Tensors come back as NumPy arrays (floating types as float32, integer types as int64,
bool as bool), except the floating-point matrices of safetensors files: those come back as
LazyTensor, read and converted when used (the converter's memory then stays near one matrix).
"""

from __future__ import annotations

import functools
import json
import pickle
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from .errors import ConversionError

_ST_DTYPES: dict[str, tuple[str, int]] = {
    "F64": ("<f8", 8), "F32": ("<f4", 4), "F16": ("<f2", 2), "BF16": ("bf16", 2),
    "I64": ("<i8", 8), "I32": ("<i4", 4), "I16": ("<i2", 2), "I8": ("i1", 1),
    "U8": ("u1", 1), "BOOL": ("?", 1),
}


def _bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    wide = raw.astype(np.uint32)
    wide <<= 16  # in place: one float32-sized copy
    return wide.view(np.float32)


def _normalise(a: np.ndarray) -> np.ndarray:
    """float32 / int64 / bool."""
    if a.dtype.kind == "f":
        return a.astype(np.float32, copy=False)
    if a.dtype.kind in "iu":
        return a.astype(np.int64, copy=False)
    return a


def _itemsize(storage: Any) -> int:
    return 2 if storage == "bf16" else np.dtype(storage).itemsize


def _to_f32(raw: bytes, storage: Any) -> np.ndarray:
    """Little-endian raw values of a floating storage type (a numpy dtype or "bf16") as float32."""
    if storage == "bf16":
        return _bf16_to_f32(np.frombuffer(raw, dtype="<u2"))
    return np.frombuffer(raw, dtype=np.dtype(storage).newbyteorder("<")).astype(np.float32)


class LazyTensor:
    """A floating-point matrix of a checkpoint, read when used: its shape is known from the
    header; its values are read from the file and converted to float32 on every access and never
    kept. A real head's matrices thus stay on disk until the writer or the read-back check needs
    them, one at a time. np.asarray(t) gives the whole matrix, t[a:b] only rows a..b-1, t[ids]
    the rows ids (read CHUNK_ROWS rows at a time)."""

    dtype = np.dtype(np.float32)
    CHUNK_ROWS = 4096

    def __init__(self, shape: tuple[int, int], read_rows: Callable[[int, int], bytes], storage: Any):
        """read_rows(start, stop): the raw bytes of rows start..stop-1, stored as `storage`."""
        self.shape, self.ndim = shape, 2
        self._read_rows, self._storage = read_rows, storage

    def _rows(self, start: int, stop: int) -> np.ndarray:
        return _to_f32(self._read_rows(start, stop), self._storage).reshape(stop - start, self.shape[1])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        a = self._rows(0, self.shape[0])
        return a if dtype is None else a.astype(dtype)

    def __getitem__(self, index: Any) -> np.ndarray:
        if isinstance(index, slice) and index.step in (None, 1):
            start, stop, _ = index.indices(self.shape[0])
            return self._rows(start, max(start, stop))
        if isinstance(index, np.ndarray) and index.ndim == 1 and index.dtype.kind in "iu":
            return self._pick(index)
        return np.asarray(self)[index]

    def _pick(self, rows: np.ndarray) -> np.ndarray:
        """Some rows, read CHUNK_ROWS rows at a time."""
        if len(rows) and (rows.min() < 0 or rows.max() >= self.shape[0]):
            raise IndexError(f"row index outside 0..{self.shape[0] - 1}")
        out = np.empty((len(rows), self.shape[1]), np.float32)
        for start in range(0, self.shape[0], self.CHUNK_ROWS):
            sel = (rows >= start) & (rows < start + self.CHUNK_ROWS)
            if sel.any():
                out[sel] = self._rows(start, min(start + self.CHUNK_ROWS, self.shape[0]))[rows[sel] - start]
        return out


def _file_rows(path: Path, offset: int, row_bytes: int, start: int, stop: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset + start * row_bytes)
        return f.read((stop - start) * row_bytes)


def _header(path: Path) -> tuple[dict[str, Any], int, int]:
    """(header, offset of the data, size of the data) of a safetensors file."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else None
            text = f.read(n) if n is not None and n <= size - 8 else b""
    except OSError as e:
        raise ConversionError(f"{path}: cannot read the weights ({e})") from None
    if n is None:
        raise ConversionError(f"{path}: not a safetensors file (shorter than its 8-byte header size)")
    if n > size - 8:
        raise ConversionError(f"{path}: truncated safetensors file (header of {n} bytes, file of {size})")
    try:
        header = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConversionError(f"{path}: corrupt safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise ConversionError(f"{path}: corrupt safetensors header (not a JSON object)")
    return header, 8 + n, size - 8 - n


def read_safetensors(path: Path) -> dict[str, Any]:
    """Every tensor of the file: matrices of floats as LazyTensor, the rest as arrays."""
    header, base, size_body = _header(path)
    out: dict[str, Any] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if isinstance(info, dict) and str(info.get("dtype", "")).startswith(("F8", "F6", "F4", "E8")):
            raise ConversionError(f"unsupported head: a quantized export (tensor {name} is {info['dtype']} in {path}); "
                                  f"convert the unquantized (bf16/fp16/fp32) head")
        try:
            dtype, size = _ST_DTYPES[info["dtype"]]
            shape = [int(s) for s in info["shape"]]
            begin, end = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise ConversionError(f"{path}: tensor {name!r} has a malformed or unsupported header entry {info!r}") from None
        count = int(np.prod(shape)) if shape else 1
        if min(shape, default=0) < 0 or not 0 <= begin <= end <= size_body or end - begin != count * size:
            raise ConversionError(f"{path}: tensor {name!r} has offsets {begin}..{end} that do not fit its shape {shape} "
                                  f"or the file (truncated?)")
        if dtype in ("bf16", "<f2", "<f4", "<f8"):
            rows = (shape[0], shape[1]) if len(shape) == 2 else (1, count)
            lazy = LazyTensor(rows, functools.partial(_file_rows, path, base + begin, rows[1] * size), dtype)
            out[name] = lazy if len(shape) == 2 and count else np.asarray(lazy).reshape(shape)
        else:
            with open(path, "rb") as f:
                f.seek(base + begin)
                out[name] = _normalise(np.frombuffer(f.read(end - begin), dtype=dtype).reshape(shape))
    return out


_TORCH_DTYPES = {
    "FloatStorage": np.float32, "HalfStorage": np.float16, "DoubleStorage": np.float64,
    "BFloat16Storage": "bf16", "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class _StorageType:
    def __init__(self, name: str):
        self.name = name


@dataclass(frozen=True)
class _Storage:
    """A storage of a torch zip checkpoint, not yet read: the archive member and its type."""
    path: Path
    member: str
    dtype: Any   # a numpy dtype, or "bf16"
    size: int    # elements

    def read(self, first: int = 0, count: Optional[int] = None) -> bytes:
        item = _itemsize(self.dtype)
        count = self.size - first if count is None else count
        with zipfile.ZipFile(self.path) as z, z.open(self.member) as f:
            f.seek(first * item)
            return f.read(count * item)

    def load(self) -> np.ndarray:
        raw = self.read()
        if self.dtype == "bf16":
            return _bf16_to_f32(np.frombuffer(raw, dtype="<u2"))
        return np.frombuffer(raw, dtype=np.dtype(self.dtype).newbyteorder("<"))


def _rebuild_tensor(storage: _Storage, offset: int, shape: tuple, stride: tuple, *_: Any) -> Any:
    """A tensor of the checkpoint: a contiguous floating-point matrix as LazyTensor, else an array."""
    shape, stride = tuple(int(s) for s in shape), tuple(int(s) for s in stride)
    need = offset + sum((s - 1) * st for s, st in zip(shape, stride)) + 1 if all(shape) else offset
    if need > storage.size:
        raise ConversionError("tensor view exceeds its storage (truncated checkpoint?)")
    floating = storage.dtype == "bf16" or np.dtype(storage.dtype).kind == "f"
    if floating and len(shape) == 2 and all(shape) and stride == (shape[1], 1):
        cols = shape[1]
        return LazyTensor(shape, lambda a, b: storage.read(offset + a * cols, (b - a) * cols), storage.dtype)
    data = storage.load()
    if not shape:
        return data[offset : offset + 1].reshape(())
    view = np.lib.stride_tricks.as_strided(data[offset:], shape=shape, strides=[st * data.itemsize for st in stride])
    return np.ascontiguousarray(view)


class _TorchUnpickler(pickle.Unpickler):
    """Rebuilds tensors from torch's zip format; refuses every other global."""

    def __init__(self, file: Any, storage: Callable[[str, Any], _Storage]):
        super().__init__(file)
        self._storage = storage

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch" and name in _TORCH_DTYPES:
            return _StorageType(name)
        if module == "collections" and name == "OrderedDict":
            import collections

            return collections.OrderedDict
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a checkpoint")

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        storage_type, key = pid[1], str(pid[2])
        return self._storage(key, storage_type)


def read_torch_bin(path: Path) -> dict[str, Any]:
    """Every tensor of a torch zip checkpoint: contiguous floating-point matrices as LazyTensor."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise ConversionError(f"{path}: not a PyTorch zip checkpoint ({e}); legacy non-zip .bin files need torch") from None
    with zf:
        names = zf.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if not pkl:
            raise ConversionError(f"{path}: PyTorch checkpoint without data.pkl")
        root = pkl[0][: -len("data.pkl")]

        def storage(key: str, storage_type: Any) -> _Storage:
            name = getattr(storage_type, "name", None)
            if name not in _TORCH_DTYPES:
                raise pickle.UnpicklingError(f"unsupported storage type {storage_type!r}")
            member = f"{root}data/{key}"
            try:
                size = zf.getinfo(member).file_size
            except KeyError:
                raise pickle.UnpicklingError(f"storage {key} missing from the archive") from None
            return _Storage(Path(path), member, _TORCH_DTYPES[name], size // _itemsize(_TORCH_DTYPES[name]))

        try:
            with zf.open(pkl[0]) as f:
                obj = _TorchUnpickler(f, storage).load()
        except ConversionError:
            raise
        except Exception as e:  # any malformed pickle ends here, never in torch code
            raise ConversionError(f"{path}: cannot read the PyTorch checkpoint ({e})") from None
    if not isinstance(obj, dict):
        raise ConversionError(f"{path}: the checkpoint is not a state dict")
    out: dict[str, Any] = {}
    for k, v in obj.items():
        if not isinstance(v, (np.ndarray, LazyTensor)):
            raise ConversionError(f"{path}: entry {k!r} is not a tensor")
        out[str(k)] = v if isinstance(v, LazyTensor) else _normalise(v)
    return out


def read_weights(path: Path) -> dict[str, Any]:
    """All tensors of a head: a directory (single or sharded safetensors/.bin) or one file."""
    path = Path(path)
    if path.is_dir():
        for index_name, reader in (("model.safetensors.index.json", read_safetensors),
                                   ("pytorch_model.bin.index.json", read_torch_bin)):
            index = path / index_name
            if index.exists():
                try:
                    shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
                except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
                    raise ConversionError(f"{index}: malformed shard index (needs a weight_map object)") from None
                out: dict[str, np.ndarray] = {}
                for shard in shards:
                    out.update(reader(path / shard))
                return out
        files = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
        if not files:
            raise ConversionError(f"{path}: no *.safetensors or *.bin weights in the head directory")
        out = {}
        for f in files:
            out.update(read_weights(f))
        return out
    if not path.exists():
        raise ConversionError(f"{path}: no such head file or directory")
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    if path.suffix in (".bin", ".pt", ".pth"):
        return read_torch_bin(path)
    raise ConversionError(f"{path}: unknown weights format (expected .safetensors or .bin)")


_NP_TO_ST = {np.dtype(v): k for k, (v, _) in _ST_DTYPES.items() if k != "BF16"}


def write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    """Writes tensors in the safetensors format (the layout HF tools and SpecForge read)."""
    header, blobs, off = {}, [], 0
    for name, a in tensors.items():
        raw = np.ascontiguousarray(a).tobytes()
        header[name] = {"dtype": _NP_TO_ST[a.dtype], "shape": list(a.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + b"".join(blobs))
