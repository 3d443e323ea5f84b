"""wespe.torch_state_dict: PyTorch state-dict files read without PyTorch.

The files are written here the way ``torch.save`` writes them, but without torch: fake ``torch`` and
``torch._utils`` modules are put into ``sys.modules`` just long enough for ``pickle`` to emit the GLOBAL
opcodes torch emits (``torch._utils._rebuild_tensor_v2``, ``torch.FloatStorage``, ``collections.OrderedDict``).
``save_state_dict`` is also used by tests/test_vgg.py. When torch is installed, real ``torch.save`` files are
checked too.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import io
import pickle
import pickletools
import struct
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest

from wespe.torch_state_dict import load_state_dict

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
FORMATS = ("zip", "legacy")


# ----------------------------------------------------------------------------- a torch.save without torch

def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks):
    raise AssertionError("stands in for torch._utils._rebuild_tensor_v2 while pickling; never called")


_rebuild_tensor_v2.__module__ = "torch._utils"
_rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"

# The storage classes a pickle names as globals (torch.FloatStorage, ...), by element dtype.
_STORAGE_CLASSES = {np.dtype(dt): type(name, (), {"__module__": "torch"}) for dt, name in (
    (np.float32, "FloatStorage"), (np.float16, "HalfStorage"), (np.float64, "DoubleStorage"),
    (np.int64, "LongStorage"))}


@contextlib.contextmanager
def _fake_torch():
    """Fake ``torch`` / ``torch._utils`` modules in sys.modules, so pickle can name their globals."""
    torch_mod, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    torch_mod._utils = utils
    for cls in _STORAGE_CLASSES.values():
        setattr(torch_mod, cls.__name__, cls)
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "torch", torch_mod)
        mp.setitem(sys.modules, "torch._utils", utils)
        yield


@dataclasses.dataclass(eq=False)
class View:
    """A tensor as torch stores it: ``size``/``stride``/``offset`` (in elements) into a flat ``storage``.

    Views given the same ``storage`` array (by identity) share one storage in the file.
    """
    storage: np.ndarray
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    def expected(self) -> np.ndarray:
        item = self.storage.itemsize
        return np.lib.stride_tricks.as_strided(self.storage[self.offset:], self.size,
                                               tuple(s * item for s in self.stride)).copy()


def as_view(array: np.ndarray) -> View:
    """A contiguous tensor with a storage of its own."""
    a = np.asarray(array, order="C")  # (not ascontiguousarray: that makes 0-d arrays 1-d)
    stride = tuple(s // a.itemsize for s in a.strides)
    return View(a.reshape(-1), 0, a.shape, stride)


class _StorageRef:
    def __init__(self, flat):
        self.flat = flat


class _Tensor:
    def __init__(self, view: View):
        self.view = view

    def __reduce__(self):
        v = self.view
        return _rebuild_tensor_v2, (_StorageRef(v.storage), v.offset, tuple(v.size), tuple(v.stride), False,
                                    collections.OrderedDict())


def _tensors(obj):
    """Replace arrays and Views in a (nested) dict by picklable fake tensors."""
    if isinstance(obj, np.ndarray):
        return _Tensor(as_view(obj))
    if isinstance(obj, View):
        return _Tensor(obj)
    if isinstance(obj, dict):
        out = type(obj)((k, _tensors(v)) for k, v in obj.items())
        if hasattr(obj, "__dict__"):
            out.__dict__.update(obj.__dict__)  # e.g. a state dict's _metadata
        return out
    return obj


class _TorchPickler(pickle.Pickler):
    """Pickles storages as torch does: by persistent id, collecting them (in order) for the file."""

    def __init__(self, file, legacy: bool):
        super().__init__(file, protocol=2)
        self.legacy, self.storages = legacy, {}  # key -> flat array

    def persistent_id(self, obj):
        if not isinstance(obj, _StorageRef):
            return None
        keys = {id(flat): key for key, flat in self.storages.items()}
        key = keys.get(id(obj.flat))
        if key is None:
            key = str(140_000_000 + 64 * len(self.storages)) if self.legacy else str(len(self.storages))
            self.storages[key] = obj.flat
        pid = ("storage", _STORAGE_CLASSES[obj.flat.dtype], key, "cpu", obj.flat.size)
        return pid + (None,) if self.legacy else pid  # the legacy id carries view metadata (None)


def _le_bytes(flat: np.ndarray) -> bytes:
    return np.ascontiguousarray(flat, flat.dtype.newbyteorder("<")).tobytes()


def save_state_dict(path, state: dict, *, legacy: bool, root: str = "archive") -> Path:
    """Write ``state`` (name -> array or View, possibly nested) as ``torch.save`` would, without torch.

    ``legacy=False``: the zip archive (``<root>/data.pkl``, ``<root>/data/<key>``, ``<root>/version``);
    ``legacy=True``: magic, protocol, system info, the pickle, the storage keys, then each storage.
    """
    buf = io.BytesIO()
    with _fake_torch():
        pickler = _TorchPickler(buf, legacy)
        pickler.dump(_tensors(state))
    path = Path(path)
    if not legacy:
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
            zf.writestr(f"{root}/data.pkl", buf.getvalue())
            zf.writestr(f"{root}/byteorder", "little")
            for key, flat in pickler.storages.items():
                zf.writestr(f"{root}/data/{key}", _le_bytes(flat))
            zf.writestr(f"{root}/version", "3\n")
        return path
    with open(path, "wb") as f:
        pickle.dump(LEGACY_MAGIC, f, protocol=2)
        pickle.dump(LEGACY_PROTOCOL, f, protocol=2)
        pickle.dump({"protocol_version": LEGACY_PROTOCOL, "little_endian": True,
                     "type_sizes": {"short": 2, "int": 4, "long": 4}}, f, protocol=2)
        f.write(buf.getvalue())
        pickle.dump(list(pickler.storages), f, protocol=2)
        for flat in pickler.storages.values():
            f.write(struct.pack("<q", flat.size))
            f.write(_le_bytes(flat))
    return path


def write_foreign_global_pth(path, *, legacy: bool, marker: Path) -> Path:
    """A .pth whose pickle calls ``os.system`` (it would create ``marker`` if ever executed)."""
    evil = f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()  # protocol 0: GLOBAL os.system, REDUCE
    if not legacy:
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("archive/data.pkl", evil)
            zf.writestr("archive/version", "3\n")
        return Path(path)
    with open(path, "wb") as f:
        pickle.dump(LEGACY_MAGIC, f, protocol=2)
        pickle.dump(LEGACY_PROTOCOL, f, protocol=2)
        pickle.dump({"protocol_version": LEGACY_PROTOCOL, "little_endian": True}, f, protocol=2)
        f.write(evil)
        pickle.dump([], f, protocol=2)
    return Path(path)


def truncate_copy(src: Path, dst: Path, size: int) -> Path:
    dst.write_bytes(src.read_bytes()[:size])
    return dst


# ----------------------------------------------------------------------------- tests

def _mixed_state():
    """A state dict with every layout torch produces: own/shared storages, offsets, strides, dtypes, 0-d."""
    rng = np.random.default_rng(7)
    shared = rng.standard_normal(30).astype(np.float32)  # one storage, three tensors
    base = rng.standard_normal(12).astype(np.float64)
    state = collections.OrderedDict([
        ("conv.weight", rng.standard_normal((4, 3, 3, 3)).astype(np.float32)),
        ("conv.bias", rng.standard_normal(4).astype(np.float32)),
        ("half.weight", rng.standard_normal((5, 2)).astype(np.float16)),
        ("bn.num_batches_tracked", np.array(123456789012, np.int64)),  # 0-d
        ("shared.a", View(shared, 0, (2, 3), (3, 1))),
        ("shared.b", View(shared, 6, (3, 4), (4, 1))),  # offset > 0 into the same storage
        ("shared.c", View(shared, 18, (4, 3), (1, 4))),  # offset and transposed (column-major) strides
        ("transposed", View(base, 0, (4, 3), (1, 4))),  # base.reshape(3, 4).T
        ("strided", View(base, 1, (2, 3), (6, 2))),  # every other element, two rows
    ])
    state._metadata = collections.OrderedDict([("", {"version": 1}), ("conv", {"version": 1})])
    return state


@pytest.mark.parametrize("fmt", FORMATS)
def test_writer_emits_the_globals_torch_uses(tmp_path, fmt):
    """Sanity check of this file's writer: its pickle names exactly the globals a real torch.save names."""
    state = collections.OrderedDict([("w", np.zeros((2, 2), np.float32))])
    state._metadata = collections.OrderedDict()
    torch_before = sys.modules.get("torch")  # the real one, or None
    path = save_state_dict(tmp_path / "sd.pth", state, legacy=fmt == "legacy")
    assert sys.modules.get("torch") is torch_before  # the fake modules were only there while pickling
    if fmt == "zip":
        data = zipfile.ZipFile(path).read("archive/data.pkl")
    else:
        with open(path, "rb") as f:
            for _ in range(3):  # magic, protocol, system info
                pickle.load(f)
            data = f.read()
    globals_ = {arg for op, arg, _ in pickletools.genops(data) if op.name == "GLOBAL"}
    assert globals_ == {"torch._utils _rebuild_tensor_v2", "torch FloatStorage", "collections OrderedDict"}


