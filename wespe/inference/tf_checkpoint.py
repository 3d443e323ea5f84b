"""TensorFlow 1.x checkpoints (tensor bundles) read with NumPy alone: no TensorFlow, no protobuf package.

A checkpoint ``<stem>`` is ``<stem>.index`` and ``<stem>.data-SSSSS-of-NNNNN``:

* ``<stem>.index`` is an SSTable (LevelDB table format): data blocks of prefix-compressed key/value
  entries with restart points, each followed by a 5-byte trailer (compression type, masked crc32c), then
  a metaindex block, an index block and a 48-byte footer (two BlockHandles padded to 40 bytes, then the
  magic number). The empty key holds a ``BundleHeaderProto``; every other key is a variable name whose
  value is a serialized ``BundleEntryProto`` (dtype, shape, shard, offset, size, masked crc32c).
* ``<stem>.data-SSSSS-of-NNNNN`` holds the raw little-endian tensor bytes.

Every block trailer and every tensor checksum is verified; any inconsistency raises
:class:`TFCheckpointError` naming the file (and the variable, where there is one). The DPED generators'
variable names are mapped onto :class:`wespe.models.Generator` in :mod:`wespe.inference.pretrained`.

Public API: :func:`read_tf_checkpoint`, :class:`TFCheckpointError`, :func:`crc32c`, :func:`masked_crc32c`.
"""

from __future__ import annotations

import math
import os
import struct

import numpy as np

from wespe.errors import UserError

_TABLE_MAGIC = 0xDB4775248B80FB57
_FOOTER_SIZE = 48  # 2 BlockHandles (at most 2 x 2 x 10 varint bytes) padded to 40, then the 8-byte magic
_BLOCK_TRAILER_SIZE = 5  # 1-byte compression type + 4-byte masked crc32c
_MASK_DELTA = 0xA282EAD8

# TensorFlow DataType enum -> little-endian NumPy dtype (the numeric types a bundle stores as raw bytes):
# DT_FLOAT, DT_DOUBLE, DT_INT32, DT_UINT8, DT_INT16, DT_INT8, DT_INT64, DT_BOOL, DT_UINT16, DT_HALF, DT_UINT32,
# DT_UINT64.
_TF_DTYPES = {code: np.dtype(numpy) for code, numpy in zip(
    (1, 2, 3, 4, 5, 6, 9, 10, 17, 19, 22, 23),
    ("<f4", "<f8", "<i4", "u1", "<i2", "i1", "<i8", "?", "<u2", "<f2", "<u4", "<u8"))}
_TF_DTYPE_NAMES = {7: "DT_STRING", 8: "DT_COMPLEX64", 14: "DT_BFLOAT16", 18: "DT_COMPLEX128", 20: "DT_RESOURCE",
                   21: "DT_VARIANT"}


class TFCheckpointError(UserError):
    """A TensorFlow checkpoint that is missing, corrupt, truncated or in an unsupported form."""


# --------------------------------------------------------------------------------------------- crc32c

def _make_crc_table() -> np.ndarray:
    table = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        table = np.where(table & 1, (table >> np.uint32(1)) ^ np.uint32(0x82F63B78), table >> np.uint32(1))
    return table.astype(np.uint32)


_CRC_TABLE = _make_crc_table()
_CRC_TABLE_LIST = [int(v) for v in _CRC_TABLE]


def _crc32c_bytewise(data: bytes, crc: int = 0) -> int:
    """Raw (no pre/post inversion) reflected CRC-32C register update, one byte at a time."""
    table = _CRC_TABLE_LIST
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc


