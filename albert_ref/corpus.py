"""A corpus of input files cut into partitions: what a distributed embedding job runs.

A partition is one file and a range in it: lines of a .txt or .jsonl file (and the byte
range those lines occupy, so that a worker reads only its own part), rows of a Parquet
file, or the whole of a .csv/.tsv file (a quoted field may span lines, so a table cannot
be cut by lines without parsing it; split big tables into several files, or use Parquet).
The cuts depend only on the files' bytes and the partition size, so a rerun finds the
same partitions. Scanning a file for its line ends also gives its SHA-256, which names
the input a job was made from.
"""
from __future__ import annotations

import collections
import glob
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from albert_ref.embed_inputs import INPUT_FORMATS, Inputs, check_options as check_options_of_format, parse
from albert_ref.errors import InputError
from albert_ref.weights.model_file import file_sha256

CORPUS_FORMATS = (*INPUT_FORMATS, "parquet")
_SUFFIXES = {".txt": "txt", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv",
             ".parquet": "parquet", ".pq": "parquet"}
_BLOCK = 1 << 24


@dataclass(frozen=True)
class Partition:
    """Lines [start, stop) of a .txt/.jsonl file at bytes [byte_start, byte_stop), rows
    [start, stop) of a Parquet file, or a whole .csv/.tsv file (start 0, stop -1)."""

    name: str
    source: str         # absolute path: every worker must be able to read it
    fmt: str
    start: int
    stop: int
    byte_start: int = 0
    byte_stop: int = -1

    def describe(self) -> str:
        unit = {"txt": "lines", "jsonl": "lines", "parquet": "rows"}.get(self.fmt)
        return f"{self.source}" + (f" {unit} {self.start + 1}-{self.stop}" if unit else "")


@dataclass(frozen=True)
class SourceFile:
    path: str
    fmt: str
    size: int
    sha256: str


def expand(inputs, input_format: str | None = None) -> list[SourceFile]:
    """The files named by `inputs` (paths or glob patterns, or one such str), in the order
    given, each pattern's matches sorted by name; a file named twice is an error."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    paths = []
    for pattern in map(str, inputs):
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not matches:
            raise InputError(f"{pattern}: no file matches")
        paths += [os.path.abspath(p) for p in matches]
    if not paths:
        raise InputError("no input files given")
    twice = sorted(p for p, n in collections.Counter(paths).items() if n > 1)
    if twice:
        raise InputError(f"{twice[0]}: named more than once among the inputs")
    return [SourceFile(p, _format(p, input_format), 0, "") for p in paths]


def _format(path: str, given: str | None) -> str:
    fmt = given or _SUFFIXES.get(Path(path).suffix.lower())
    if fmt not in CORPUS_FORMATS:
        raise InputError(f"{path}: unknown input format; name it {', '.join(sorted(_SUFFIXES))}, "
                         f"or say --input-format {'|'.join(INPUT_FORMATS)}")
    return fmt


def partitions(files: list[SourceFile], size: int) -> tuple[list[SourceFile], list[Partition]]:
    """Cut every file into partitions of `size` lines (rows of Parquet), named part-000000
    on in input order; returns the files with their sizes and SHA-256 filled in."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise InputError(f"partition size must be a positive int, not {size!r}")
    scanned, cuts = [], []
    for f in files:
        try:
            if f.fmt in ("txt", "jsonl"):
                digest, nbytes, ranges = _line_ranges(f.path, size)
            else:
                digest, nbytes = file_sha256(f.path), os.path.getsize(f.path)
                ranges = _parquet_ranges(f.path, size) if f.fmt == "parquet" else [(0, -1, 0, -1)]
        except OSError as exc:
            raise InputError(f"cannot read {f.path}: {exc.strerror or exc}") from None
        scanned.append(SourceFile(f.path, f.fmt, nbytes, digest))
        cuts += [(f, r) for r in ranges]
    parts = [Partition(f"part-{k:06d}", f.path, f.fmt, *r) for k, (f, r) in enumerate(cuts)]
    return scanned, parts