def _expected(state):
    return {k: v.expected() if isinstance(v, View) else v for k, v in state.items()}


def _assert_same(got: dict, expected: dict):
    assert list(got) == list(expected)
    for key, want in expected.items():
        assert got[key].dtype == want.dtype, key
        assert got[key].shape == want.shape, key
        np.testing.assert_array_equal(got[key], want, err_msg=key)


@pytest.mark.parametrize("fmt", FORMATS)
def test_layouts_dtypes_and_shared_storages_roundtrip(tmp_path, fmt):
    """Every tensor comes back exactly (dtype, shape, values), honouring storage offsets and strides."""
    state = _mixed_state()
    path = save_state_dict(tmp_path / "sd.pth", state, legacy=fmt == "legacy")
    if fmt == "zip":  # the shared storage really is one file entry
        assert len([n for n in zipfile.ZipFile(path).namelist() if "/data/" in n]) == 6
    got = load_state_dict(str(path))
    _assert_same(got, _expected(state))
    np.testing.assert_array_equal(got["transposed"], state["transposed"].storage.reshape(3, 4).T)
    np.testing.assert_array_equal(got["shared.b"], state["shared.b"].storage[6:18].reshape(3, 4))


@pytest.mark.parametrize("fmt", FORMATS)
def test_returned_arrays_do_not_alias_each_other(tmp_path, fmt):
    """Tensors sharing a storage are returned as independent, writable copies."""
    path = save_state_dict(tmp_path / "sd.pth", _mixed_state(), legacy=fmt == "legacy")
    got = load_state_dict(str(path))
    before = got["shared.b"].copy()
    got["shared.a"][...] = 0
    got["shared.c"][...] = 0
    np.testing.assert_array_equal(got["shared.b"], before)


