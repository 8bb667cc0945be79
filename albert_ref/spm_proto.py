"""The few fields of sentencepiece's ModelProto this project writes and reads, as raw
protobuf (the protobuf package is not a dependency of the engine); its wire-format reader
(`fields`, `read_varint`, `varint`) also parses TF's tensor-bundle protos (weights/tf_bundle.py).

ModelProto: pieces = 1 (SentencePiece: piece = 1, score = 2 float, type = 3),
normalizer_spec = 3 (NormalizerSpec: name = 1, precompiled_charsmap = 2,
add_dummy_prefix = 3, remove_extra_whitespaces = 4, escape_whitespaces = 5).
"""
import struct

from .errors import TokenizerError

NORMAL, UNKNOWN, CONTROL = 1, 2, 3  # SentencePiece.Type
_LEN, _VARINT, _FIXED32, _FIXED64 = 2, 0, 5, 1  # wire types


def varint(n: int) -> bytes:
    """A protobuf base-128 varint (negative numbers as their 64-bit two's complement)."""
    n &= (1 << 64) - 1
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    return bytes(out + bytes([n]))


def _field(number: int, payload: bytes) -> bytes:  # length-delimited
    return varint(number << 3 | _LEN) + varint(len(payload)) + payload


def _bool(number: int, value: bool) -> bytes:
    return varint(number << 3 | _VARINT) + varint(int(value))


def model_proto(pieces, *, name="identity", charsmap=b"") -> bytes:
    """A serialized unigram ModelProto of `pieces`, (text, score, type) in id order."""
    out = bytearray()
    for text, score, kind in pieces:
        out += _field(1, _field(1, text.encode()) + varint(2 << 3 | _FIXED32) + struct.pack("<f", score)
                      + varint(3 << 3 | _VARINT) + varint(kind))
    spec = _field(1, name.encode()) + (_field(2, charsmap) if charsmap else b"")
    # add_dummy_prefix, remove_extra_whitespaces, escape_whitespaces: ALBERT's settings
    spec += _bool(3, True) + _bool(4, True) + _bool(5, True)
    return bytes(out + _field(3, spec))


def normalizer_charsmap(proto: bytes) -> bytes:
    """normalizer_spec.precompiled_charsmap of a serialized ModelProto (b"" if none)."""
    charsmap = b""
    for number, wire, value in fields(proto, _bad_model):
        if number == 3 and wire == _LEN:
            charsmap = b""  # a later normalizer_spec replaces an earlier one (protobuf merges)
            for inner, inner_wire, data in fields(value, _bad_model):
                if inner == 2 and inner_wire == _LEN:
                    charsmap = data
    return charsmap


def _bad_model(reason: str):
    raise TokenizerError(f"sentencepiece model: malformed protobuf: {reason}")


def fields(buf: bytes, fail):
    """(field number, wire type, value) of each field of one serialized message, in order:
    ints for varint and fixed wire types, bytes for length-delimited ones. fail(reason)
    raises the caller's error for a malformed message (weights/tf_bundle.py reads TF's
    protos with this too)."""
    pos = 0
    while pos < len(buf):
        tag, pos = read_varint(buf, pos, fail)
        number, wire = tag >> 3, tag & 7
        if wire == _VARINT:
            value, pos = read_varint(buf, pos, fail)
        elif wire in (_FIXED32, _FIXED64):
            width = 4 if wire == _FIXED32 else 8
            if pos + width > len(buf):
                fail(f"truncated fixed{width * 8} field")
            value, pos = int.from_bytes(buf[pos:pos + width], "little"), pos + width
        elif wire == _LEN:
            size, pos = read_varint(buf, pos, fail)
            if pos + size > len(buf):
                fail(f"field {number} runs past the end")
            value, pos = buf[pos:pos + size], pos + size
        else:
            fail(f"unsupported wire type {wire}")
        if number == 0:
            fail("field number 0")
        yield number, wire, value


def read_varint(buf: bytes, pos: int, fail) -> tuple[int, int]:
    """(value, position after it) of the varint at buf[pos]; fail(reason) if malformed."""
    result = shift = 0
    while shift < 70:
        if pos >= len(buf):
            fail("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result & 0xFFFFFFFFFFFFFFFF, pos
        shift += 7
    fail("varint longer than 10 bytes")
