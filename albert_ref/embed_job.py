"""Resumable embedding jobs for `albert-ref embed --output FILE`.

The rows are cut into fixed chunks. Each finished chunk is saved atomically in
FILE.partial/ beside a manifest naming the job (model digest, inputs digest, options), and
FILE is assembled atomically only once every chunk is there, after which the folder goes.
A Ctrl-C or a kill therefore loses at most the chunk being computed and never leaves a
corrupt FILE; running the same command again finds the finished chunks and goes on, and
since a chunk's rows are computed the same way whenever it runs, the result is bit for bit
that of an uninterrupted run.

Each chunk's SHA-256 is recorded in a small file of its own beside it, written before the
chunk itself (one file per chunk, so saving a chunk costs the same however many are done). A
chunk is used only if its bytes match that digest and it holds exactly its rows' ids, finite
float32 vectors of the model's width and their truncation counts; any other chunk
(truncated, flipped, a copy of another, re-saved, NaN, a directory...) is recomputed, and
the user is told.
"""
from __future__ import annotations

import contextlib
import glob
import hashlib
import io
import json
import shutil
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from albert_ref.atomic import atomic_output, exclusive_folder
from albert_ref.embed_inputs import Inputs
from albert_ref.embed_outputs import write_output
from albert_ref.encoder import Encoder
from albert_ref.errors import InputError
from albert_ref.job_record import stored_job, write_job

MANIFEST_FORMAT = "albert-ref embed job"
MANIFEST_VERSION = 3  # 2: chunk digests in the manifest; 3: beside each chunk


@dataclass(frozen=True)
class Settings:
    pooling: str
    normalize: bool
    batch_size: int
    max_seq_length: int
    chunk_rows: int


def progress_bar(total: int, initial: int = 0):
    """texts/s and ETA on stderr when it is a terminal; nothing otherwise."""
    from tqdm import tqdm   # here: importing it costs every command ~20 ms
    return tqdm(total=total, initial=initial, unit="text", file=sys.stderr, disable=not sys.stderr.isatty(),
                dynamic_ncols=True)


def job_description(encoder: Encoder, inputs: Inputs, settings: Settings, output: Path) -> dict:
    """Everything that decides the output's bits. Batch size does not on the kernel backends
    (the bit contract), so it is left out there, and a resumed run may change it."""
    rows = [inputs.ids.tolist(), inputs.texts] + ([] if inputs.keys is None else [inputs.keys])
    digest = hashlib.sha256(json.dumps(rows, ensure_ascii=False).encode())
    model = encoder.model
    job = {"output": output.name, "rows": len(inputs.texts), "inputs_sha256": digest.hexdigest(),
           "model_sha256": model.digest, "backend": model.backend, "dtype": str(model.dtype),
           "pooling": settings.pooling, "normalize": settings.normalize,
           "max_seq_length": settings.max_seq_length, "chunk_rows": settings.chunk_rows}
    if model.backend == "numpy":
        job["batch_size"] = settings.batch_size
    return job


class BadChunk(Exception):
    """A saved chunk that cannot be used; the message says why. Never escapes run_job."""


