"""Request bodies of `albert-ref serve`, checked: JSON in, token id sequences out.

Every refusal is a RequestError carrying its HTTP status and a message naming the field
(and the input's index) at fault: 400 for a body that is not UTF-8 JSON, 422 for one
that is JSON but asks for something wrong.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass

import numpy as np

from albert_ref.errors import InputError, TokenizerError

TRUNCATION_DIRECTIONS = ("right", "left")

# The server's limits, as text-embeddings-inference sets its own (--max-batch-requests:
# the Encoder's batch size).
DEFAULTS = dict(max_batch_tokens=16384, max_batch_requests=32, batch_window_ms=1.0, max_concurrent_requests=512,
                max_client_batch_size=32, payload_limit=2_000_000)


class RequestError(InputError):
    """A request the server refuses, with the HTTP status to answer."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def invalid(message: str) -> RequestError:
    return RequestError(422, message)


def parse_body(body: bytes) -> dict:
    """The JSON object of a request body (strict UTF-8, as JSON over HTTP must be)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(400, f"the request body is not valid UTF-8: byte 0x{body[exc.start]:02x} "
                                f"at offset {exc.start}") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RequestError(400, f"the request body is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise invalid(f"the request body must be a JSON object, not {_kind(obj)}")
    return obj


@dataclass(frozen=True)
class Inputs:
    """What to embed or tokenize: texts (str) and token id sequences (lists of word-piece
    ids, without [CLS]/[SEP], which the server adds as it does to a text's pieces)."""

    items: list
    name: str  # the field they came from, for messages


def inputs(obj: dict, name: str, max_count: int, vocab_size: int) -> Inputs:
    """`obj[name]`: a string, a list of strings, a list of token ids, or a list of lists
    of token ids (the forms the OpenAI embeddings API accepts), at most max_count items."""
    if name not in obj:
        raise invalid(f"{name} is required")
    value = obj[name]
    if isinstance(value, str) or (isinstance(value, list) and value and all(_is_id(v) for v in value)):
        value = [value]
    elif not isinstance(value, list):
        raise invalid(f"{name} must be a string, a list of strings, a list of token ids or a list of lists of "
                      f"token ids, not {_kind(value)}")
    if not value:
        raise invalid(f"{name} is empty: give at least one text")
    if len(value) > max_count:
        raise invalid(f"{name} has {len(value)} items, more than the server's --max-client-batch-size {max_count}")
    for i, item in enumerate(value):
        where = f"{name}[{i}]"
        if isinstance(item, str):
            if not item:
                raise invalid(f"{where} is an empty string")
        elif isinstance(item, list):
            if not item:
                raise invalid(f"{where} is an empty list of token ids")
            for j, v in enumerate(item):
                if not _is_id(v):
                    raise invalid(f"{where}[{j}] must be a token id (an int), not {_kind(v)}")
                if not 0 <= v < vocab_size:
                    raise invalid(f"{where}[{j}] = {v} is not a token id: the vocabulary has ids 0 to {vocab_size - 1}")
        else:
            raise invalid(f"{where} must be a string or a list of token ids, not {_kind(item)}")
    return Inputs(value, name)


def option(obj: dict, name: str, kinds: type | tuple, default, choices=None):
    """An optional field of the given JSON type(s) (bool is not an int here)."""
    value = obj.get(name)
    if value is None:
        return default
    ok = isinstance(value, bool) if kinds is bool else isinstance(value, kinds) and not isinstance(value, bool)
    if not ok:
        raise invalid(f"{name} must be {_KIND_NAMES.get(kinds, 'of another type')}, not {_kind(value)}")
    if choices is not None and value not in choices:
        raise invalid(f"{name} must be one of {', '.join(map(repr, choices))}, not {value!r}")
    return value


def sequences(tokenizer, inp: Inputs, max_seq_length: int, truncate: bool = False,
              direction: str = "right") -> list[np.ndarray]:
    """[CLS] pieces [SEP] ids of each input. An input longer than max_seq_length is
    refused (422, naming its index and length) unless truncate: then pieces are dropped
    from the end ("right", as `albert-ref embed` and run_classifier truncate) or the start."""
    out = []
    for i, item in enumerate(inp.items):
        content = word_piece_ids(tokenizer, item, f"{inp.name}[{i}]")
        length = len(content) + 2
        if length > max_seq_length:
            if not truncate:
                raise invalid(f"{inp.name}[{i}] has {length} tokens ([CLS] and [SEP] included), more than the "
                              f"maximum of {max_seq_length}: shorten it or ask for truncation")
            keep = max_seq_length - 2
            content = content[:keep] if direction == "right" else content[len(content) - keep:]
        out.append(np.array([tokenizer.cls_id, *content, tokenizer.sep_id], np.int32))
    return out


def word_piece_ids(tokenizer, item, where: str) -> list[int]:
    """A text's word-piece ids, untruncated and without [CLS]/[SEP]; token ids as given."""
    return encode_whole(tokenizer, item, where).input_ids[1:-1] if isinstance(item, str) else item


def encode_whole(tokenizer, text: str, where: str):
    """The tokenizer's Encoding of a text, [CLS] and [SEP] included, untruncated."""
    try:
        return tokenizer.encode(text, max_seq_length=sys.maxsize)
    except TokenizerError as exc:  # a lone surrogate, sent as a JSON \u escape
        raise invalid(f"{where}: {exc}") from None


def _is_id(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_KIND_NAMES = {bool: "true or false", str: "a string", int: "an integer"}


def _kind(value) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)
