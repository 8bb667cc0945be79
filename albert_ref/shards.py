"""The output of a distributed embedding job: one shard file per partition, each with a
manifest entry, and `open_embeddings`, one view over them all in input order.

A shard is Parquet (columns row, [id], truncated, vector: a fixed-size list of float32)
or .h5 (datasets vectors, ids, truncated, [keys], as `albert-ref embed --output X.h5`
writes). Both are written under a temporary name and renamed into place, then their
entry, part-NNNNNN.json: rows, SHA-256 of the vectors and of the row ids, and the job it
belongs to. A shard counts as done only when its entry names the current job and the
shard reads back with those checksums; anything else (a missing, torn or corrupted
file) is computed again. When every partition is done, manifest.json lists them all.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from albert_ref.atomic import atomic_output, atomic_path
from albert_ref.embed_outputs import write_output
from albert_ref.errors import AlbertRefError, InputError
from albert_ref.weights.model_file import sha256

SHARD_FORMATS = ("parquet", "h5")
MANIFEST = "manifest.json"


class CorruptShardError(AlbertRefError):
    """A shard of a distributed embedding job does not match its manifest entry."""


@dataclass
class Shard:
    ids: np.ndarray         # int64: the input line (row) of each vector, as `albert-ref embed` numbers them
    keys: list | None       # the --id-field values, as text
    truncated: np.ndarray   # int32: word pieces dropped per row
    vectors: np.ndarray     # float32 [rows, dim]


def shard_path(folder: Path, name: str, fmt: str) -> Path:
    return folder / f"{name}.{fmt}"


def entry_path(folder: Path, name: str) -> Path:
    return folder / f"{name}.json"


def write(folder: Path, name: str, fmt: str, shard: Shard, entry: dict) -> dict:
    """Write the shard, then its entry (with the checksums added); return the entry."""
    path = shard_path(folder, name, fmt)
    keys = None if shard.keys is None else [str(k) for k in shard.keys]
    if fmt == "parquet":
        _write_parquet(path, shard, keys)
    else:
        write_output(path, [(shard.ids, shard.vectors, shard.truncated)], len(shard.ids), shard.vectors.shape[1],
                     {"partition": name, "source": entry["source"]}, keys=keys)
    entry = {**entry, "shard": path.name, "rows": len(shard.ids), "ids_sha256": sha256(shard.ids),
             "vectors_sha256": sha256(shard.vectors)}
    with atomic_output(entry_path(folder, name), "w") as fh:
        json.dump(entry, fh, indent=1)
    return entry


def _write_parquet(path: Path, shard: Shard, keys) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    dim = shard.vectors.shape[1]
    columns = {"row": pa.array(shard.ids, pa.int64())}
    if keys is not None:
        columns["id"] = pa.array(keys, pa.string())
    columns["truncated"] = pa.array(shard.truncated, pa.int32())
    columns["vector"] = pa.FixedSizeListArray.from_arrays(pa.array(shard.vectors.reshape(-1), pa.float32()), dim)
    with atomic_path(path) as tmp:
        pq.write_table(pa.table(columns), tmp)


def read(path: Path) -> Shard:
    """A shard file's arrays; CorruptShardError when it cannot be read."""
    try:
        return _read_parquet(path) if path.suffix == ".parquet" else _read_h5(path)
    except (OSError, ValueError, KeyError) as exc:
        raise CorruptShardError(f"{path}: unreadable ({exc})") from None


def _read_parquet(path: Path) -> Shard:
    import pyarrow
    import pyarrow.parquet as pq
    try:
        table = pq.read_table(path)
    except pyarrow.ArrowException as exc:
        raise ValueError(str(exc)) from None
    vector = table.column("vector").combine_chunks()
    vectors = vector.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    keys = table.column("id").to_pylist() if "id" in table.column_names else None
    return Shard(table.column("row").to_numpy().astype(np.int64), keys,
                 table.column("truncated").to_numpy().astype(np.int32),
                 vectors.reshape(len(table), vector.type.list_size))


def _read_h5(path: Path) -> Shard:
    with h5py.File(path, "r") as f:
        keys = [k.decode() for k in f["keys"][:]] if "keys" in f else None
        return Shard(f["ids"][:], keys, f["truncated"][:], f["vectors"][:])


def verified(folder: Path, entry: dict) -> Shard:
    """The shard of a manifest entry, checked against the entry's row count and checksums."""
    path = folder / entry["shard"]
    shard = read(path)
    if len(shard.ids) != entry["rows"] or sha256(shard.ids) != entry["ids_sha256"]:
        raise CorruptShardError(f"{path}: its rows do not match {entry['partition']}.json")
    if sha256(shard.vectors) != entry["vectors_sha256"]:
        raise CorruptShardError(f"{path}: its vectors do not match the SHA-256 in {entry['partition']}.json")
    return shard


def finished(folder: Path, name: str, job_sha256: str) -> tuple[dict | None, str | None]:
    """(entry, None) when partition `name` is done for this job; else (None, why not), the
    reason None when it was simply never written."""
    path = entry_path(folder, name)
    try:
        entry = json.loads(path.read_text())
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError) as exc:
        return None, f"{path.name} unreadable ({exc})"
    if not isinstance(entry, dict) or entry.get("job_sha256") != job_sha256:
        return None, f"{path.name} belongs to another job"
    try:
        verified(folder, entry)
    except (CorruptShardError, KeyError) as exc:
        return None, str(exc)
    return entry, None


class Embeddings:
    """All the vectors of a finished distributed job, in input order: the files in the
    order given, each file's rows in file order. Shards are read (and checked against
    their SHA-256) when first needed."""

    def __init__(self, folder: Path, manifest: dict):
        self.folder = folder
        self.job = manifest["job"]
        self.entries = manifest["partitions"]
        self.dim = manifest["dim"]
        self._all = None

    def __len__(self) -> int:
        return sum(e["rows"] for e in self.entries)

    def shards(self):
        """(source file, Shard) per partition, in order."""
        for entry in self.entries:
            yield entry["source"], verified(self.folder, entry)

    def _load(self):
        if self._all is None:
            parts = list(self.shards())
            self._all = (
                [source for source, s in parts for _ in range(len(s.ids))],
                np.concatenate([s.ids for _, s in parts]) if parts else np.empty(0, np.int64),
                None if self.job["id_field"] is None else [k for _, s in parts for k in s.keys],
                np.concatenate([s.truncated for _, s in parts]) if parts else np.empty(0, np.int32),
                np.concatenate([s.vectors for _, s in parts]) if parts else np.empty((0, self.dim), np.float32))
        return self._all

    @property
    def sources(self) -> list[str]:
        """The input file of each row."""
        return self._load()[0]

    @property
    def ids(self) -> np.ndarray:
        """Each row's line (row) in its file, numbered as `albert-ref embed` numbers them."""
        return self._load()[1]

    @property
    def keys(self) -> list[str] | None:
        """Each row's --id-field value (as text), or None without --id-field."""
        return self._load()[2]

    @property
    def truncated(self) -> np.ndarray:
        return self._load()[3]

    @property
    def vectors(self) -> np.ndarray:
        """float32 [rows, dim]."""
        return self._load()[4]


def open_embeddings(folder) -> Embeddings:
    """The output folder of a finished `albert-ref embed --cluster` job (or embed_corpus)."""
    folder = Path(folder)
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{folder}: no {MANIFEST}: not the output of a finished distributed embedding job "
                         f"(rerun the command that made it to finish it)") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: unreadable ({exc})") from None
    return Embeddings(folder, manifest)