def _line_ranges(path: str, size: int):
    """SHA-256, byte size, and (first line, end line, first byte, end byte) of each run of
    `size` lines. Lines end at b"\\n"; a last line without one still counts."""
    h, nbytes, newlines, last, starts = hashlib.sha256(), 0, 0, b"", [0]
    with open(path, "rb") as fh:
        while block := fh.read(_BLOCK):
            h.update(block)
            ends = np.flatnonzero(np.frombuffer(block, np.uint8) == ord("\n")) + nbytes + 1
            closing = np.arange((newlines // size + 1) * size, newlines + len(ends) + 1, size)  # newline counts
            starts += ends[closing - newlines - 1].tolist()
            newlines += len(ends)
            nbytes += len(block)
            last = block[-1:]
    lines = newlines + (last not in (b"", b"\n"))
    count = -(-lines // size)
    bounds = starts[:count] + [nbytes]
    return h.hexdigest(), nbytes, [(k * size, min((k + 1) * size, lines), bounds[k], bounds[k + 1])
                                   for k in range(count)]


def _parquet_ranges(path: str, size: int):
    rows = _parquet_file(path).metadata.num_rows
    return [(a, min(a + size, rows), 0, -1) for a in range(0, rows, size)]


def _parquet_file(path: str):
    import pyarrow
    import pyarrow.parquet as pq
    try:
        return pq.ParquetFile(path)
    except (pyarrow.ArrowException, OSError) as exc:
        raise InputError(f"{path}: not a readable Parquet file ({exc})") from None


def read(part: Partition, fields: list[str] | None, pair: bool, id_field: str | None) -> Inputs:
    """The texts of one partition, with the ids `albert-ref embed` gives them (line of a
    .txt/.jsonl file, data row of a .csv/.tsv, row of a Parquet file); bad input raises
    InputError naming the file and line (or row)."""
    if part.fmt == "parquet":
        return _parquet_rows(part, fields, pair, id_field)
    try:
        with open(part.source, "rb") as fh:
            fh.seek(part.byte_start)
            data = fh.read() if part.byte_stop < 0 else fh.read(part.byte_stop - part.byte_start)
    except OSError as exc:
        raise InputError(f"cannot read {part.source}: {exc.strerror or exc}") from None
    lines = part.fmt in ("txt", "jsonl")
    return parse(data, part.source, part.fmt, fields, pair, id_field, part.start if lines else None)


def check_options(files: list[SourceFile], fields: list[str] | None, pair: bool, id_field: str | None) -> None:
    """The errors that every partition of a file would raise, found once, before any task
    runs: options its format does not take, and columns a Parquet file's schema lacks."""
    for f in files:
        if f.fmt == "parquet":
            _parquet_columns(_parquet_file(f.path), f.path, fields, pair, id_field)
        else:
            check_options_of_format(f.path, f.fmt, fields, pair, id_field)


def _parquet_columns(pf, path: str, fields, pair, id_field) -> list[str]:
    """The text columns to read, checked against the file's schema."""
    fields = check_options_of_format(path, "parquet", fields, pair, id_field)
    names = pf.schema_arrow.names
    for column, option in [(c, "--field") for c in fields] + ([(id_field, "--id-field")] if id_field else []):
        if column not in names:
            raise InputError(f"{path}: no column {column!r} (columns: {', '.join(map(repr, names))}); "
                             f"choose one with {option}")
    return fields


def _parquet_rows(part: Partition, fields, pair, id_field) -> Inputs:
    import pyarrow
    pf = _parquet_file(part.source)
    fields = _parquet_columns(pf, part.source, fields, pair, id_field)
    wanted = [*fields, *([id_field] if id_field else [])]
    counts = [pf.metadata.row_group(g).num_rows for g in range(pf.metadata.num_row_groups)]
    first = np.concatenate([[0], np.cumsum(counts)])
    groups = [g for g in range(len(counts)) if first[g] < part.stop and first[g + 1] > part.start]
    try:
        table = pf.read_row_groups(groups, columns=wanted).slice(part.start - first[groups[0]], part.stop - part.start)
    except (pyarrow.ArrowException, OSError) as exc:
        raise InputError(f"{part.source}: rows {part.start + 1}-{part.stop} unreadable ({exc})") from None
    columns = [_column(table, c, part, (str,)) for c in fields]
    texts = columns[0] if len(columns) == 1 else list(zip(*columns))
    keys = _column(table, id_field, part, (str, int)) if id_field else None
    return Inputs(texts, np.arange(part.start, part.stop, dtype=np.int64), part.source, 0, keys)


def _column(table, name: str, part: Partition, types: tuple) -> list:
    values = table.column(name).to_pylist()
    for i, v in enumerate(values):
        if not isinstance(v, types) or isinstance(v, bool):
            kinds = " or ".join({str: "a string", int: "an integer"}[t] for t in types)
            raise InputError(f"{part.source}: row {part.start + i + 1}: column {name!r} is {v!r:.40}, not {kinds}")
    return values
