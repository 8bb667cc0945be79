"""The TF checkpoint reader against TF-written fixtures (tests/fixtures/tf, made by
make_tf_fixtures.py) and against corrupted or hand-built bundles. No TensorFlow needed."""
from __future__ import annotations

import hashlib
import json
import shutil
import struct
from pathlib import Path

import crc32c
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from albert_ref.config import AlbertConfig
from albert_ref.errors import ConversionError
from albert_ref.spm_proto import varint
from albert_ref.weights import names
from albert_ref.weights.tf_bundle import _read_index, read_bundle
from model_util import flip_byte

FIXTURES = Path(__file__).parent / "fixtures" / "tf"
CASES = ["tiny", "groups", "no_projection", "sharded", "hub_module"]


def prefix_of(case_dir: Path) -> Path:
    hub = case_dir / "variables" / "variables"
    return hub if index_of(hub).exists() else case_dir / "model.ckpt"


def config_of(case_dir: Path) -> AlbertConfig:
    path = case_dir / "assets" / "albert_config.json"
    return AlbertConfig.from_json_file(path if path.exists() else case_dir / "albert_config.json", "original")


@pytest.fixture
def tiny(tmp_path) -> Path:
    """A private copy of the tiny checkpoint, safe to corrupt; returns its prefix."""
    for f in (FIXTURES / "tiny").glob("model.ckpt.*"):
        shutil.copy(f, tmp_path / f.name)
    return tmp_path / "model.ckpt"


def data_shard(prefix: Path, shard: int = 0, of: int = 1) -> Path:
    return Path(f"{prefix}.data-{shard:05d}-of-{of:05d}")


def index_of(prefix: Path) -> Path:
    return Path(f"{prefix}.index")


def entry_of(prefix: Path, name: str):
    """Where the index says `name` lies, to aim a corruption at one tensor."""
    _, entries = _read_index(index_of(prefix))
    return next(e for e in entries if e.name == name)


# -- TF-written fixtures ---------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_reads_every_tensor_as_tf_does(case):
    expected = json.loads((FIXTURES / case / "tensors.json").read_text())
    tensors = read_bundle(prefix_of(FIXTURES / case))
    assert sorted(tensors) == sorted(expected)
    for name, array in tensors.items():
        want = expected[name]
        assert (array.dtype.name, list(array.shape)) == (want["dtype"], want["shape"]), name
        assert array.flags.c_contiguous
        assert hashlib.sha256(array.tobytes()).hexdigest() == want["sha256"], name


@pytest.mark.parametrize("case", CASES)
def test_fixture_names_match_names_module(case):
    """The names TF's variable scopes produced are the ones weights/names.py promises."""
    config = config_of(FIXTURES / case)
    shapes = {k: v["shape"] for k, v in json.loads((FIXTURES / case / "tensors.json").read_text()).items()}
    expected = dict(names.encoder_shapes(config))
    for head in names.head_shapes(config).values():
        if any(k in shapes for k in head):
            expected.update(head)
    shapes.pop("global_step", None)
    assert shapes == {k: list(v) for k, v in expected.items()}


def test_sharded_fixture_really_has_two_shards():
    prefix = prefix_of(FIXTURES / "sharded")
    assert all(data_shard(prefix, i, 2).stat().st_size > 0 for i in range(2))


def test_one_pass_reads_the_kept_tensors_and_hashes_each_shard():
    """read_bundle(keep=..., digests=...): the accepted tensors as a full read gives them,
    and each data shard's SHA-256 from the same pass (the converter's provenance)."""
    from albert_ref.weights.model_file import file_sha256
    prefix = prefix_of(FIXTURES / "sharded")
    everything = read_bundle(prefix)
    digests = {}
    kept = read_bundle(prefix, keep=lambda name: name != "global_step", digests=digests)
    assert set(kept) == set(everything) - {"global_step"}
    for name, array in kept.items():
        assert array.dtype == everything[name].dtype and array.tobytes() == everything[name].tobytes(), name
    shards = [data_shard(prefix, i, 2) for i in range(2)]
    assert digests == {p.name: file_sha256(p) for p in shards}


