"""Reading HF checkpoints without torch: safetensors (own parser) and PyTorch .bin
(zip + a restricted unpickler that only rebuilds tensors, never runs other code).

Every tensor comes back as a NumPy array: floating types as float32, integer types
as int64, bool as bool.
"""

from __future__ import annotations

import json
import mmap
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .errors import ConversionError

_ST_DTYPES: dict[str, tuple[str, int]] = {
    "F64": ("<f8", 8), "F32": ("<f4", 4), "F16": ("<f2", 2), "BF16": ("bf16", 2),
    "I64": ("<i8", 8), "I32": ("<i4", 4), "I16": ("<i2", 2), "I8": ("i1", 1),
    "U8": ("u1", 1), "BOOL": ("?", 1),
}


def _bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    return (raw.astype(np.uint32) << 16).view(np.float32)


def _normalise(a: np.ndarray) -> np.ndarray:
    """float32 / int64 / bool; a tensor already in that type stays a view of its file mapping."""
    if a.dtype.kind == "f":
        return a.astype(np.float32, copy=False)
    if a.dtype.kind in "iu":
        return a.astype(np.int64, copy=False)
    return a


def _map(path: Path) -> Any:
    """The file's bytes, memory-mapped: tensors are paged in when converted, never read whole."""
    try:
        with open(path, "rb") as f:
            if f.seek(0, 2) == 0:
                return b""
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as e:
        raise ConversionError(f"{path}: cannot read the weights ({e})") from None


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    data = _map(path)
    if len(data) < 8:
        raise ConversionError(f"{path}: not a safetensors file (shorter than its 8-byte header size)")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise ConversionError(f"{path}: truncated safetensors file (header of {n} bytes, file of {len(data)})")
    try:
        header = json.loads(data[8 : 8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConversionError(f"{path}: corrupt safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise ConversionError(f"{path}: corrupt safetensors header (not a JSON object)")
    base, size_body = 8 + n, len(data) - 8 - n
    out: dict[str, np.ndarray] = {}
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
        raw = np.frombuffer(data, dtype="<u2" if dtype == "bf16" else dtype, count=count, offset=base + begin)
        arr = _bf16_to_f32(raw) if dtype == "bf16" else raw
        out[name] = _normalise(arr.reshape(shape))
    return out


_TORCH_DTYPES = {
    "FloatStorage": np.float32, "HalfStorage": np.float16, "DoubleStorage": np.float64,
    "BFloat16Storage": "bf16", "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class _StorageType:
    def __init__(self, name: str):
        self.name = name


def _rebuild_tensor(storage: np.ndarray, offset: int, shape: tuple, stride: tuple, *_: Any) -> np.ndarray:
    shape = tuple(int(s) for s in shape)
    if not shape:
        return storage[offset : offset + 1].reshape(())
    item = storage.itemsize
    need = offset + sum((s - 1) * st for s, st in zip(shape, stride)) + 1 if all(shape) else offset
    if need > storage.size:
        raise ConversionError("tensor view exceeds its storage (truncated checkpoint?)")
    view = np.lib.stride_tricks.as_strided(storage[offset:], shape=shape, strides=[st * item for st in stride])
    return np.ascontiguousarray(view)


class _TorchUnpickler(pickle.Unpickler):
    """Rebuilds tensors from torch's zip format; refuses every other global."""

    def __init__(self, file: Any, load_storage: Callable[[str, Any], np.ndarray]):
        super().__init__(file)
        self._load_storage = load_storage

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch" and name in _TORCH_DTYPES:
            return _StorageType(name)
        if module == "collections" and name == "OrderedDict":
            import collections

            return collections.OrderedDict
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a checkpoint")

    def persistent_load(self, pid: Any) -> np.ndarray:
        if not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        storage_type, key = pid[1], str(pid[2])
        return self._load_storage(key, storage_type)


def read_torch_bin(path: Path) -> dict[str, np.ndarray]:
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

        def load_storage(key: str, storage_type: Any) -> np.ndarray:
            name = getattr(storage_type, "name", None)
            if name not in _TORCH_DTYPES:
                raise pickle.UnpicklingError(f"unsupported storage type {storage_type!r}")
            try:
                raw = zf.read(f"{root}data/{key}")
            except KeyError:
                raise pickle.UnpicklingError(f"storage {key} missing from the archive") from None
            dt = _TORCH_DTYPES[name]
            if dt == "bf16":
                return _bf16_to_f32(np.frombuffer(raw, dtype="<u2"))
            return np.frombuffer(raw, dtype=np.dtype(dt).newbyteorder("<"))

        try:
            with zf.open(pkl[0]) as f:
                obj = _TorchUnpickler(f, load_storage).load()
        except ConversionError:
            raise
        except Exception as e:  # any malformed pickle ends here, never in torch code
            raise ConversionError(f"{path}: cannot read the PyTorch checkpoint ({e})") from None
    if not isinstance(obj, dict):
        raise ConversionError(f"{path}: the checkpoint is not a state dict")
    out = {}
    for k, v in obj.items():
        if not isinstance(v, np.ndarray):
            raise ConversionError(f"{path}: entry {k!r} is not a tensor")
        out[str(k)] = _normalise(v)
    return out


def read_weights(path: Path) -> dict[str, np.ndarray]:
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
