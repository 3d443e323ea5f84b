"""Reading TensorFlow tensor-bundle checkpoints without TensorFlow, and the official DPED generators.

The synthetic tests write their own small bundles with a minimal SSTable + protobuf writer defined here
(independent of wespe.inference.pretrained), so the reader runs in CI without the official files. The tests on the
official checkpoints and the TensorFlow reference output need ``../shared/dped_pretrained`` next to the
repository and are skipped without it.
"""

from __future__ import annotations

import functools
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from wespe.inference.loading import load_dped_generator, load_generator
from wespe.inference.pretrained import PRETRAINED, dped_variable_map
from wespe.inference.tf_checkpoint import TFCheckpointError, crc32c, masked_crc32c, read_tf_checkpoint

SHARED = Path(__file__).parents[1] / ".." / "shared" / "dped_pretrained"
needs_shared = pytest.mark.skipif(
    not (SHARED / "iphone_orig.index").is_file(),
    reason=f"official DPED checkpoints not found at {SHARED} (they come from github.com/aiff22/DPED, models_orig/)")

NUM_TENSORS, NUM_FLOATS = 40, 401_475


# ------------------------------------------------------------------ a minimal tensor-bundle writer

def _crc_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc_table()


@functools.lru_cache(maxsize=256)  # the writer re-checksums the same tensors for several bundles
def _ref_crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc = _TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _ref_mask(crc: int) -> int:
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def _uvarint(n: int) -> bytes:
    n &= 0xFFFFFFFFFFFFFFFF
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _pb_varint(field: int, value: int) -> bytes:
    return _uvarint(field << 3) + _uvarint(value)


def _pb_bytes(field: int, value: bytes) -> bytes:
    return _uvarint(field << 3 | 2) + _uvarint(len(value)) + value


def _pb_fixed32(field: int, value: int) -> bytes:
    return _uvarint(field << 3 | 5) + struct.pack("<I", value)


_DTYPE_ENUM = {np.dtype(np.float32): 1, np.dtype(np.float64): 2, np.dtype(np.int32): 3, np.dtype(np.int64): 9}


def _entry_proto(array: np.ndarray, offset: int, raw: bytes, dtype_enum: int | None = None) -> bytes:
    shape = b"".join(_pb_bytes(2, _pb_varint(1, d)) for d in array.shape)
    return (_pb_varint(1, dtype_enum if dtype_enum is not None else _DTYPE_ENUM[array.dtype])
            + _pb_bytes(2, shape) + (_pb_varint(4, offset) if offset else b"") + _pb_varint(5, len(raw))
            + _pb_fixed32(6, _ref_mask(_ref_crc32c(raw))))


def _sstable_block(entries: list[tuple[bytes, bytes]], restart_interval: int) -> bytes:
    out, restarts, previous = bytearray(), [], b""
    for i, (key, value) in enumerate(entries):
        shared = 0
        if i % restart_interval == 0:
            restarts.append(len(out))
        else:
            while shared < min(len(key), len(previous)) and key[shared] == previous[shared]:
                shared += 1
        out += _uvarint(shared) + _uvarint(len(key) - shared) + _uvarint(len(value)) + key[shared:] + value
        previous = key
    restarts = restarts or [0]
    return bytes(out) + struct.pack(f"<{len(restarts)}I", *restarts) + struct.pack("<I", len(restarts))


def write_bundle(prefix: Path, tensors: dict[str, np.ndarray], *, entries_per_block: int = 3,
                 restart_interval: int = 2, compression: int = 0, dtype_enums: dict[str, int] | None = None):
    """Write ``tensors`` as a single-shard TensorFlow V2 checkpoint: ``<prefix>.index`` + ``.data-00000-of-00001``."""
    data, entries = bytearray(), [(b"", _pb_varint(1, 1) + _pb_bytes(3, _pb_varint(1, 1)))]  # num_shards, version
    for name in sorted(tensors):
        array = np.asarray(tensors[name], order="C")  # (ascontiguousarray would make scalars 1-d)
        raw = array.astype(array.dtype.newbyteorder("<")).tobytes()
        entries.append((name.encode(), _entry_proto(array, len(data), raw, (dtype_enums or {}).get(name))))
        data += raw
    Path(f"{prefix}.data-00000-of-00001").write_bytes(bytes(data))

    table, index = bytearray(), []

    def add_block(contents: bytes) -> bytes:
        handle = _uvarint(len(table)) + _uvarint(len(contents))
        trailer = bytes([compression])
        table.extend(contents + trailer + struct.pack("<I", _ref_mask(_ref_crc32c(contents + trailer))))
        return handle

    for start in range(0, len(entries), entries_per_block):
        chunk = entries[start:start + entries_per_block]
        index.append((chunk[-1][0], add_block(_sstable_block(chunk, restart_interval))))
    metaindex = add_block(_sstable_block([], 1))
    index_handle = add_block(_sstable_block(index, 1))
    footer = (metaindex + index_handle).ljust(40, b"\0") + struct.pack("<Q", 0xDB4775248B80FB57)
    Path(f"{prefix}.index").write_bytes(bytes(table) + footer)


