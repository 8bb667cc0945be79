"""Read a TensorFlow checkpoint (a "tensor bundle") without TensorFlow.

A bundle `prefix` is an index file `prefix.index` plus raw data shards
`prefix.data-00000-of-0000N`. The index is a LevelDB-format SSTable (TF's copy lives in
tensorflow/core/lib/io: table_builder.cc, format.cc) whose entries map tensor names to
BundleEntryProto records (tensorflow/core/protobuf/tensor_bundle.proto); the entry with
the empty key is the BundleHeaderProto. This module parses both formats by hand and
checks everything that can be checked: every block's masked CRC32C, the footer's exact
encoding, key order, each tensor's byte range, size and masked CRC32C. Anything it
cannot vouch for raises ConversionError naming the file and, where there is one, the
tensor.
"""
from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import crc32c
import numpy as np

from albert_ref.errors import ConversionError
from albert_ref.spm_proto import fields as proto_fields, read_varint, varint

_TABLE_MAGIC = 0xDB4775248B80FB57  # kTableMagicNumber, stored as a little-endian fixed64
_FOOTER_SIZE = 48                  # two BlockHandles padded to 40 bytes, then the magic
_HANDLES_SIZE = 40
_TRAILER_SIZE = 5                  # compression type byte + masked CRC32C
_NO_COMPRESSION = 0
_OBJECT_GRAPH_KEY = b"_CHECKPOINTABLE_OBJECT_GRAPH"
_BUNDLE_VERSION = 1                # kTensorBundleVersion: the consumer version we implement

# DataType (tensorflow/core/framework/types.proto) -> little-endian NumPy dtype, for the
# types whose bundle encoding is the raw C-order array bytes.
_DTYPES = {
    1: np.dtype("<f4"), 2: np.dtype("<f8"), 3: np.dtype("<i4"), 4: np.dtype("u1"),
    5: np.dtype("<i2"), 6: np.dtype("i1"), 8: np.dtype("<c8"), 9: np.dtype("<i8"),
    10: np.dtype("?"), 17: np.dtype("<u2"), 18: np.dtype("<c16"), 19: np.dtype("<f2"),
    22: np.dtype("<u4"), 23: np.dtype("<u8"),
}
_UNSUPPORTED = {
    7: "DT_STRING (variable-length strings)",
    11: "DT_QINT8", 12: "DT_QUINT8", 13: "DT_QINT32",
    14: "DT_BFLOAT16 (NumPy has no bfloat16; convert the checkpoint to float32 first)",
    15: "DT_QINT16", 16: "DT_QUINT16", 20: "DT_RESOURCE", 21: "DT_VARIANT",
}


def read_bundle(prefix: str | os.PathLike, keep=None, digests: dict | None = None) -> dict[str, np.ndarray]:
    """The tensors of the checkpoint `prefix` (the path without `.index`), by name: all of
    them, or those whose name `keep(name)` accepts (the others, e.g. optimizer slots, are
    neither copied nor CRC-checked). Each data shard is read once, front to back; given
    `digests`, that pass also records each shard's file name -> SHA-256 there.

    Arrays are C-contiguous, writable, and keep the stored dtype.
    """
    prefix = os.fspath(prefix)
    index_path = Path(prefix + ".index")
    num_shards, entries = _read_index(index_path)
    shard_paths = [Path(f"{prefix}.data-{i:05d}-of-{num_shards:05d}") for i in range(num_shards)]
    for path in shard_paths:
        if not path.is_file():
            raise ConversionError(f"{path}: data shard {path.name} of checkpoint {index_path} is missing")
    wanted = [e for e in entries if keep is None or keep(e.name)]
    tensors: dict[str, np.ndarray] = {}
    for shard, path in enumerate(shard_paths):
        in_shard = sorted((e for e in wanted if e.shard == shard), key=lambda e: e.offset)
        if in_shard or digests is not None:
            tensors.update(_read_shard(path, in_shard, digests))
    return {e.name: tensors[e.name] for e in wanted}


# -- data shards -----------------------------------------------------------------------


_BLOCK = 1 << 24


