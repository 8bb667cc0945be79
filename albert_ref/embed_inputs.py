"""The texts of an `albert-ref embed` run: from arguments, stdin, .txt, .jsonl, .csv or .tsv.

Inputs are read, decoded and checked whole before anything is computed, so that a bad
input (unreadable, undecodable, a missing field or column, nothing to embed) fails with
a message naming the file and line, and nothing gets written.
"""
from __future__ import annotations

import csv
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from albert_ref.errors import InputError

INPUT_FORMATS = ("txt", "jsonl", "csv", "tsv")
_SUFFIXES = {".txt": "txt", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv"}
STDIN = "-"


@dataclass(frozen=True)
class Inputs:
    """What to embed: texts (str or (text_a, text_b)) and the input row each came from
    (0-based: the line of a .txt/.jsonl/stdin, the data row of a .csv/.tsv, the position
    among the TEXT arguments or their pairs); with --id-field, each row's id as well."""

    texts: list
    ids: np.ndarray  # int64
    source: str
    skipped: int = 0  # blank lines
    keys: list | None = None  # --id-field values: str (or int, from .jsonl)


def from_arguments(texts: list[str], pair: bool) -> Inputs:
    if pair:
        if len(texts) % 2:
            raise InputError(f"--pair needs an even number of TEXT arguments (A B A B ...), got {len(texts)}")
        texts = list(zip(texts[0::2], texts[1::2]))
    return _inputs(list(texts), range(len(texts)), "the arguments")


def from_file(path: str, fmt: str | None, fields: list[str] | None, pair: bool, id_field: str | None = None) -> Inputs:
    """Read `path` ("-" for stdin) as `fmt`, or as its suffix says; id_field names the
    .jsonl field or .csv/.tsv column that holds each row's id."""
    name = "<stdin>" if path == STDIN else path
    data = _read_bytes(path, name)
    fmt = fmt or ("txt" if path == STDIN else _SUFFIXES.get(Path(path).suffix.lower()))
    if fmt is None:
        raise InputError(f"{name}: unknown input format; name it .txt, .jsonl, .csv or .tsv, "
                         f"or say --input-format {'|'.join(INPUT_FORMATS)}")
    return parse(data, name, fmt, fields, pair, id_field)


def parse(data: bytes, name: str, fmt: str, fields: list[str] | None, pair: bool, id_field: str | None = None,
          first_line: int | None = None) -> Inputs:
    """The texts of `data`, the bytes of file `name` in format `fmt`. For .txt and .jsonl,
    `data` may be a part of the file, whole lines from line `first_line` (0-based) on:
    row ids and error messages then count from there, and a part with only blank lines
    gives no texts rather than an error (a distributed job cuts files into such parts)."""
    fields = check_options(name, fmt, fields, pair, id_field)
    text = _decode(data, name, first_line or 0)
    if fmt == "txt":
        return _lines(text, name, pair, first_line)
    if fmt == "jsonl":
        return _jsonl(text, name, fields, id_field, first_line)
    if first_line is not None:
        raise ValueError("a .csv/.tsv file is parsed whole: its quoted fields may span lines")
    return _table(text, name, fields, "\t" if fmt == "tsv" else ",", id_field)


def check_options(name: str, fmt: str, fields: list[str] | None, pair: bool, id_field: str | None) -> list[str]:
    """The text fields to read from file `name` of format `fmt` (none for plain lines);
    InputError for options the format does not take."""
    if fmt == "txt":
        for option, given in (("--field", fields), ("--id-field", id_field)):
            if given:
                raise InputError(f"{option} applies to .jsonl, .csv and .tsv inputs, not to {name} (plain lines)")
        return []
    fields = fields or ["text"]
    if len(fields) > 2:
        raise InputError(f"--field names one text field, or two for pairs; got {len(fields)}")
    if pair and len(fields) != 2:
        raise InputError(f"--pair with {fmt} input needs two fields: --field A --field B")
    return fields


def _read_bytes(path: str, name: str) -> bytes:
    if path == STDIN:
        return sys.stdin.buffer.read()
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {name}: {exc.strerror or exc}") from None


def _decode(data: bytes, name: str, first_line: int = 0) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = first_line + data.count(b"\n", 0, exc.start) + 1
        line_start = data.rfind(b"\n", 0, exc.start) + 1
        raise InputError(f"{name}:{line}: not valid UTF-8 (byte "
                         f"0x{data[exc.start]:02x} at column {exc.start - line_start + 1}); "
                         f"albert-ref reads UTF-8 text") from None
    return text if first_line else text.removeprefix("\ufeff")  # a byte-order mark, as Windows tools write


def _inputs(texts, ids, source, skipped=0, keys=None, allow_empty=False) -> Inputs:
    if not texts and not allow_empty:
        blank = f" (only {skipped} blank line{'s' * (skipped != 1)})" if skipped else ""
        raise InputError(f"{source}: no texts to embed{blank}")
    return Inputs(texts, np.asarray(ids, dtype=np.int64), source, skipped, keys)


def _numbered_lines(text: str, first: int = 0):
    """(0-based line number, counting from `first`, line) for the non-blank lines, and how
    many were blank."""
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the final newline ends the last line, it does not start a new one
    kept = [(i, line.removesuffix("\r")) for i, line in enumerate(lines, first) if line.strip()]
    return kept, len(lines) - len(kept)


def _lines(text: str, name: str, pair: bool, first: int | None = None) -> Inputs:
    kept, blank = _numbered_lines(text, first or 0)
    texts = []
    for i, line in kept:
        if pair:
            a, tab, b = line.partition("\t")
            if not tab:
                raise InputError(f"{name}:{i + 1}: --pair needs each line as TEXT_A<TAB>TEXT_B; this one has no tab")
            texts.append((a, b))
        else:
            texts.append(line)
    return _inputs(texts, [i for i, _ in kept], name, blank, allow_empty=first is not None)


def _jsonl(text: str, name: str, fields: list[str], id_field: str | None, first: int | None = None) -> Inputs:
    kept, blank = _numbered_lines(text, first or 0)
    texts, keys = [], []
    for i, line in kept:
        where = f"{name}:{i + 1}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        except RecursionError:
            raise InputError(f"{where}: JSON nested too deeply to read") from None
        except ValueError as exc:  # e.g. an integer of more digits than Python converts
            raise InputError(f"{where}: not valid JSON ({exc})") from None
        if not isinstance(record, dict):
            raise InputError(f"{where}: expected a JSON object, got {type(record).__name__}")
        values = [_field(record, field, where, "--field", (str,)) for field in fields]
        texts.append(values[0] if len(values) == 1 else tuple(values))
        if id_field is not None:
            keys.append(_field(record, id_field, where, "--id-field", (str, int)))
    return _inputs(texts, [i for i, _ in kept], name, blank, keys if id_field is not None else None,
                   allow_empty=first is not None)


def _field(record: dict, field: str, where: str, option: str, types: tuple):
    if field not in record:
        raise InputError(f"{where}: no field {field!r} (it has: {', '.join(map(repr, record)) or 'none'}); "
                         f"choose one with {option}")
    value = record[field]
    if not isinstance(value, types) or isinstance(value, bool):
        kinds = " or ".join({str: "a string", int: "an integer"}[t] for t in types)
        raise InputError(f"{where}: field {field!r} is {json.dumps(value)[:40]}, not {kinds}")
    return value


def _table(text: str, name: str, columns: list[str], delimiter: str, id_column: str | None) -> Inputs:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader, None)
        if header is None:
            raise InputError(f"{name}: empty file, with no header row naming the columns")
        wanted = [(c, "--field") for c in columns]
        if id_column is not None:
            wanted.append((id_column, "--id-field"))
        for column, option in wanted:
            if column not in header:
                raise InputError(f"{name}: no column {column!r} in the header (columns: "
                                 f"{', '.join(map(repr, header))}); choose one with {option}")
        where = [header.index(c) for c in columns]
        key_at = None if id_column is None else header.index(id_column)
        texts, ids, keys, blank = [], [], [], 0
        for row_number, row in enumerate(reader):
            if not row:
                blank += 1
                continue
            if len(row) != len(header):
                raise InputError(f"{name}:{reader.line_num}: {len(row)} fields, but the header has {len(header)}")
            texts.append(row[where[0]] if len(where) == 1 else tuple(row[k] for k in where))
            ids.append(row_number)
            if key_at is not None:
                keys.append(row[key_at])
    except csv.Error as exc:
        raise InputError(f"{name}:{reader.line_num}: malformed table: {exc}") from None
    return _inputs(texts, ids, name, blank, keys if id_column is not None else None)