# --------------------------------------------------------------------------------- synthetic tests

def test_crc32c_known_values_and_vectorised_path():
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720 B.4 test vectors
    assert crc32c(b"\xff" * 32) == 0x62A8AB43
    assert crc32c(b"") == 0
    rng = np.random.default_rng(0)
    for n in (1, 3, 4095, 4096, 4097, 70_001):  # >= 4096 bytes takes the chunked NumPy path
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert crc32c(data) == _ref_crc32c(data), n
        assert masked_crc32c(data) == _ref_mask(_ref_crc32c(data)), n


def _small_tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {
        "net/kernel": rng.standard_normal((2, 3, 4)).astype(np.float32),
        "net/bias": np.arange(5, dtype=np.float64) - 2.5,
        "net/step": np.array(-7, dtype=np.int64),
        "net/ids": np.array([[1, -2], [3, 2**31 - 1]], dtype=np.int32),
        "big": rng.standard_normal((70, 50)).astype(np.float32),  # > 4 KiB: vectorised checksum
    }


@pytest.mark.parametrize("entries_per_block,restart_interval", [(100, 16), (2, 1), (3, 2)])
def test_synthetic_bundle_roundtrip(tmp_path, entries_per_block, restart_interval):
    tensors = _small_tensors()
    write_bundle(tmp_path / "ckpt", tensors, entries_per_block=entries_per_block, restart_interval=restart_interval)
    for prefix in (tmp_path / "ckpt", str(tmp_path / "ckpt"), str(tmp_path / "ckpt.index")):
        got = read_tf_checkpoint(prefix)
        assert sorted(got) == sorted(tensors)
        for name, value in tensors.items():
            assert got[name].dtype == value.dtype and got[name].shape == value.shape, name
            np.testing.assert_array_equal(got[name], value)


def _synthetic_corrupt(tmp_path, **kwargs) -> Path:
    prefix = tmp_path / "ckpt"
    write_bundle(prefix, _small_tensors(), **kwargs)
    return prefix


def test_synthetic_tensor_checksum_names_variable(tmp_path):
    prefix = _synthetic_corrupt(tmp_path)
    data = Path(f"{prefix}.data-00000-of-00001")
    raw = bytearray(data.read_bytes())
    # Sorted order: big (14000 B), net/bias (40 B), net/ids, net/kernel, net/step; corrupt net/bias.
    raw[14000 + 3] ^= 0x10
    data.write_bytes(bytes(raw))
    with pytest.raises(TFCheckpointError, match=r"checksum mismatch for variable 'net/bias'"):
        read_tf_checkpoint(prefix)


def test_synthetic_unsupported_dtype_and_compression(tmp_path):
    prefix = _synthetic_corrupt(tmp_path, dtype_enums={"net/step": 7})  # DT_STRING
    with pytest.raises(TFCheckpointError, match=r"'net/step' has unsupported dtype DT_STRING"):
        read_tf_checkpoint(prefix)
    prefix = _synthetic_corrupt(tmp_path, compression=1)
    with pytest.raises(TFCheckpointError, match=r"snappy"):
        read_tf_checkpoint(prefix)