def _read_shard(path: Path, entries: list[_Entry], digests: dict | None) -> dict[str, np.ndarray]:
    """`entries` (sorted by offset) of one data shard, CRC-checked, in one sequential pass
    over the file, which also feeds its SHA-256 into digests[path.name] when asked."""
    out = {}
    sha = hashlib.sha256() if digests is not None else None
    try:
        with open(path, "rb") as f:
            file_size = os.fstat(f.fileno()).st_size
            for e in entries:
                if e.offset + e.size > file_size:
                    raise ConversionError(f"{path}: tensor {e.name!r}: bytes [{e.offset}, {e.offset + e.size}) lie "
                                          f"beyond the end of the file ({file_size} bytes): the shard is truncated")
            bufs = [bytearray(e.size) for e in entries]
            pos, first = 0, 0  # entries before `first` are complete
            while block := f.read(_BLOCK):
                if sha is not None:
                    sha.update(block)
                end = pos + len(block)
                for i in range(first, len(entries)):
                    e = entries[i]
                    if e.offset >= end:
                        break
                    lo, hi = max(e.offset, pos), min(e.offset + e.size, end)
                    if lo < hi:
                        bufs[i][lo - e.offset:hi - e.offset] = block[lo - pos:hi - pos]
                while first < len(entries) and entries[first].offset + entries[first].size <= end:
                    first += 1
                pos = end
                if sha is None and first == len(entries):
                    break
            # The file ended before the last tensor's bytes: it shrank since fstat. (Not `first < len(entries)`: an empty shard yields no block, so
            # `first` never passes its zero-size tensors: test_an_empty_shard_of_empty_tensors.)
            if pos < max((e.offset + e.size for e in entries), default=0):
                raise ConversionError(f"{path}: short read: the file ended at byte {pos} ({file_size} when "
                                      f"opened): the shard is truncated")
    except OSError as exc:
        raise ConversionError(f"{path}: cannot read data shard: {exc}") from None
    for e, buf in zip(entries, bufs):
        actual = _masked_crc(buf)
        if actual != e.crc:
            raise ConversionError(f"{path}: tensor {e.name!r}: CRC32C mismatch (stored {e.crc:#010x}, computed "
                                  f"{actual:#010x}): the data file is corrupt")
        out[e.name] = np.frombuffer(buf, dtype=e.dtype).reshape(e.shape)
    if sha is not None:
        digests[path.name] = sha.hexdigest()
    return out


def _masked_crc(data) -> int:
    """CRC32C masked as LevelDB/TF store it, so that a CRC of data holding CRCs stays robust."""
    crc = crc32c.crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# -- the index: bundle entries -----------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    shard: int
    offset: int
    size: int
    crc: int


def _read_index(path: Path) -> tuple[int, list[_Entry]]:
    """The header's shard count and every tensor entry, validated against each other."""
    records = _read_table(path)
    if not records or records[0][0] != b"":
        raise ConversionError(f"{path}: the bundle header entry (empty key) is missing")
    num_shards = _parse_header(path, records[0][1])
    raw = [(key, _parse_entry(path, key, value)) for key, value in records[1:]]
    # Partitioned variables keep their slices under extra binary keys (sorted first, they
    # start with a zero byte); name the variable, not the slice key.
    for key, fields in raw:
        if fields["slices"]:
            raise ConversionError(f"{path}: tensor {_show(key)} is a partitioned (sliced) variable; "
                                  f"partitioned variables are not supported")
    # TF2 object-based checkpoints add a serialized object graph (a string tensor) that
    # describes Python objects, not weights.
    return num_shards, [_make_entry(path, key, fields, num_shards) for key, fields in raw
                        if key != _OBJECT_GRAPH_KEY]


def _parse_header(path: Path, value: bytes) -> int:
    num_shards, endianness, version = 0, 0, b""
    for field, wire, v in _proto_fields(path, "bundle header", value):
        if field == 1 and wire == 0:
            num_shards = _signed(path, v, 32)
        elif field == 2 and wire == 0:
            endianness = v
        elif field == 3 and wire == 2:
            version = v
    if endianness == 1:
        raise ConversionError(f"{path}: the checkpoint was written big-endian; only little-endian is supported")
    if endianness != 0:
        raise ConversionError(f"{path}: unknown endianness {endianness} in the bundle header")
    producer, min_consumer, bad_consumers = 0, 0, []
    for field, wire, v in _proto_fields(path, "bundle version", version):
        if field == 1 and wire == 0:
            producer = _signed(path, v, 32)
        elif field == 2 and wire == 0:
            min_consumer = _signed(path, v, 32)
        elif field == 3 and wire == 0:
            bad_consumers.append(_signed(path, v, 32))
        elif field == 3 and wire == 2:  # packed repeated int32
            pos = 0
            while pos < len(v):
                n, pos = _varint(path, "bundle version", v, pos)
                bad_consumers.append(_signed(path, n, 32))
    # The same rules as TF's CheckVersions(version, kTensorBundleVersion, kTensorBundleMinProducer=0).
    if producer < 0 or min_consumer > _BUNDLE_VERSION or _BUNDLE_VERSION in bad_consumers:
        raise ConversionError(f"{path}: unsupported tensor bundle version (producer {producer}, min_consumer "
                              f"{min_consumer}, bad_consumers {bad_consumers}); this reader implements version "
                              f"{_BUNDLE_VERSION}")
    if num_shards < 1:
        raise ConversionError(f"{path}: the bundle header gives {num_shards} data shards")
    return num_shards