def test_zip_archive_root_name_is_not_fixed(tmp_path):
    """The zip root folder is whatever torch named it (older torch used the file's stem)."""
    state = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    path = save_state_dict(tmp_path / "vgg19-dcbb9e9d.pth", state, legacy=False, root="vgg19-dcbb9e9d")
    _assert_same(load_state_dict(str(path)), state)


@pytest.mark.parametrize("fmt", FORMATS)
def test_checkpoint_wrapping_a_state_dict_is_unwrapped(tmp_path, fmt):
    """A {'state_dict': ..., 'epoch': ...} checkpoint yields the inner state dict."""
    inner = {"a.weight": np.ones((2, 2), np.float32), "a.bias": np.zeros(2, np.float32)}
    path = save_state_dict(tmp_path / "ckpt.pth", {"epoch": 3, "state_dict": inner}, legacy=fmt == "legacy")
    _assert_same(load_state_dict(str(path)), inner)


@pytest.mark.parametrize("fmt", FORMATS)
def test_tensor_reaching_past_its_storage_is_refused(tmp_path, fmt):
    """A view larger than its storage (corrupt file) is a ValueError, not an out-of-bounds read."""
    state = {"w": View(np.arange(6, dtype=np.float32), 2, (2, 3), (3, 1))}  # needs elements 2..7 of 6
    path = save_state_dict(tmp_path / "bad.pth", state, legacy=fmt == "legacy")
    with pytest.raises(ValueError, match="past its storage"):
        load_state_dict(str(path))