def test_a_dropped_tensor_is_not_read(tiny):
    """A flipped byte inside a tensor that keep() rejects (training state) is no error: its
    bytes are neither copied nor CRC-checked; the same flip in a kept tensor is one."""
    index = {e.name: e for e in _read_index(index_of(tiny))[1]}
    target = index["global_step"]
    flip_byte(data_shard(tiny), target.offset, 0x01)
    assert "global_step" not in read_bundle(tiny, keep=lambda name: name != "global_step")
    with pytest.raises(ConversionError, match="global_step.*CRC32C mismatch"):
        read_bundle(tiny)


def test_global_step_is_int64():
    assert read_bundle(prefix_of(FIXTURES / "tiny"))["global_step"].dtype == np.int64


# -- corruption ------------------------------------------------------------------------


def test_missing_index(tmp_path):
    with pytest.raises(ConversionError, match="cannot read checkpoint index"):
        read_bundle(tmp_path / "nothing")


@pytest.mark.parametrize("keep", [0, 30, -1, -20])
def test_truncated_index(tiny, keep):
    index = index_of(tiny)
    index.write_bytes(index.read_bytes()[:keep])
    with pytest.raises(ConversionError, match=r"model\.ckpt\.index: .*(truncated|bad magic)"):
        read_bundle(tiny)


def test_bad_magic(tiny):
    flip_byte(index_of(tiny), index_of(tiny).stat().st_size - 1, 0x01)
    with pytest.raises(ConversionError, match="bad magic number"):
        read_bundle(tiny)


def test_bit_flip_in_index_data_block(tiny):
    flip_byte(index_of(tiny), 12, 0x01)  # the first data block starts at byte 0
    with pytest.raises(ConversionError, match=r"index: block checksum mismatch in data block at offset 0"):
        read_bundle(tiny)


