"""Where `albert-ref embed` puts its vectors: .npy, .h5 (vectors plus row ids, and the
rows' own ids with --id-field), .jsonl (likewise), or JSON on stdout. File outputs are written whole or not at all (albert_ref.atomic).

Numbers in JSON are the shortest decimal that reads back as the same float32, so that
text outputs lose no bits.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import h5py
import numpy as np

from albert_ref.atomic import atomic_path
from albert_ref.errors import InputError

OUTPUT_FORMATS = (".npy", ".h5", ".jsonl")
KEYED_FORMATS = (".h5", ".jsonl")       # the outputs that can keep --id-field values


def output_format(path: Path) -> str:
    """The output's format from its suffix; checked before any work starts (and the path
    itself by atomic.check_output_path)."""
    suffix = path.suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise InputError(f"{path}: unknown output format {suffix or '(no suffix)'}; name it "
                         f"{', '.join(OUTPUT_FORMATS)}, or leave --output out for JSON on stdout")
    return suffix


def json_vector(vector: np.ndarray) -> str:
    """[x, y, ...] with float32 shortest round-trip digits."""
    return "[" + ", ".join(map(str, vector.astype(np.float32))) + "]"


def json_vectors(vectors: np.ndarray) -> str:
    """A JSON array of arrays, one vector per line."""
    return "[" + ",\n ".join(map(json_vector, vectors)) + "]\n"


def write_output(path: Path, parts: Iterable, rows: int, dim: int, meta: dict, keys: list | None = None) -> None:
    """Write `rows` vectors of `dim` from `parts`, an iterable of (ids, vectors, truncated)
    pieces in row order, atomically. `meta` (str/number values) is kept in .h5 attributes;
    `keys`, one id per row (str or int), in .h5 and .jsonl outputs."""
    suffix = output_format(path)
    if keys is not None and suffix not in KEYED_FORMATS:
        raise InputError(f"{path}: a {suffix} file holds vectors only, not the rows' ids")
    write = {".npy": _write_npy, ".h5": _write_h5, ".jsonl": _write_jsonl}[suffix]
    with atomic_path(path) as tmp:
        write(tmp, parts, rows, dim, meta, keys)


def _write_npy(tmp: Path, parts, rows: int, dim: int, meta: dict, keys) -> None:
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(rows, dim))
    start = 0
    for _, vectors, _ in parts:
        out[start:start + len(vectors)] = vectors
        start += len(vectors)
    out.flush()
    del out


def _write_h5(tmp: Path, parts, rows: int, dim: int, meta: dict, keys) -> None:
    with h5py.File(tmp, "w") as f:
        vec = f.create_dataset("vectors", (rows, dim), np.float32)
        ids = f.create_dataset("ids", (rows,), np.int64)
        cut = f.create_dataset("truncated", (rows,), np.int32)
        f.attrs.update(meta)
        vec.attrs["doc"] = "one embedding per input row, in input order"
        ids.attrs["doc"] = "0-based input row of each vector (line of .txt/.jsonl, data row of .csv/.tsv)"
        cut.attrs["doc"] = "word pieces dropped to fit max_seq_length"
        if keys is not None:
            f.create_dataset("keys", data=[str(k) for k in keys], dtype=h5py.string_dtype())
            f["keys"].attrs["doc"] = "each row's --id-field value, as text"
        start = 0
        for part_ids, vectors, truncated in parts:
            stop = start + len(vectors)
            vec[start:stop], ids[start:stop], cut[start:stop] = vectors, part_ids, truncated
            start = stop


def _write_jsonl(tmp: Path, parts, rows: int, dim: int, meta: dict, keys) -> None:
    with open(tmp, "w", encoding="utf-8") as fh:
        start = 0
        for ids, vectors, truncated in parts:
            if keys is None:
                heads = (f'"id": {i}' for i in ids.tolist())
            else:
                heads = (f'"id": {json.dumps(k, ensure_ascii=False)}, "row": {i}'
                         for k, i in zip(keys[start:start + len(ids)], ids.tolist()))
            fh.writelines(f'{{{head}, "truncated": {t}, "vector": {json_vector(v)}}}\n'
                          for head, v, t in zip(heads, vectors, truncated.tolist()))
            start += len(ids)
