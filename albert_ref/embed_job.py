"""Resumable embedding jobs for `albert-ref embed --output FILE`.

The rows are cut into fixed chunks. Each finished chunk is saved atomically in
FILE.partial/ beside a manifest naming the job (model digest, inputs digest, options), and
FILE is assembled atomically only once every chunk is there, after which the folder goes.
A Ctrl-C or a kill therefore loses at most the chunk being computed and never leaves a
corrupt FILE; running the same command again finds the finished chunks and goes on, and
since a chunk's rows are computed the same way whenever it runs, the result is bit for bit
that of an uninterrupted run.
"""
from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from albert_ref.atomic import atomic_output, exclusive_folder
from albert_ref.embed_inputs import Inputs
from albert_ref.embed_outputs import write_output
from albert_ref.encoder import Encoder
from albert_ref.errors import InputError

MANIFEST_FORMAT = "albert-ref embed job"
MANIFEST_VERSION = 1


@dataclass(frozen=True)
class Settings:
    pooling: str
    normalize: bool
    batch_size: int
    max_seq_length: int
    chunk_rows: int


def progress_bar(total: int, initial: int = 0) -> tqdm:
    """texts/s and ETA on stderr when it is a terminal; nothing otherwise."""
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


class Job:
    """One output file's chunks and manifest in FILE.partial/."""

    def __init__(self, output: Path, description: dict):
        self.output = output
        self.folder = output.with_name(output.name + ".partial")
        self.description = description
        self.rows = description["rows"]
        self.chunk_rows = description["chunk_rows"]
        self.chunks = -(-self.rows // self.chunk_rows)

    def chunk_path(self, k: int) -> Path:
        return self.folder / f"chunk-{k:06d}.npz"

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
                stale.unlink()
            if restart:
                for path in self.folder.iterdir():
                    if path.name != "lock":
                        path.unlink()
            self._claim()
            yield

    def _claim(self) -> None:
        manifest = self.folder / "manifest.json"
        if manifest.exists():
            try:
                found = json.loads(manifest.read_text())
            except (OSError, ValueError) as exc:
                raise InputError(f"{manifest}: unreadable ({exc}); run with --restart to discard it") from None
            job = found.get("job") if isinstance(found, dict) else None
            if job != self.description:
                changed = sorted(k for k in self.description if (job or {}).get(k) != self.description[k])
                raise InputError(f"{self.folder} holds an unfinished job for a different command (it differs in: "
                                 f"{', '.join(changed)}); rerun that command to finish it, or add --restart "
                                 f"to discard it")
            return
        with atomic_output(manifest, "w") as fh:
            json.dump({"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "job": self.description}, fh,
                      indent=1)

    def done(self, k: int) -> bool:
        """Chunk files appear only whole (atomic rename); one that does not read back as
        the right shape is recomputed."""
        try:
            with np.load(self.chunk_path(k)) as part:
                return part["vectors"].shape[0] == part["ids"].shape[0] == self.size(k)
        except (OSError, ValueError, KeyError):
            return False

    def save(self, k: int, ids: np.ndarray, vectors: np.ndarray, truncated: np.ndarray) -> None:
        with atomic_output(self.chunk_path(k)) as fh:
            np.savez(fh, ids=ids, vectors=vectors, truncated=truncated)

    def parts(self, *keys: str):
        """Each chunk's arrays named by `keys`, chunk by chunk in row order."""
        for k in range(self.chunks):
            with np.load(self.chunk_path(k)) as part:
                yield tuple(part[key] for key in keys)

    def discard(self) -> None:
        shutil.rmtree(self.folder)


def run_job(encoder: Encoder, inputs: Inputs, settings: Settings, output: Path, *, restart: bool = False,
            meta: dict | None = None) -> np.ndarray:
    """Embed `inputs` into `output`, resuming a previous run of the same job. Returns the
    word pieces dropped per row, for the truncation report."""
    job = Job(output, job_description(encoder, inputs, settings, output))
    with job.locked(restart):
        todo = [k for k in range(job.chunks) if not job.done(k)]
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
            for ids, vectors, truncated in job.parts("ids", "vectors", "truncated"):
                cut.append(truncated)
                yield ids, vectors, truncated
        write_output(output, parts(), job.rows, encoder.dim, {**job.description, **(meta or {})}, keys=inputs.keys)
        job.discard()
    return np.concatenate(cut)