def test_bit_flip_in_data_names_the_tensor(tiny):
    name = "bert/embeddings/word_embeddings"
    target = entry_of(tiny, name)
    flip_byte(data_shard(tiny), target.offset + target.size // 2, 0x40)
    with pytest.raises(ConversionError, match=rf"data-00000-of-00001: tensor '{name}': CRC32C mismatch"):
        read_bundle(tiny)


def test_truncated_data(tiny):
    shard = data_shard(tiny)
    shard.write_bytes(shard.read_bytes()[:-1])
    with pytest.raises(ConversionError, match=r"data-00000-of-00001: tensor '.+': .*truncated"):
        read_bundle(tiny)


def test_a_shard_that_shrinks_while_read_is_named_truncated(tiny, monkeypatch):
    """The shard is cut after its size was checked (another process rewriting it): the read
    ends early, and says so rather than handing on zero-filled tensors."""
    from albert_ref.weights import tf_bundle
    shard = data_shard(tiny)
    full = shard.stat().st_size
    real_fstat = tf_bundle.os.fstat

    def fstat_then_cut(fd):
        st = real_fstat(fd)
        shard.write_bytes(shard.read_bytes()[:-3])
        return st
    monkeypatch.setattr(tf_bundle.os, "fstat", fstat_then_cut)
    with pytest.raises(ConversionError, match=rf"data-00000-of-00001: short read: the file ended at byte "
                                              rf"{full - 3} \({full} when opened\): the shard is truncated"):
        read_bundle(tiny)


@pytest.mark.parametrize("block", [1, 7, 64])
def test_reads_in_blocks_smaller_than_a_tensor(monkeypatch, block):
    """Checkpoints far larger than the read size (_BLOCK, 16 MiB): tensors assembled from
    several reads, reads that end before the next tensor starts; the same arrays and digests."""
    from albert_ref.weights import tf_bundle
    prefix = prefix_of(FIXTURES / "sharded")
    want_digests, got_digests = {}, {}
    want = read_bundle(prefix, digests=want_digests)
    monkeypatch.setattr(tf_bundle, "_BLOCK", block)
    got = read_bundle(prefix, keep=lambda name: name != "global_step", digests=got_digests)
    assert got_digests == want_digests
    for name, array in got.items():
        assert array.tobytes() == want[name].tobytes(), name


def test_an_empty_shard_of_empty_tensors(tmp_path):
    write_bundle(tmp_path / "x", [header(), entry("e", 1, [0, 3], 0, b"")], b"")
    got = read_bundle(tmp_path / "x")
    assert got["e"].shape == (0, 3) and got["e"].dtype == np.float32


def test_missing_data_shard(tmp_path):
    for f in (FIXTURES / "sharded").glob("model.ckpt.*"):
        shutil.copy(f, tmp_path / f.name)
    data_shard(tmp_path / "model.ckpt", 1, 2).unlink()
    with pytest.raises(ConversionError, match=r"data-00001-of-00002 .*missing"):
        read_bundle(tmp_path / "model.ckpt")


@pytest.fixture(scope="module")
def tiny_copy(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("tiny")
    for f in (FIXTURES / "tiny").glob("model.ckpt.*"):
        shutil.copy(f, directory / f.name)
    return directory / "model.ckpt"


INDEX = (FIXTURES / "tiny" / "model.ckpt.index").read_bytes()
DATA = data_shard(FIXTURES / "tiny" / "model.ckpt").read_bytes()


def assert_index_change_detected(prefix: Path, offset: int, mask: int) -> None:
    corrupt = bytearray(INDEX)
    corrupt[offset] ^= mask
    index_of(prefix).write_bytes(bytes(corrupt))
    try:
        with pytest.raises(ConversionError):
            read_bundle(prefix)
    finally:
        index_of(prefix).write_bytes(INDEX)


def test_a_bit_flip_at_every_index_byte_is_detected(tiny_copy):
    """Every byte of the index is covered by a block CRC, the footer's canonical encoding
    or the magic number: a changed byte is an error, never a silently different result."""
    for offset in range(len(INDEX)):
        assert_index_change_detected(tiny_copy, offset, 1 << offset % 8)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(offset=st.integers(0, len(INDEX) - 1), mask=st.integers(1, 255))
def test_any_index_byte_change_is_detected(tiny_copy, offset, mask):
    assert_index_change_detected(tiny_copy, offset, mask)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(offset=st.integers(0, len(DATA) - 1), mask=st.integers(1, 255))
def test_any_data_byte_change_is_detected(tiny_copy, offset, mask):
    corrupt = bytearray(DATA)
    corrupt[offset] ^= mask
    data_shard(tiny_copy).write_bytes(bytes(corrupt))
    try:
        with pytest.raises(ConversionError, match=r"tensor '.+': CRC32C mismatch"):
            read_bundle(tiny_copy)
    finally:
        data_shard(tiny_copy).write_bytes(DATA)


# -- hand-built bundles: what TF never writes for ALBERT, but a reader must refuse ------


def _masked(data: bytes) -> int:
    crc = crc32c.crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _field(number: int, value) -> bytes:
    if isinstance(value, bytes):
        return varint(number << 3 | 2) + varint(len(value)) + value
    return varint(number << 3) + varint(value)


def _block(records) -> bytes:
    body = b"".join(varint(0) + varint(len(k)) + varint(len(v)) + k + v for k, v in records)
    return body + struct.pack("<II", 0, 1)  # one restart point, at 0


def write_raw_table(prefix: Path, data_block: bytes, index_extra: bytes = b"", gap: bytes = b"", tail: bytes = b"",
                    kind: int = 0, index_key: bytes = b"\xff", data: bytes = b""):
    """An index file holding `data_block` as is (CRC-sealed, like every block, compression
    `kind`), an index entry under `index_key` whose handle is followed by index_extra, `gap`
    bytes between the data and meta blocks, `tail` bytes before the footer; and a data shard."""
    out = bytearray()

    def put(block: bytes, kind: int = 0) -> bytes:
        handle = varint(len(out)) + varint(len(block))
        out.extend(block + bytes([kind]) + struct.pack("<I", _masked(block + bytes([kind]))))
        return handle

    data_handle = put(data_block, kind)
    out.extend(gap)
    meta = put(_block([]))
    index = put(_block([(index_key, data_handle + index_extra)]))
    out.extend(tail)
    out.extend((meta + index).ljust(40, b"\0") + struct.pack("<Q", 0xDB4775248B80FB57))
    Path(f"{prefix}.index").write_bytes(bytes(out))
    data_shard(prefix).write_bytes(data)


def write_bundle(prefix: Path, records, data: bytes = b"", compression: int = 0) -> None:
    """A one-data-block SSTable of (key, value) records plus a data shard, as TF lays it out."""
    write_raw_table(prefix, _block(records), kind=compression, index_key=records[-1][0] + b"\xff", data=data)


def header(shards=1, endianness=0, producer=1, min_consumer=0, bad=()) -> tuple[bytes, bytes]:
    version = _field(1, producer) + _field(2, min_consumer) + b"".join(_field(3, b) for b in bad)
    return b"", _field(1, shards) + _field(2, endianness) + _field(3, version)


def _shape_field(shape) -> bytes:
    return _field(2, b"".join(_field(2, _field(1, d)) for d in shape))


def _crc_field(data: bytes) -> bytes:
    return varint(6 << 3 | 5) + struct.pack("<I", _masked(data))


def entry(name: str, dtype: int, shape, offset: int, data: bytes, slices: bool = False) -> tuple[bytes, bytes]:
    value = (_field(1, dtype) + _shape_field(shape) + _field(4, offset) + _field(5, len(data)) + _crc_field(data)
             + (_field(7, b"") if slices else b""))
    return name.encode(), value


def test_hand_built_bundle_round_trips(tmp_path):
    a = np.arange(6, dtype="<f2").reshape(2, 3)
    b = np.array([-7, 1 << 40], dtype="<i8")
    c = np.float64(2.5)
    data = a.tobytes() + b.tobytes() + c.tobytes()
    write_bundle(tmp_path / "x", [header(), entry("a", 19, [2, 3], 0, a.tobytes()),
                                  entry("b", 9, [2], 12, b.tobytes()), entry("c", 2, [], 28, c.tobytes())], data)
    got = read_bundle(tmp_path / "x")
    assert list(got) == ["a", "b", "c"]
    np.testing.assert_array_equal(got["a"], a)
    np.testing.assert_array_equal(got["b"], b)
    assert got["c"].shape == () and got["c"] == c and got["c"].dtype == np.float64


def one_tensor(**changes):
    data = np.ones(2, "<f4").tobytes()
    return [header(**changes), entry("w", 1, [2], 0, data)], data


@pytest.mark.parametrize("changes, message", [
    (dict(endianness=1), "big-endian"),
    (dict(endianness=2), "unknown endianness"),
    (dict(min_consumer=2), "unsupported tensor bundle version"),
    (dict(bad=[1]), "unsupported tensor bundle version"),
    (dict(shards=0), "0 data shards"),
])
def test_refuses_bad_headers(tmp_path, changes, message):
    records, data = one_tensor(**changes)
    write_bundle(tmp_path / "x", records, data)
    with pytest.raises(ConversionError, match=message):
        read_bundle(tmp_path / "x")


@pytest.mark.parametrize("dtype, message", [(7, "DT_STRING"), (14, "DT_BFLOAT16"), (20, "DT_RESOURCE"), (99, "DataType 99")])
def test_refuses_unsupported_dtypes_naming_the_tensor(tmp_path, dtype, message):
    write_bundle(tmp_path / "x", [header(), entry("odd/tensor", dtype, [2], 0, b"12345678")], b"12345678")
    with pytest.raises(ConversionError, match=rf"tensor 'odd/tensor': dtype {message}.* not supported"):
        read_bundle(tmp_path / "x")


def test_refuses_partitioned_variables(tmp_path):
    write_bundle(tmp_path / "x", [header(), entry("part", 1, [4], 0, b"", slices=True)])
    with pytest.raises(ConversionError, match="tensor 'part' is a partitioned"):
        read_bundle(tmp_path / "x")


def test_refuses_keys_out_of_order(tmp_path):
    data = np.ones(2, "<f4").tobytes()
    write_bundle(tmp_path / "x", [header(), entry("b", 1, [2], 0, data), entry("a", 1, [2], 0, data)], data)
    with pytest.raises(ConversionError, match="keys out of order: 'a' follows 'b'"):
        read_bundle(tmp_path / "x")


def test_refuses_missing_header(tmp_path):
    data = np.ones(2, "<f4").tobytes()
    write_bundle(tmp_path / "x", [entry("w", 1, [2], 0, data)], data)
    with pytest.raises(ConversionError, match="header entry"):
        read_bundle(tmp_path / "x")


def test_refuses_size_that_disagrees_with_shape(tmp_path):
    write_bundle(tmp_path / "x", [header(), entry("w", 1, [3], 0, b"12345678")], b"12345678")
    with pytest.raises(ConversionError, match=r"tensor 'w': stored size 8 bytes != 12 bytes"):
        read_bundle(tmp_path / "x")


def test_refuses_tensor_beyond_its_shard(tmp_path):
    data = np.ones(2, "<f4").tobytes()
    write_bundle(tmp_path / "x", [header(), entry("w", 1, [2], 4, data)], data)
    with pytest.raises(ConversionError, match=r"tensor 'w': bytes \[4, 12\) lie beyond the end"):
        read_bundle(tmp_path / "x")


def test_refuses_compressed_blocks(tmp_path):
    records, data = one_tensor()
    write_bundle(tmp_path / "x", records, data, compression=1)
    with pytest.raises(ConversionError, match=r"compressed \(type 1\)"):
        read_bundle(tmp_path / "x")


def _entry_fields(name: bytes, *fields: bytes) -> tuple[bytes, bytes]:
    return name, b"".join(fields)


_W = np.ones(2, "<f4").tobytes()
_CRC = _crc_field(_W)
_DIMS = _shape_field([2])


# Entries and headers TF never writes, each refused with a message naming what is wrong
# (the reader's remaining checks on bundle entries; the SSTable's are above).
@pytest.mark.parametrize("records, message", [
    ([(b"", _field(1, 1) + _field(3, _field(1, 1) + _field(3, varint(1)))),  # packed bad_consumers
      entry("w", 1, [2], 0, _W)], "unsupported tensor bundle version .*bad_consumers \\[1\\]"),
    ([header(), _entry_fields(b"w", _field(1, b"x"), _DIMS, _field(5, 8), _CRC)], "field 1 has wire type 2"),
    ([header(), _entry_fields(b"w\xff", _field(1, 1), _DIMS, _field(5, 8), _CRC)], "is not valid UTF-8"),
    ([header(), _entry_fields(b"w", _field(1, 1), _DIMS, _field(3, 1), _field(5, 8), _CRC)],
     "tensor 'w': shard id 1 is outside the bundle's 1 shards"),
    ([header(), _entry_fields(b"w", _field(1, 1), _DIMS, _field(4, (1 << 64) - 8), _field(5, 8), _CRC)],
     "tensor 'w': negative data offset -8"),
    ([header(), _entry_fields(b"w", _field(1, 1), _DIMS, _field(5, 8))], "tensor 'w': the entry has no CRC32C"),
    ([header(), _entry_fields(b"w", _field(1, 1), _field(2, _field(3, 1)), _field(5, 0), _CRC)], "unknown rank"),
    ([header(), _entry_fields(b"w", _field(1, 1), _field(2, _field(2, _field(1, (1 << 64) - 1))), _CRC)],
     "unknown or negative dimension \\(-1\\)"),
    ([header(), _entry_fields(b"w", _field(1, 1), b"\x28\x80")], "malformed entry of tensor 'w'"),
    ([header(), _entry_fields(b"w", _field(1, 1), _DIMS, _field(3, 1 << 40), _field(5, 8), _CRC)],
     "integer 1099511627776 does not fit in int32"),
])
def test_refuses_malformed_entries_by_name(tmp_path, records, message):
    write_bundle(tmp_path / "x", records, _W)
    with pytest.raises(ConversionError, match=message):
        read_bundle(tmp_path / "x")


@pytest.mark.parametrize("data_block, changes, message", [
    (b"\0\0", {}, "malformed data block at offset 0: too short"),
    (struct.pack("<I", 0), {}, "bad restart count 0"),
    (struct.pack("<I", 5), {}, "bad restart count 5"),
    (varint(0) + varint(1) + varint(100) + b"k" + struct.pack("<II", 0, 1), {}, "bad entry at byte 3"),
    (_block([header()]), dict(index_extra=b"\0"), "malformed index block entry"),
    (_block([header()]), dict(gap=b"\0" * 3),  # the meta block, 3 bytes after the data block's trailer
     f"a block starts at byte {len(_block([header()])) + 5 + 3}, expected {len(_block([header()])) + 5}"),
    (_block([header()]), dict(tail=b"\0"), "blocks end at byte"),
])
def test_refuses_malformed_tables_by_name(tmp_path, data_block, changes, message):
    write_raw_table(tmp_path / "x", data_block, **changes)
    with pytest.raises(ConversionError, match=message):
        read_bundle(tmp_path / "x")
