"""The few fields of sentencepiece's ModelProto this project writes and reads, as raw
protobuf (the protobuf package is not a dependency of the engine).

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
    for number, value in _fields(proto):
        if number == 3:
            charsmap = b""  # a later normalizer_spec replaces an earlier one (protobuf merges)
            for inner, data in _fields(value):
                if inner == 2:
                    charsmap = data
    return charsmap


def _fields(data: bytes):
    """(field number, bytes or int) of each field of one message, in order."""
    pos, end = 0, len(data)
    while pos < end:
        tag, pos = _read_varint(data, pos)
        number, wire = tag >> 3, tag & 7
        if wire == _VARINT:
            value, pos = _read_varint(data, pos)
        elif wire == _LEN:
            size, pos = _read_varint(data, pos)
            value, pos = data[pos:pos + size], pos + size
        elif wire in (_FIXED32, _FIXED64):
            size = 4 if wire == _FIXED32 else 8
            value, pos = data[pos:pos + size], pos + size
        else:
            raise TokenizerError(f"sentencepiece model: unsupported protobuf wire type {wire}")
        if pos > end:
            raise TokenizerError("sentencepiece model: truncated protobuf field")
        yield number, value


def _read_varint(data: bytes, pos: int):
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise TokenizerError("sentencepiece model: truncated or overlong protobuf varint")
        byte = data[pos]
        result |= (byte & 0x7F) << shift
        pos += 1
        if byte < 0x80:
            return result, pos
        shift += 7