def _zeros_operator(basis_images: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Apply the GF(2)-linear map given by the images of the 32 basis vectors to each uint32 in ``x``."""
    out = np.zeros_like(x)
    for bit in range(32):
        out ^= np.where((x >> np.uint32(bit)) & np.uint32(1), basis_images[bit], np.uint32(0))
    return out


def _crc32c_vectorised(buf: np.ndarray) -> int:
    """Raw CRC-32C register (initial value 0, no final xor) of a uint8 array, computed in parallel.

    The (zero-padded at the front, which leaves a zero-initialised CRC unchanged) data is cut into 2**k
    equal chunks whose CRCs run side by side in NumPy, then merged pairwise: for a zero-initialised CRC,
    ``crc(A || B) = Z_len(B)(crc(A)) ^ crc(B)`` where ``Z_n`` (feeding n zero bytes) is linear over GF(2).
    """
    n = buf.size
    num_chunks = 1 << max(0, math.ceil(math.log2(max(1, n // 256))))
    chunk = -(-n // num_chunks)
    padded = np.zeros(num_chunks * chunk, np.uint8)
    padded[padded.size - n:] = buf
    columns = np.ascontiguousarray(padded.reshape(num_chunks, chunk).T)  # (chunk, num_chunks)
    crc = np.zeros(num_chunks, np.uint32)
    table, eight, low = _CRC_TABLE, np.uint32(8), np.uint32(0xFF)
    for column in columns:
        crc = table[(crc ^ column) & low] ^ (crc >> eight)
    # Images of the 32 basis vectors under "feed `chunk` zero bytes".
    images = np.uint32(1) << np.arange(32, dtype=np.uint32)
    for _ in range(chunk):
        images = table[images & low] ^ (images >> eight)
    while crc.size > 1:
        crc = _zeros_operator(images, crc[0::2]) ^ crc[1::2]
        images = _zeros_operator(images, images)  # feeding 2x as many zero bytes
    return int(crc[0])


def crc32c(data: bytes | bytearray | memoryview | np.ndarray) -> int:
    """CRC-32C (Castagnoli, reflected polynomial 0x82F63B78, init and final xor 0xFFFFFFFF)."""
    buf = np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8) if not isinstance(data, np.ndarray) \
        else np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    if buf.size < 4096:
        return _crc32c_bytewise(buf.tobytes(), 0xFFFFFFFF) ^ 0xFFFFFFFF
    # For a reflected CRC, an initial register of 0xFFFFFFFF equals complementing the first 4 data bytes.
    buf = buf.copy()
    buf[:4] ^= 0xFF
    return _crc32c_vectorised(buf) ^ 0xFFFFFFFF


def masked_crc32c(data: bytes | bytearray | memoryview | np.ndarray) -> int:
    """The masked CRC-32C LevelDB and TensorFlow store: rotate right by 15 bits, add 0xa282ead8."""
    crc = crc32c(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF


# ------------------------------------------------------------------------------ protobuf wire format

def _varint(buf: bytes, pos: int, what: str) -> tuple[int, int]:
    result, shift = 0, 0
    while True:
        if pos >= len(buf):
            raise TFCheckpointError(f"{what}: truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise TFCheckpointError(f"{what}: varint longer than 10 bytes")


def _signed64(v: int) -> int:
    v &= 0xFFFFFFFFFFFFFFFF
    return v - (1 << 64) if v >= 1 << 63 else v


def _proto_fields(buf: bytes, what: str) -> list[tuple[int, int, int | bytes]]:
    """Decode a protobuf message into ``(field number, wire type, value)`` triples (varints as unsigned ints,
    fixed32/fixed64 as unsigned ints, length-delimited as bytes)."""
    fields, pos = [], 0
    while pos < len(buf):
        tag, pos = _varint(buf, pos, what)
        number, wire = tag >> 3, tag & 7
        if number == 0:
            raise TFCheckpointError(f"{what}: invalid protobuf field number 0")
        if wire == 0:
            value, pos = _varint(buf, pos, what)
        elif wire == 1:
            if pos + 8 > len(buf):
                raise TFCheckpointError(f"{what}: truncated fixed64 field")
            value, pos = struct.unpack_from("<Q", buf, pos)[0], pos + 8
        elif wire == 2:
            length, pos = _varint(buf, pos, what)
            if pos + length > len(buf):
                raise TFCheckpointError(f"{what}: truncated length-delimited field {number}")
            value, pos = bytes(buf[pos:pos + length]), pos + length
        elif wire == 5:
            if pos + 4 > len(buf):
                raise TFCheckpointError(f"{what}: truncated fixed32 field")
            value, pos = struct.unpack_from("<I", buf, pos)[0], pos + 4
        else:
            raise TFCheckpointError(f"{what}: unsupported protobuf wire type {wire} (field {number})")
        fields.append((number, wire, value))
    return fields


def _parse_shape(buf: bytes, what: str) -> tuple[int, ...]:
    dims = []
    for number, wire, value in _proto_fields(buf, what):
        if number == 2 and wire == 2:  # Dim
            size = 0
            for dnum, dwire, dval in _proto_fields(value, what):
                if dnum == 1 and dwire == 0:
                    size = _signed64(dval)
            dims.append(size)
        elif number == 3 and wire == 0 and value:
            raise TFCheckpointError(f"{what}: tensor of unknown rank")
    if any(d < 0 for d in dims):
        raise TFCheckpointError(f"{what}: tensor shape {tuple(dims)} has unknown dimensions")
    return tuple(dims)


def _parse_entry(buf: bytes, what: str) -> dict:
    entry = {"dtype": 0, "shape": (), "shard_id": 0, "offset": 0, "size": 0, "crc32c": None, "sliced": False}
    for number, wire, value in _proto_fields(buf, what):
        if number == 1 and wire == 0:
            entry["dtype"] = value
        elif number == 2 and wire == 2:
            entry["shape"] = _parse_shape(value, what)
        elif number == 3 and wire == 0:
            entry["shard_id"] = _signed64(value)
        elif number == 4 and wire == 0:
            entry["offset"] = _signed64(value)
        elif number == 5 and wire == 0:
            entry["size"] = _signed64(value)
        elif number == 6 and wire == 5:
            entry["crc32c"] = value
        elif number == 7:
            entry["sliced"] = True
    return entry


def _parse_header(buf: bytes, what: str) -> dict:
    header = {"num_shards": 1, "endianness": 0}
    for number, wire, value in _proto_fields(buf, what):
        if number == 1 and wire == 0:
            header["num_shards"] = _signed64(value)
        elif number == 2 and wire == 0:
            header["endianness"] = value
    return header


# ------------------------------------------------------------------------------------ SSTable reader

def _block_handle(buf: bytes, pos: int, what: str) -> tuple[int, int, int]:
    offset, pos = _varint(buf, pos, what)
    size, pos = _varint(buf, pos, what)
    return offset, size, pos


def _read_block(data: bytes, offset: int, size: int, path: str, what: str) -> bytes:
    end = offset + size + _BLOCK_TRAILER_SIZE
    if end > len(data):
        raise TFCheckpointError(f"{path}: {what} block [{offset}, {end}) lies beyond the end of the file "
                                    f"({len(data)} bytes); truncated or corrupt index")
    contents = data[offset:offset + size]
    compression = data[offset + size]
    stored = struct.unpack_from("<I", data, offset + size + 1)[0]
    actual = masked_crc32c(data[offset:offset + size + 1])  # the checksum covers contents + type byte
    if stored != actual:
        raise TFCheckpointError(f"{path}: checksum mismatch in the {what} block at offset {offset} "
                                    f"(stored {stored:#010x}, computed {actual:#010x}); the file is corrupt")
    if compression == 1:
        raise TFCheckpointError(f"{path}: {what} block is snappy-compressed, which is not supported; re-save "
                                    "the checkpoint without compression (TensorFlow writes bundles uncompressed)")
    if compression != 0:
        raise TFCheckpointError(f"{path}: {what} block has unknown compression type {compression}")
    return contents


def _block_entries(block: bytes, path: str, what: str) -> list[tuple[bytes, bytes]]:
    if len(block) < 4:
        raise TFCheckpointError(f"{path}: {what} block is too short ({len(block)} bytes)")
    num_restarts = struct.unpack_from("<I", block, len(block) - 4)[0]
    limit = len(block) - 4 - 4 * num_restarts
    if num_restarts < 1 or limit < 0:
        raise TFCheckpointError(f"{path}: {what} block has a bad restart count ({num_restarts})")
    entries, pos, key = [], 0, b""
    while pos < limit:
        shared, pos = _varint(block, pos, f"{path}: {what} block")
        unshared, pos = _varint(block, pos, f"{path}: {what} block")
        value_len, pos = _varint(block, pos, f"{path}: {what} block")
        if shared > len(key) or pos + unshared + value_len > limit:
            raise TFCheckpointError(f"{path}: corrupt entry at offset {pos} of the {what} block")
        key = key[:shared] + block[pos:pos + unshared]
        pos += unshared
        entries.append((key, block[pos:pos + value_len]))
        pos += value_len
    return entries


def _read_sstable(path: str) -> list[tuple[bytes, bytes]]:
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < _FOOTER_SIZE:
        raise TFCheckpointError(f"{path}: {len(data)} bytes is too short for a TensorFlow checkpoint index "
                                    f"(the footer alone is {_FOOTER_SIZE} bytes); truncated file?")
    footer = data[-_FOOTER_SIZE:]
    magic = struct.unpack_from("<Q", footer, _FOOTER_SIZE - 8)[0]
    if magic != _TABLE_MAGIC:
        raise TFCheckpointError(f"{path}: bad table magic number {magic:#018x} (expected {_TABLE_MAGIC:#018x});"
                                    " not a TensorFlow checkpoint .index file, or truncated/corrupt")
    _, _, pos = _block_handle(footer, 0, f"{path}: footer")  # metaindex: unused by tensor bundles
    index_offset, index_size, _ = _block_handle(footer, pos, f"{path}: footer")
    index = _read_block(data, index_offset, index_size, path, "index")
    entries = []
    for _, handle in _block_entries(index, path, "index"):
        offset, size, _ = _block_handle(handle, 0, f"{path}: index block entry")
        entries.extend(_block_entries(_read_block(data, offset, size, path, "data"), path, "data"))
    keys = [k for k, _ in entries]
    if keys != sorted(keys) or len(set(keys)) != len(keys):
        raise TFCheckpointError(f"{path}: keys are not sorted and unique; corrupt index")
    return entries


# ----------------------------------------------------------------------------------- tensor bundles

def read_tf_checkpoint(prefix: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read every tensor of a TensorFlow (V2, tensor-bundle) checkpoint into NumPy arrays.

    ``prefix``: the checkpoint path without extension (e.g. ``models_orig/iphone_orig`` for
    ``iphone_orig.index`` + ``iphone_orig.data-00000-of-00001``); a path ending in ``.index`` is accepted.
    Returns ``{variable name: array}`` (native byte order, the stored dtype). Raises
    :class:`TFCheckpointError` for a missing, truncated or corrupt file, a checksum mismatch, or an
    unsupported tensor (string/bfloat16/complex dtypes, partitioned variables, big-endian bundles).
    """
    prefix = str(prefix)
    if prefix.endswith(".index"):
        prefix = prefix[:-len(".index")]
    index_path = prefix + ".index"
    if not os.path.isfile(index_path):
        raise TFCheckpointError(f"checkpoint index file {index_path} does not exist")
    entries = _read_sstable(index_path)
    if not entries or entries[0][0] != b"":
        raise TFCheckpointError(f"{index_path}: no bundle header (empty key); not a TensorFlow V2 checkpoint")
    header = _parse_header(entries[0][1], f"{index_path}: bundle header")
    if header["endianness"] != 0:
        raise TFCheckpointError(f"{index_path}: big-endian checkpoints are not supported")
    num_shards = header["num_shards"]
    if num_shards < 1:
        raise TFCheckpointError(f"{index_path}: bad shard count {num_shards} in the bundle header")

    shards: dict[int, bytes] = {}

    def shard(shard_id: int, name: str) -> tuple[str, bytes]:
        path = f"{prefix}.data-{shard_id:05d}-of-{num_shards:05d}"
        if shard_id not in shards:
            if not 0 <= shard_id < num_shards:
                raise TFCheckpointError(f"{index_path}: variable {name!r} is in shard {shard_id}, but the "
                                            f"bundle has {num_shards} shard(s)")
            if not os.path.isfile(path):
                raise TFCheckpointError(f"checkpoint data file {path} does not exist (needed with {index_path})")
            with open(path, "rb") as f:
                shards[shard_id] = f.read()
        return path, shards[shard_id]

    tensors = {}
    for key, value in entries[1:]:
        try:
            name = key.decode("utf-8")
        except UnicodeDecodeError as e:
            raise TFCheckpointError(f"{index_path}: variable name {key!r} is not UTF-8; corrupt index") from e
        entry = _parse_entry(value, f"{index_path}: entry for {name!r}")
        if entry["sliced"]:
            raise TFCheckpointError(f"{index_path}: variable {name!r} is partitioned (sliced); not supported")
        dtype = _TF_DTYPES.get(entry["dtype"])
        if dtype is None:
            dname = _TF_DTYPE_NAMES.get(entry["dtype"], f"enum value {entry['dtype']}")
            raise TFCheckpointError(f"{index_path}: variable {name!r} has unsupported dtype {dname}")
        shape, offset, size = entry["shape"], entry["offset"], entry["size"]
        expected = math.prod(shape) * dtype.itemsize
        if size != expected:
            raise TFCheckpointError(f"{index_path}: variable {name!r} of shape {shape} and dtype {dtype.name} "
                                        f"should take {expected} bytes, the index says {size}")
        path, data = shard(entry["shard_id"], name)
        if offset < 0 or offset + size > len(data):
            raise TFCheckpointError(f"{path}: variable {name!r} needs bytes [{offset}, {offset + size}) but the "
                                        f"file has {len(data)} bytes; the data file is truncated")
        raw = data[offset:offset + size]
        if entry["crc32c"] is not None:
            actual = masked_crc32c(raw)
            if actual != entry["crc32c"]:
                raise TFCheckpointError(f"{path}: checksum mismatch for variable {name!r} (stored "
                                            f"{entry['crc32c']:#010x}, computed {actual:#010x}); the file is corrupt")
        tensors[name] = np.frombuffer(raw, dtype=dtype).astype(dtype.newbyteorder("="), copy=True).reshape(shape)
    return tensors