def _parse_entry(path: Path, key: bytes, value: bytes) -> dict:
    what = f"entry of tensor {_show(key)}"
    fields = {"dtype": 0, "shape": b"", "shard": 0, "offset": 0, "size": 0, "crc": None, "slices": False}
    names = {1: "dtype", 3: "shard", 4: "offset", 5: "size"}
    for field, wire, v in _proto_fields(path, what, value):
        if field in names and wire == 0:
            fields[names[field]] = _signed(path, v, 32 if field == 3 else 64)
        elif field == 2 and wire == 2:
            fields["shape"] = v
        elif field == 6 and wire == 5:
            fields["crc"] = v
        elif field == 7 and wire == 2:
            fields["slices"] = True
        elif field <= 7:
            raise ConversionError(f"{path}: malformed {what}: field {field} has wire type {wire}")
    return fields


def _make_entry(path: Path, key: bytes, f: dict, num_shards: int) -> _Entry:
    try:
        name = key.decode("utf-8")
    except UnicodeDecodeError:
        raise ConversionError(f"{path}: tensor name {key!r} is not valid UTF-8") from None
    where = f"{path}: tensor {name!r}"
    dtype = _DTYPES.get(f["dtype"])
    if dtype is None:
        kind = _UNSUPPORTED.get(f["dtype"], f"DataType {f['dtype']}")
        raise ConversionError(f"{where}: dtype {kind} is not supported")
    shape = _parse_shape(path, where, f["shape"])
    if not 0 <= f["shard"] < num_shards:
        raise ConversionError(f"{where}: shard id {f['shard']} is outside the bundle's {num_shards} shards")
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if f["size"] != expected:
        raise ConversionError(f"{where}: stored size {f['size']} bytes != {expected} bytes for shape "
                              f"{list(shape)} of {dtype.name}")
    if f["offset"] < 0:
        raise ConversionError(f"{where}: negative data offset {f['offset']}")
    if f["crc"] is None:
        raise ConversionError(f"{where}: the entry has no CRC32C")
    return _Entry(name, dtype, shape, f["shard"], f["offset"], f["size"], f["crc"])


def _parse_shape(path: Path, where: str, shape: bytes) -> tuple[int, ...]:
    dims = []
    for field, wire, v in _proto_fields(path, "tensor shape", shape):
        if field == 3 and wire == 0 and v:
            raise ConversionError(f"{where}: the shape has unknown rank")
        if field == 2 and wire == 2:
            size = 0
            for dfield, dwire, dv in _proto_fields(path, "tensor shape", v):
                if dfield == 1 and dwire == 0:
                    size = _signed(path, dv, 64)
            if size < 0:
                raise ConversionError(f"{where}: the shape has an unknown or negative dimension ({size})")
            dims.append(size)
    return tuple(dims)


# -- protobuf wire format ----------------------------------------------------------------


def _proto_fields(path: Path, what: str, buf: bytes):
    """(field number, wire type, value) of a serialized message (spm_proto.fields)."""
    return proto_fields(buf, _malformed(path, what))


def _varint(path: Path, what: str, buf: bytes, pos: int) -> tuple[int, int]:
    return read_varint(buf, pos, _malformed(path, what))


def _malformed(path: Path, what: str):
    def fail(reason: str):
        raise ConversionError(f"{path}: malformed {what}: {reason}")
    return fail


def _signed(path: Path, value: int, bits: int) -> int:
    """A varint as protobuf's intN: negative numbers arrive as 64-bit two's complement."""
    if value >= 1 << 63:
        value -= 1 << 64
    if not -(1 << (bits - 1)) <= value < 1 << (bits - 1):
        raise ConversionError(f"{path}: malformed bundle entry: integer {value} does not fit in int{bits}")
    return value


def _show(key: bytes) -> str:
    try:
        return repr(key.decode("utf-8"))
    except UnicodeDecodeError:
        return repr(key)


# -- the index: SSTable ------------------------------------------------------------------