@pytest.fixture(scope="module")
def big_files(tmp_path_factory):
    """Both serialisations of a state dict large enough that cutting it in half lands inside the data."""
    rng = np.random.default_rng(3)
    state = {f"layer{i}.weight": rng.standard_normal((64, 64, 3, 3)).astype(np.float32) for i in range(4)}
    d = tmp_path_factory.mktemp("big")
    return {fmt: save_state_dict(d / f"{fmt}.pth", state, legacy=fmt == "legacy") for fmt in FORMATS}, state


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("cut", ["half", "header"])
def test_truncated_file_is_a_value_error(big_files, tmp_path, fmt, cut):
    """A download cut short (in the data, or in the pickle) is a ValueError, both formats."""
    files, state = big_files
    _assert_same(load_state_dict(str(files[fmt])), state)  # the intact file is fine
    size = files[fmt].stat().st_size // 2 if cut == "half" else 60
    path = truncate_copy(files[fmt], tmp_path / f"cut-{fmt}.pth", size)
    with pytest.raises(ValueError):
        load_state_dict(str(path))


@pytest.mark.parametrize("fmt", FORMATS)
def test_pickle_with_foreign_global_is_refused_not_executed(tmp_path, fmt):
    """A pickle that names os.system is refused (UnpicklingError wrapped as ValueError); nothing runs."""
    marker = tmp_path / "pwned"
    path = write_foreign_global_pth(tmp_path / "evil.pth", legacy=fmt == "legacy", marker=marker)
    with pytest.raises(ValueError, match=r"os\.system") as info:
        load_state_dict(str(path))
    assert isinstance(info.value.__cause__, pickle.UnpicklingError)
    assert not marker.exists()


def test_not_a_torch_file_is_a_value_error(tmp_path):
    """A pickle that is not a torch file (wrong magic number) is a ValueError naming the path."""
    path = tmp_path / "other.pth"
    path.write_bytes(pickle.dumps({"a": 1}, protocol=2))
    with pytest.raises(ValueError, match="other.pth"):
        load_state_dict(str(path))


# ----------------------------------------------------------------------------- real torch.save files

@pytest.mark.parametrize("new_zipfile", [True, False], ids=["zip", "legacy"])
def test_real_torch_save_files(tmp_path, new_zipfile):
    """Files written by torch.save itself (zip and legacy) load to the same arrays as tensor.numpy()."""
    torch = pytest.importorskip("torch", reason="torch is not installed; the torch-free writer covers the format")
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(6, 5, generator=gen)
    conv = torch.nn.Conv2d(3, 4, 3)
    state = collections.OrderedDict([
        ("conv.weight", conv.weight.detach()),
        ("conv.bias", conv.bias.detach()),
        ("half", torch.randn(3, 7, generator=gen).half()),
        ("double", torch.randn(4, generator=gen, dtype=torch.float64)),
        ("transposed", base.t()),  # non-contiguous strides
        ("offset", base[2:]),  # storage offset into the same storage
        ("column", base[:, 1]),  # offset and stride 5
        ("count", torch.tensor(42, dtype=torch.int64)),  # 0-d
    ])
    assert not state["transposed"].is_contiguous() and state["offset"].storage_offset() == 10
    path = tmp_path / "real.pth"
    torch.save(state, path, _use_new_zipfile_serialization=new_zipfile)
    assert zipfile.is_zipfile(path) == new_zipfile
    _assert_same(load_state_dict(str(path)), {k: v.numpy() for k, v in state.items()})

    # nn.Parameters (torch._utils._rebuild_parameter), e.g. dict(model.named_parameters())
    params = dict(conv.named_parameters())
    torch.save(params, path, _use_new_zipfile_serialization=new_zipfile)
    _assert_same(load_state_dict(str(path)), {k: v.detach().numpy() for k, v in params.items()})