def test_missing_files_and_weights_dir_help(tmp_path):
    with pytest.raises(TFCheckpointError, match=r"nowhere\.index does not exist"):
        read_tf_checkpoint(tmp_path / "nowhere")
    for kwargs in ({}, {"weights_dir": tmp_path / "no_such_dir"}, {"weights_dir": tmp_path}):
        with pytest.raises(TFCheckpointError) as info:
            load_dped_generator("dped_iphone", **kwargs)
        message = str(info.value)
        assert "github.com/aiff22/DPED" in message and "models_orig/" in message and "--weights_dir" in message
    with pytest.raises(TFCheckpointError, match=r"iphone_orig\.index does not exist"):
        load_dped_generator("dped_iphone", tmp_path)
    with pytest.raises(TFCheckpointError, match=r"dped_blackberry"):
        load_dped_generator("dped_blackbery", tmp_path)  # a typo is not silently a path
    prefix = _synthetic_corrupt(tmp_path)
    Path(f"{prefix}.data-00000-of-00001").unlink()
    with pytest.raises(TFCheckpointError, match=r"ckpt\.data-00000-of-00001 does not exist"):
        read_tf_checkpoint(prefix)


# Official names -> (module path, parameter), written out independently of dped_variable_map.
def _official_names() -> dict[str, tuple[str, str]]:
    convs = ["conv_in"] + [f"blocks.{i}.conv{j}" for i in range(4) for j in (1, 2)] + ["conv_mid1", "conv_mid2",
                                                                                        "conv_out"]
    names = {}
    for j, conv in enumerate(convs, start=1):
        names[f"generator/W{j}"] = (conv, "kernel")
        names[f"generator/b{j}"] = (conv, "bias")
    norms = [f"blocks.{i}.norm{j}" for i in range(4) for j in (1, 2)]
    for k, norm in enumerate(norms):
        names["generator/" + ("Variable" if k == 0 else f"Variable_{2 * k}")] = (norm, "shift")
        names[f"generator/Variable_{2 * k + 1}"] = (norm, "scale")
    return names


def _official_shape(name: str) -> tuple[int, ...]:
    if name == "generator/W1":
        return (9, 9, 3, 64)
    if name == "generator/W12":
        return (9, 9, 64, 3)
    if name.startswith("generator/W"):
        return (3, 3, 64, 64)
    return (3,) if name == "generator/b12" else (64,)


def _param(model, module_path: str, attr: str) -> np.ndarray:
    module = model
    for part in module_path.split("."):
        module = module[int(part)] if part.isdigit() else getattr(module, part)
    return np.asarray(getattr(module, attr)[...])


def _check_generator_matches(model, tensors):
    from wespe.models import count_parameters

    assert count_parameters(model) == NUM_FLOATS
    for name, (module_path, attr) in _official_names().items():
        np.testing.assert_array_equal(_param(model, module_path, attr), tensors[name], err_msg=name)


def test_variable_map_matches_official_naming():
    expected = {name: tuple(int(p) if p.isdigit() else p for p in path.split(".")) + (attr,)
                for name, (path, attr) in _official_names().items()}
    assert dped_variable_map() == expected
    assert sum(np.prod(_official_shape(n)) for n in expected) == NUM_FLOATS and len(expected) == NUM_TENSORS


def test_load_synthetic_dped_generator(tmp_path):
    rng = np.random.default_rng(2)
    tensors = {name: rng.standard_normal(_official_shape(name)).astype(np.float32) for name in _official_names()}
    write_bundle(tmp_path / "fake_orig", tensors, entries_per_block=7)
    _check_generator_matches(load_dped_generator(tmp_path / "fake_orig"), tensors)
    _check_generator_matches(load_dped_generator("fake_orig", weights_dir=tmp_path), tensors)
    # wespe.load_generator tells a TensorFlow checkpoint prefix (or its .index file) from its other sources
    for source in (tmp_path / "fake_orig", f"{tmp_path}/fake_orig.index"):
        _check_generator_matches(load_generator(source), tensors)
    _check_generator_matches(load_generator("fake_orig", weights_dir=tmp_path), tensors)

    bad = dict(tensors, **{"generator/W5": tensors["generator/W5"][..., :32]})
    write_bundle(tmp_path / "bad", bad)
    with pytest.raises(TFCheckpointError, match=r"generator/W5 has shape \(3, 3, 64, 32\), expected "
                                                    r"\(3, 3, 64, 64\)"):
        load_dped_generator(tmp_path / "bad")
    write_bundle(tmp_path / "missing", {k: v for k, v in tensors.items() if k != "generator/Variable_7"})
    with pytest.raises(TFCheckpointError, match=r"missing variable\(s\) generator/Variable_7"):
        load_dped_generator(tmp_path / "missing")