def _read_table(path: Path) -> list[tuple[bytes, bytes]]:
    """Every (key, value) of the SSTable at `path`, in order, all blocks CRC-checked."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConversionError(f"{path}: cannot read checkpoint index: {exc}") from None
    if len(data) < _FOOTER_SIZE:
        raise ConversionError(f"{path}: {len(data)} bytes is too short for an SSTable footer: "
                              f"the index is truncated or not a TF checkpoint index")
    footer = data[-_FOOTER_SIZE:]
    if int.from_bytes(footer[_HANDLES_SIZE:], "little") != _TABLE_MAGIC:
        raise ConversionError(f"{path}: bad magic number: the index is truncated or not a TF checkpoint index")
    meta, pos = _block_handle(path, "footer", footer, 0)
    index, pos = _block_handle(path, "footer", footer, pos)
    # TF writes the two handles as canonical varints followed by zero padding; insisting on
    # exactly that leaves no footer byte whose corruption could go unnoticed.
    if footer[:_HANDLES_SIZE] != (_encode_handle(meta) + _encode_handle(index)).ljust(_HANDLES_SIZE, b"\0"):
        raise ConversionError(f"{path}: malformed SSTable footer (non-canonical handles or non-zero padding)")
    end = len(data) - _FOOTER_SIZE
    _read_block(path, "metaindex block", data, meta, end)
    handles = [meta, index]
    records: list[tuple[bytes, bytes]] = []
    for _, value in _block_records(path, "index block", _read_block(path, "index block", data, index, end)):
        handle, used = _block_handle(path, "index block", value, 0)
        if used != len(value):
            raise ConversionError(f"{path}: malformed index block entry")
        handles.append(handle)
        what = f"data block at offset {handle[0]}"
        records.extend(_block_records(path, what, _read_block(path, what, data, handle, end)))
    _check_tiling(path, handles, end)
    for (prev, _), (key, _) in zip(records, records[1:]):
        if key <= prev:
            raise ConversionError(f"{path}: keys out of order: {_show(key)} follows {_show(prev)}")
    return records


def _block_handle(path: Path, what: str, buf: bytes, pos: int) -> tuple[tuple[int, int], int]:
    offset, pos = _varint(path, what, buf, pos)
    size, pos = _varint(path, what, buf, pos)
    return (offset, size), pos


def _encode_handle(handle: tuple[int, int]) -> bytes:
    return b"".join(map(varint, handle))


def _read_block(path: Path, what: str, data: bytes, handle: tuple[int, int], end: int) -> bytes:
    """A block's contents after checking its trailer (compression type, masked CRC32C)."""
    offset, size = handle
    if offset + size + _TRAILER_SIZE > end:
        raise ConversionError(f"{path}: {what} (offset {offset}, {size} bytes) runs past the end of the table")
    stored = struct.unpack_from("<I", data, offset + size + 1)[0]
    if _masked_crc(memoryview(data)[offset:offset + size + 1]) != stored:
        raise ConversionError(f"{path}: block checksum mismatch in {what}: the index file is corrupt")
    compression = data[offset + size]
    if compression != _NO_COMPRESSION:
        raise ConversionError(f"{path}: {what} is compressed (type {compression}); "
                              f"only uncompressed tables, as TF writes them, are supported")
    return data[offset:offset + size]


def _block_records(path: Path, what: str, block: bytes) -> list[tuple[bytes, bytes]]:
    """Decode a block's prefix-compressed entries; the trailing restart array (kept for
    binary search) is not needed to read every entry in order."""
    if len(block) < 4:
        raise ConversionError(f"{path}: malformed {what}: too short")
    num_restarts = struct.unpack_from("<I", block, len(block) - 4)[0]
    limit = len(block) - 4 - 4 * num_restarts
    if num_restarts < 1 or limit < 0:
        raise ConversionError(f"{path}: malformed {what}: bad restart count {num_restarts}")
    records, key, pos = [], b"", 0
    while pos < limit:
        shared, pos = _varint(path, what, block, pos)
        unshared, pos = _varint(path, what, block, pos)
        value_size, pos = _varint(path, what, block, pos)
        if shared > len(key) or pos + unshared + value_size > limit:
            raise ConversionError(f"{path}: malformed {what}: bad entry at byte {pos}")
        key = key[:shared] + block[pos:pos + unshared]
        pos += unshared
        records.append((key, block[pos:pos + value_size]))
        pos += value_size
    return records


def _check_tiling(path: Path, handles: list[tuple[int, int]], end: int) -> None:
    """TF's table builder writes data blocks, metaindex and index back to back; bytes that no
    block covers (or blocks that overlap) mean the file is not what TF wrote."""
    expected = 0
    for offset, size in sorted(handles):
        if offset != expected:
            raise ConversionError(f"{path}: malformed SSTable: a block starts at byte {offset}, expected {expected}")
        expected = offset + size + _TRAILER_SIZE
    if expected != end:
        raise ConversionError(f"{path}: malformed SSTable: blocks end at byte {expected}, the footer starts at {end}")
