"""Read a PyTorch ``state_dict`` file (``torch.save``) into NumPy arrays without PyTorch installed.

Both serialisations are handled: the zip archive of torch >= 1.6 (``<root>/data.pkl`` plus one raw file per
storage under ``<root>/data/``) and the legacy stream (magic number, protocol, system info, the pickle, the
list of storage keys, then each storage as an int64 element count followed by its raw bytes), which is what
torchvision's ``vgg19-dcbb9e9d.pth`` uses. Only the globals a plain state dict needs are allowed, so a
file with arbitrary code in its pickle is refused rather than executed.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from typing import Any

import numpy as np

from wespe.errors import UserError

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16, "CharStorage": np.int8,
    "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class _StorageType:
    def __init__(self, name: str):
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


class _LazyStorage:
    """A storage whose bytes are filled in later (the legacy format stores them after the pickle)."""

    def __init__(self, dtype: np.dtype, numel: int):
        self.dtype, self.numel, self.array = dtype, numel, None


def _rebuild_tensor(storage, offset, size, stride, *unused):
    return ("tensor", storage, int(offset), tuple(size), tuple(stride))


def _rebuild_parameter(data, requires_grad=None, backward_hooks=None, *unused):
    return data


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, load_storage):
        super().__init__(file)
        self._load_storage = load_storage

    def find_class(self, module: str, name: str) -> Any:
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(
            f"unsupported object {module}.{name} in a PyTorch file: only plain state dicts of tensors are read")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        storage_type, key, _location, numel = pid[1], str(pid[2]), pid[3], int(pid[4])
        dtype = storage_type.dtype if isinstance(storage_type, _StorageType) else np.dtype(np.float32)
        return self._load_storage(key, dtype, numel)


def _materialise(obj):
    if isinstance(obj, tuple) and len(obj) == 5 and obj[0] == "tensor":
        _, storage, offset, size, stride = obj
        flat = storage.array
        if flat is None:
            raise UserError("PyTorch file: a tensor's storage was never read (truncated file?)")
        itemsize = flat.dtype.itemsize
        if size and offset + sum((s - 1) * st for s, st in zip(size, stride)) >= flat.size:
            raise UserError("PyTorch file: a tensor reaches past its storage (truncated or corrupt file)")
        view = np.lib.stride_tricks.as_strided(flat[offset:], shape=size,
                                               strides=tuple(st * itemsize for st in stride))
        return np.array(view)  # copy: detach from the storage buffer
    if isinstance(obj, dict):
        return collections.OrderedDict((k, _materialise(v)) for k, v in obj.items())
    return obj


def _load_zip(path: str) -> dict:
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl = [n for n in names if n.endswith("data.pkl")]
        if not pkl:
            raise UserError(f"{path}: zip archive without data.pkl, not a PyTorch file")
        root = pkl[0][: -len("data.pkl")]

        def load_storage(key, dtype, numel):
            raw = zf.read(f"{root}data/{key}")
            if len(raw) < numel * dtype.itemsize:
                raise UserError(f"{path}: storage {key} holds {len(raw)} bytes, expected {numel * dtype.itemsize}")
            storage = _LazyStorage(dtype, numel)
            storage.array = np.frombuffer(raw, dtype=dtype, count=numel)
            return storage

        return _materialise(_Unpickler(io.BytesIO(zf.read(pkl[0])), load_storage).load())


def _load_legacy(path: str) -> dict:
    with open(path, "rb") as f:
        if pickle.load(f) != _LEGACY_MAGIC:
            raise UserError(f"{path}: not a PyTorch file (bad magic number)")
        pickle.load(f)  # protocol version
        pickle.load(f)  # system info
        storages: dict[str, _LazyStorage] = {}

        def load_storage(key, dtype, numel):
            if key not in storages:
                storages[key] = _LazyStorage(dtype, numel)
            return storages[key]

        obj = _Unpickler(f, load_storage).load()
        keys = pickle.load(f)
        for key in keys:
            storage = storages[str(key)]
            header = f.read(8)
            if len(header) < 8:
                raise UserError(f"{path}: truncated before storage {key}")
            (numel,) = struct.unpack("<q", header)
            raw = f.read(numel * storage.dtype.itemsize)
            if len(raw) < numel * storage.dtype.itemsize:
                raise UserError(f"{path}: truncated inside storage {key}")
            storage.array = np.frombuffer(raw, dtype=storage.dtype)
        return _materialise(obj)


def load_state_dict(path: str) -> dict[str, np.ndarray]:
    """Tensors of a PyTorch state-dict file as NumPy arrays, keyed as in the file."""
    try:
        result = _load_zip(path) if zipfile.is_zipfile(path) else _load_legacy(path)
    except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, KeyError, struct.error) as e:
        raise UserError(f"{path}: cannot read as a PyTorch state dict ({type(e).__name__}: {e})") from e
    if isinstance(result, dict) and "state_dict" in result and isinstance(result["state_dict"], dict):
        result = result["state_dict"]
    if not isinstance(result, dict):
        raise UserError(f"{path}: holds a {type(result).__name__}, not a state dict")
    return {k: v for k, v in result.items() if isinstance(v, np.ndarray)}