# ------------------------------------------------------------------------ official DPED checkpoints

@needs_shared
@pytest.mark.parametrize("name", sorted(PRETRAINED))
def test_official_checkpoints_load(name):
    tensors = read_tf_checkpoint(SHARED / PRETRAINED[name])
    assert len(tensors) == NUM_TENSORS
    assert sum(v.size for v in tensors.values()) == NUM_FLOATS
    assert all(v.dtype == np.float32 for v in tensors.values())
    assert {k: v.shape for k, v in tensors.items()} == {k: _official_shape(k) for k in _official_names()}
    _check_generator_matches(load_dped_generator(name, weights_dir=SHARED), tensors)


@needs_shared
def test_iphone_generator_matches_tensorflow_reference():
    import jax.numpy as jnp
    from flax import nnx
    from PIL import Image

    model = load_dped_generator("dped_iphone", weights_dir=SHARED)
    image = np.asarray(Image.open(SHARED / "reference" / "chelsea_input.png").convert("RGB"))
    assert image.dtype == np.uint8
    reference = np.load(SHARED / "reference" / "chelsea_iphone_orig_output.npy")
    output = nnx.jit(lambda m, x: m(x))(model, jnp.asarray(image, jnp.float32)[None] / 255.0)
    output = np.asarray(output)[0]
    assert output.shape == reference.shape == image.shape
    diff = float(np.abs(output - reference).max())
    print(f"max abs difference to the TensorFlow reference: {diff:.3g}")
    assert diff <= 1e-4


@pytest.fixture
def official_copy(tmp_path):
    if not (SHARED / "iphone_orig.index").is_file():
        pytest.skip(f"official DPED checkpoints not found at {SHARED}")
    for suffix in (".index", ".data-00000-of-00001"):
        shutil.copyfile(SHARED / f"iphone_orig{suffix}", tmp_path / f"iphone_orig{suffix}")
        (tmp_path / f"iphone_orig{suffix}").chmod(0o644)
    return tmp_path / "iphone_orig"


def test_corrupt_data_byte(official_copy):
    data = Path(f"{official_copy}.data-00000-of-00001")
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    data.write_bytes(bytes(raw))
    with pytest.raises(TFCheckpointError, match=r"checksum mismatch for variable 'generator/\w+'") as info:
        read_tf_checkpoint(official_copy)
    assert str(data) in str(info.value)


def test_truncated_data(official_copy):
    data = Path(f"{official_copy}.data-00000-of-00001")
    data.write_bytes(data.read_bytes()[:-1000])
    with pytest.raises(TFCheckpointError, match=r"data file is truncated"):
        read_tf_checkpoint(official_copy)


def test_truncated_or_garbled_index(official_copy):
    index = Path(f"{official_copy}.index")
    original = index.read_bytes()
    index.write_bytes(original[:-10])
    with pytest.raises(TFCheckpointError, match=r"iphone_orig\.index: bad table magic"):
        read_tf_checkpoint(official_copy)
    index.write_bytes(original[:20])
    with pytest.raises(TFCheckpointError, match=r"too short"):
        read_tf_checkpoint(official_copy)
    garbled = bytearray(original)
    garbled[100] ^= 0xFF  # inside the data block
    index.write_bytes(bytes(garbled))
    with pytest.raises(TFCheckpointError, match=r"iphone_orig\.index: checksum mismatch in the data block"):
        read_tf_checkpoint(official_copy)
    index.write_bytes(b"\0" * len(original))
    with pytest.raises(TFCheckpointError, match=r"magic"):
        read_tf_checkpoint(official_copy)


def test_missing_data_file(official_copy):
    Path(f"{official_copy}.data-00000-of-00001").unlink()
    with pytest.raises(TFCheckpointError, match=r"iphone_orig\.data-00000-of-00001 does not exist"):
        read_tf_checkpoint(official_copy)
    with pytest.raises(TFCheckpointError, match=r"iphone_orig\.data-00000-of-00001 does not exist.*aiff22/DPED"):
        load_dped_generator(official_copy)