class Job:
    """One output file's chunks and manifest in FILE.partial/."""

    def __init__(self, output: Path, description: dict, ids: np.ndarray, dim: int):
        self.output = output
        self.folder = output.with_name(output.name + ".partial")
        self.manifest = self.folder / "manifest.json"
        self.description = description
        self.ids = ids
        self.dim = dim
        self.rows = description["rows"]
        self.chunk_rows = description["chunk_rows"]
        self.chunks = -(-self.rows // self.chunk_rows)

    def chunk_path(self, k: int) -> Path:
        return self.folder / f"chunk-{k:06d}.npz"

    def digest_path(self, k: int) -> Path:
        return self.folder / f"chunk-{k:06d}.sha256"

    def rows_of(self, k: int) -> slice:
        return slice(k * self.chunk_rows, min((k + 1) * self.chunk_rows, self.rows))

    def size(self, k: int) -> int:
        rows = self.rows_of(k)
        return rows.stop - rows.start

    @contextlib.contextmanager
    def locked(self, restart: bool):
        """Hold FILE.partial/ for this process: a second run of the same command is refused
        rather than let two writers interleave. Leftover temporaries of a killed run go."""
        with exclusive_folder(self.folder, "lock", f"cannot write beside {self.output}",
                              f"{self.folder} is in use by another albert-ref embed writing {self.output}"):
            leftovers = f".{glob.escape(self.output.name)}.*.tmp"  # atomic_path's temporaries of a killed run
            for stale in [*self.folder.glob(".*.tmp"), *self.output.parent.glob(leftovers)]:
                _remove(stale)
            if restart:
                for path in self.folder.iterdir():
                    if path.name != "lock":
                        _remove(path)
            self._claim()
            yield

    def _claim(self) -> None:
        found = stored_job(self.manifest, self.description, self.folder)
        if found is not None and found.get("version") == MANIFEST_VERSION:
            return
        if found is not None:
            print(f"albert-ref: {self.manifest} was written by an older albert-ref, which kept chunk digests "
                  f"elsewhere: its chunks are recomputed", file=sys.stderr)
            for chunk in self.folder.glob("chunk-*"):
                _remove(chunk)
        write_job(self.manifest, MANIFEST_FORMAT, MANIFEST_VERSION, self.description)

    def usable(self, k: int) -> bool:
        """Whether chunk k is saved and passes every check; one that exists but fails is
        removed, and the user told why, so that it is recomputed."""
        path = self.chunk_path(k)
        if not path.exists() and not path.is_symlink():
            return False
        try:
            self.load(k)
            return True
        except BadChunk as exc:
            print(f"albert-ref: {path.name} in {self.folder} cannot be used ({exc}): recomputing it", file=sys.stderr)
            _remove(path)
            _remove(self.digest_path(k))
            return False

    def load(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids, vectors, truncated) of chunk k, from bytes that match its recorded
        digest and hold what chunk k must hold; BadChunk otherwise."""
        path = self.chunk_path(k)
        if path.is_symlink() or not path.is_file():
            raise BadChunk("not a regular file")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise BadChunk(f"unreadable: {exc.strerror or exc}") from None
        try:
            expected = self.digest_path(k).read_text().strip()
        except (OSError, UnicodeDecodeError):
            raise BadChunk("no digest recorded for it") from None
        if hashlib.sha256(data).hexdigest() != expected:
            raise BadChunk("its SHA-256 differs from the recorded one")
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as part:
                if sorted(part.files) != ["ids", "truncated", "vectors"]:
                    raise BadChunk(f"it holds {', '.join(sorted(part.files))}")
                ids, vectors, truncated = part["ids"], part["vectors"], part["truncated"]
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise BadChunk(f"not a readable .npz: {exc}") from None
        rows, size = self.rows_of(k), self.size(k)
        if vectors.dtype != np.float32 or vectors.shape != (size, self.dim):
            raise BadChunk(f"vectors are {vectors.dtype} {vectors.shape}, not float32 {(size, self.dim)}")
        if not np.isfinite(vectors).all():
            raise BadChunk("vectors are not all finite")
        if ids.dtype != self.ids.dtype or not np.array_equal(ids, self.ids[rows]):
            raise BadChunk("its row ids are not this chunk's")
        if truncated.shape != (size,) or not np.issubdtype(truncated.dtype, np.integer) or (truncated < 0).any():
            raise BadChunk("its truncation counts are malformed")
        return ids, vectors, truncated

    def save(self, k: int, ids: np.ndarray, vectors: np.ndarray, truncated: np.ndarray) -> None:
        """The digest is written first: a kill between the two writes leaves a recorded
        chunk missing (recomputed), never an unrecorded one in place."""
        buffer = io.BytesIO()
        np.savez(buffer, ids=ids, vectors=vectors, truncated=truncated)
        data = buffer.getvalue()
        with atomic_output(self.digest_path(k), "w") as fh:
            fh.write(hashlib.sha256(data).hexdigest() + "\n")
        with atomic_output(self.chunk_path(k)) as fh:
            fh.write(data)

    def parts(self):
        """Each chunk's (ids, vectors, truncated), chunk by chunk in row order, checked
        again as they are read."""
        for k in range(self.chunks):
            try:
                yield self.load(k)
            except BadChunk as exc:
                raise InputError(f"{self.chunk_path(k)} changed while the job held it ({exc}); run the same "
                                 f"command again to recompute it") from None

    def discard(self) -> None:
        shutil.rmtree(self.folder)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def run_job(encoder: Encoder, inputs: Inputs, settings: Settings, output: Path, *, restart: bool = False,
            meta: dict | None = None) -> np.ndarray:
    """Embed `inputs` into `output`, resuming a previous run of the same job. Returns the
    word pieces dropped per row, for the truncation report."""
    job = Job(output, job_description(encoder, inputs, settings, output), inputs.ids,
              encoder.output_dim(settings.pooling))
    with job.locked(restart):
        todo = [k for k in range(job.chunks) if not job.usable(k)]
        finished = job.rows - sum(job.size(k) for k in todo)
        if finished:
            print(f"albert-ref: resuming {output}: {finished} of {job.rows} texts already embedded in {job.folder}",
                  file=sys.stderr)
        with progress_bar(job.rows, finished) as bar:
            try:
                for k in todo:
                    rows = job.rows_of(k)
                    vectors, truncated = encoder.encode_counted(
                        inputs.texts[rows], pooling=settings.pooling, normalize=settings.normalize,
                        batch_size=settings.batch_size, max_seq_length=settings.max_seq_length,
                        on_progress=bar.update)
                    job.save(k, inputs.ids[rows], vectors, truncated)
                    finished += len(vectors)
            except KeyboardInterrupt:
                bar.close()
                print(f"albert-ref: stopped after {finished} of {job.rows} texts; they are kept in {job.folder}: "
                      f"run the same command again to resume", file=sys.stderr)
                raise
        cut = []                                # the truncation counts, kept as the chunks stream past

        def parts():
            for ids, vectors, truncated in job.parts():
                cut.append(truncated)
                yield ids, vectors, truncated
        write_output(output, parts(), job.rows, job.dim,
                     {**job.description, **(meta or {})}, keys=inputs.keys)
        job.discard()
    return np.concatenate(cut)
