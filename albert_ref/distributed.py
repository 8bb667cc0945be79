"""Corpus embedding on a Dask cluster: the vectors of `albert-ref embed`, bit for bit,
every row written exactly once, on as many machines as the cluster has.

    from albert_ref.distributed import embed_corpus, open_embeddings
    summary = embed_corpus("corpus/*.jsonl", "out/", model="albert.h5", pooling="mean")
    emb = open_embeddings("out/")        # emb.vectors, emb.ids, emb.sources, emb.keys

How it runs (dask.distributed does the scheduling, retries and transport):

- The inputs are cut into partitions (albert_ref.corpus): a file and a line or row range.
  A task carries one partition and the job's options, never texts or weights.
- ModelPlugin, a worker plugin, loads the model once per worker, from a path every worker
  can read, and refuses to run unless the file's digest equals the one the client read:
  two machines holding different files must not mix their vectors.
- One computation at a time per worker: the plugin's lock serialises a worker's tasks
  whatever its --nthreads (two at once would only share the cores and hold two
  partitions' activations), and the kernels use the worker's
  NUMBA_NUM_THREADS (set before Numba is imported: the local cluster passes it in each
  worker process's environment). The bit contract makes a text's vector independent of
  the threads, the batch and the partition it was computed in.
- Each task writes its shard and manifest entry (albert_ref.shards) under temporary names
  renamed into place. A task Dask reruns after its worker died writes the same bytes
  again, so the rename makes a duplicate harmless; a rerun of the whole job skips every
  partition whose entry and checksums are right, and refuses a changed input, model or
  option. A bad row fails its own partition only; the summary lists the failures.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import sys
import threading
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from albert_ref import corpus, shards
from albert_ref.atomic import atomic_output, check_output_path, exclusive_folder
from albert_ref.encoder import (_check_count, max_seq_length as checked_max_seq_length, output_dim, resolve_normalize,
                                resolve_pooling)
from albert_ref.errors import AlbertRefError, InputError
from albert_ref.job_record import stored_job, write_job
from albert_ref.ops import CONTRACT_BACKENDS

try:
    from distributed import Client, KilledWorker, LocalCluster, WorkerPlugin, as_completed, get_worker
except ImportError as exc:  # the optional `dask` extra
    raise ImportError("albert_ref.distributed needs Dask: pip install 'albert-ref[dask]'") from exc

PARTITION_SIZE = 10_000
JOB_FILE = "job.json"
JOB_FORMAT = "albert-ref distributed embedding"
JOB_VERSION = 1


class WorkerSetupError(AlbertRefError):
    """A worker cannot take part: it cannot load the model, or its file differs from the client's."""


def plugin_name(digest: str) -> str:
    """One plugin per model: jobs on different models can share a cluster."""
    return f"albert-ref-model-{digest[:16]}"


class ModelPlugin(WorkerPlugin):
    """Loads the model on each worker (also on workers that join later, or that Dask's
    nanny restarts) and checks its digest against the client's."""

    def __init__(self, path: str, digest: str, backend: str = "cpu", threads: int | None = None):
        self.path, self.digest, self.backend, self.threads = path, digest, backend, threads
        self.name = plugin_name(digest)
        self.encoder = None
        self.error = None

    def setup(self, worker):
        from albert_ref.encoder import Encoder
        self.lock = threading.Lock()
        try:
            encoder = Encoder(self.path, backend=self.backend, threads=self.threads)
        except (AlbertRefError, OSError, ValueError) as exc:
            self.error = WorkerSetupError(f"worker {worker.address}: cannot load {self.path}: {exc}")
        else:
            if encoder.model.digest != self.digest:
                self.error = WorkerSetupError(
                    f"worker {worker.address}: {self.path} has digest {encoder.model.digest[:16]}..., but the "
                    f"client's file has {self.digest[:16]}...: every worker must hold the same model file")
            self.encoder = encoder if self.error is None else None
        if self.error is not None:
            raise self.error


@dataclass(frozen=True)
class TaskOptions:
    """What a task needs besides its partition: small, sent with every task."""

    folder: str
    job_sha256: str
    model_sha256: str
    shard_format: str
    fields: list | None
    pair: bool
    id_field: str | None
    pooling: str
    normalize: bool
    batch_size: int
    max_seq_length: int


def run_partition(part: corpus.Partition, opts: TaskOptions) -> dict:
    """A task: embed one partition into its shard, unless it is done already. Returns
    {"status": "done" | "computed", "why": reason it was recomputed or None, "entry": ...}."""
    folder = Path(opts.folder)
    entry, why = shards.finished(folder, part.name, opts.job_sha256)
    if entry is not None:
        return {"status": "done", "why": None, "entry": entry}
    plugin = get_worker().plugins.get(plugin_name(opts.model_sha256))
    if plugin is None or plugin.encoder is None:
        raise getattr(plugin, "error", None) or WorkerSetupError("this worker has no albert-ref model plugin")
    inputs = corpus.read(part, opts.fields, opts.pair, opts.id_field)
    with plugin.lock:
        vectors, truncated = plugin.encoder.encode_counted(
            inputs.texts, pooling=opts.pooling, normalize=opts.normalize, batch_size=opts.batch_size,
            max_seq_length=opts.max_seq_length)
    entry = {"partition": part.name, "source": part.source, "format": part.fmt, "start": part.start,
             "stop": part.stop, "blank_lines": inputs.skipped, "truncated_rows": int((truncated > 0).sum()),
             "truncated_pieces": int(truncated.sum()), "model_sha256": opts.model_sha256,
             "job_sha256": opts.job_sha256}
    shard = shards.Shard(inputs.ids, inputs.keys, truncated, vectors)
    return {"status": "computed", "why": why, "entry": shards.write(folder, part.name, opts.shard_format, shard, entry)}


@dataclass
class Summary:
    """What a job did. ok is False when some partition failed: `failed` says why, by
    partition, and manifest.json is not written until a rerun completes them."""

    output: Path
    partitions: int
    rows: int = 0
    dim: int = 0
    computed: int = 0
    done_before: int = 0
    recomputed: dict = field(default_factory=dict)   # partition -> why its old shard was not kept
    failed: dict = field(default_factory=dict)       # partition -> error
    blank_lines: int = 0
    truncated_rows: int = 0
    truncated_pieces: int = 0

    @property
    def ok(self) -> bool:
        return not self.failed

    def report(self) -> str:
        lines = [f"{self.output}: {self.rows} vectors of {self.dim} float32 in "
                 f"{self.partitions - len(self.failed)} of {self.partitions} partitions "
                 f"({self.computed} computed, {self.done_before} already done)"]
        lines += [f"  recomputed {name}: {why}" for name, why in self.recomputed.items()]
        if self.blank_lines:
            lines.append(f"  skipped {self.blank_lines} blank line(s)")
        if self.truncated_rows:
            lines.append(f"  {self.truncated_rows} texts were truncated ({self.truncated_pieces} word pieces dropped)")
        if self.failed:
            lines.append(f"  {len(self.failed)} partition(s) FAILED; fix them and rerun the same command to finish:")
            lines += [f"  {name}: {error}" for name, error in self.failed.items()]
        return "\n".join(lines)


def embed_corpus(inputs, output_dir, model=None, *, client=None, workers: int | None = None,
                 threads: int | None = None, pooling: str | None = None, normalize: bool | None = None,
                 fields: list[str] | None = None, id_field: str | None = None, pair: bool = False,
                 input_format: str | None = None, max_seq_length: int | None = None, batch_size: int = 32,
                 partition_size: int = PARTITION_SIZE, shard_format: str = "parquet", backend: str = "cpu",
                 restart: bool = False, progress: bool | None = None) -> Summary:
    """Embed the files `inputs` (paths or glob patterns) into the folder `output_dir`, one
    shard per partition, on the Dask cluster of `client` (default: a LocalCluster of
    `workers` single-task worker processes, `threads` kernel threads each, sized to this
    machine). Options mean what they mean to `albert-ref embed`; `model` defaults to the
    bundled demo model; pooling, normalize and max_seq_length default to the model's
    sentence-embedding pipeline, as they do for `embed`. A rerun resumes; restart=True
    discards the folder's earlier job.
    Returns a Summary; failed partitions are listed there, not raised."""
    if pooling is not None:
        resolve_pooling(None, pooling)  # checked before anything is read
    if shard_format not in shards.SHARD_FORMATS:
        raise InputError(f"shard format must be one of {', '.join(shards.SHARD_FORMATS)}, not {shard_format!r}")
    if backend not in CONTRACT_BACKENDS:
        raise InputError(f"a distributed job runs on a backend with the bit contract ({', '.join(CONTRACT_BACKENDS)}), "
                         f"not {backend!r}: the others' vectors depend on how texts are batched")
    _check_count("batch_size", batch_size)
    if fields is not None:
        fields = list(fields)
    from albert_ref.weights import DEMO_MODEL
    from albert_ref.weights.model_file import read_header
    model = os.path.abspath(DEMO_MODEL if model is None else model)
    model_file = read_header(model)   # no tensor is read here: the workers load and verify them
    modes = resolve_pooling(model_file.pipeline, pooling)
    pooling, normalize = ",".join(modes), resolve_normalize(model_file.pipeline, normalize)
    max_len = checked_max_seq_length(model_file.config, max_seq_length, model_file.pipeline)
    dim = output_dim(model_file.config, model_file.pipeline, modes)
    files = corpus.expand(inputs, input_format)
    corpus.check_options(files, fields, pair, id_field)
    files, parts = corpus.partitions(files, partition_size)
    job = {"model_sha256": model_file.digest, "backend": backend, "pooling": pooling, "normalize": normalize,
           "max_seq_length": max_len, "fields": fields, "id_field": id_field, "pair": pair,
           "partition_size": partition_size, "shard_format": shard_format,
           "inputs": [asdict(f) for f in files], "partitions": len(parts)}
    job_sha256 = hashlib.sha256(json.dumps(job, sort_keys=True).encode()).hexdigest()
    folder = Path(output_dir)
    opts = TaskOptions(str(folder.resolve()), job_sha256, model_file.digest, shard_format, fields, pair, id_field,
                       pooling, normalize, batch_size, max_len)
    summary = Summary(folder, len(parts), dim=dim)
    with _claimed(folder, job, restart), _client(client, workers, threads) as client:
        client.register_plugin(ModelPlugin(model, job["model_sha256"], backend, threads))
        try:
            entries = _run(client, parts, opts, summary, progress)
        except KeyboardInterrupt:
            print(f"albert-ref: stopped; the finished partitions are kept in {folder}: run the same command again "
                  f"to resume", file=sys.stderr)
            raise
        if summary.ok:
            with atomic_output(folder / shards.MANIFEST, "w") as fh:
                json.dump({"format": JOB_FORMAT, "version": JOB_VERSION, "job": job, "dim": summary.dim,
                           "partitions": [entries[p.name] for p in parts]}, fh, indent=1)
    return summary


def _run(client, parts, opts: TaskOptions, summary: Summary, progress: bool | None) -> dict:
    """Run every partition's task, counting in `summary`; the manifest entries of the
    partitions that are done (checked by their tasks), by partition name."""
    from tqdm import tqdm
    entries = {}
    run = uuid.uuid4().hex[:8]   # fresh keys: a rerun on the same client must not get the old results back
    futures = {client.submit(run_partition, p, opts, key=f"albert-ref-{p.name}-{run}", pure=False): p for p in parts}
    show = sys.stderr.isatty() if progress is None else progress
    with tqdm(total=len(parts), unit="partition", file=sys.stderr, disable=not show, dynamic_ncols=True) as bar:
        for future in as_completed(futures):
            part = futures[future]
            try:
                result = future.result()
            except (AlbertRefError, OSError) as exc:
                summary.failed[part.name] = f"{part.describe()}: {exc}"
            except KilledWorker as exc:
                summary.failed[part.name] = f"{part.describe()}: the workers running it died too often ({exc})"
            else:
                entry = entries[part.name] = result["entry"]
                summary.rows += entry["rows"]
                summary.blank_lines += entry["blank_lines"]
                summary.truncated_rows += entry["truncated_rows"]
                summary.truncated_pieces += entry["truncated_pieces"]
                if result["status"] == "done":
                    summary.done_before += 1
                else:
                    summary.computed += 1
                    if result["why"]:
                        summary.recomputed[part.name] = result["why"]
            bar.update(1)
            bar.set_postfix(rows=summary.rows, failed=len(summary.failed), refresh=False)
            del futures[future]
    summary.failed = dict(sorted(summary.failed.items()))
    summary.recomputed = dict(sorted(summary.recomputed.items()))
    return entries


@contextlib.contextmanager
def _claimed(folder: Path, job: dict, restart: bool):
    """Hold `folder` for this job: one client at a time (a lock file), the job recorded in
    job.json, and a different job refused unless restart. Temporaries of killed runs go."""
    check_output_path(folder, directory=True)
    with exclusive_folder(folder, ".lock", f"cannot write {folder}",
                          f"{folder} is in use by another albert-ref embedding job"):
        _remove_temporaries(folder)
        if restart:
            for path in [*folder.glob("part-*"), folder / shards.MANIFEST, folder / JOB_FILE]:
                path.unlink(missing_ok=True)
        _claim(folder / JOB_FILE, job)
        try:
            yield
        finally:
            _remove_temporaries(folder)


def _remove_temporaries(folder: Path) -> None:
    """The half-written files of killed workers (or of a killed client's tasks, which would
    only have written again what is there)."""
    for stale in folder.glob(".*.tmp"):
        stale.unlink(missing_ok=True)


def _claim(path: Path, job: dict) -> None:
    if stored_job(path, job, path.parent, finished_too=True) is not None:
        return
    if any(path.parent.glob("part-*")):
        raise InputError(f"{path.parent} holds shards but no {JOB_FILE}; add --restart to discard them")
    write_job(path, JOB_FORMAT, JOB_VERSION, job)


@contextlib.contextmanager
def _client(client, workers: int | None, threads: int | None):
    if client is not None:
        if workers is not None:
            raise InputError("workers= sizes the local cluster; with a client, the cluster is already sized")
        yield client
        return
    with local_cluster(workers, threads) as cluster, Client(cluster) as own:
        yield own


def local_cluster(workers: int | None = None, threads: int | None = None, **kwargs) -> LocalCluster:
    """A LocalCluster of `workers` worker processes (default: one per core), each running
    one task at a time on `threads` kernel threads (default: its share of the cores);
    NUMBA_NUM_THREADS reaches each worker process before Numba is imported there. Prints
    the dashboard address."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    workers = cores if workers is None else workers
    _check_count("workers", workers)
    threads = max(1, cores // workers) if threads is None else threads
    _check_count("threads", threads)
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                           env={"NUMBA_NUM_THREADS": str(threads)}, silence_logs=logging.ERROR, **kwargs)
    if kwargs.get("dashboard_address", ":8787") is None:
        dashboard = "dashboard off"
    elif importlib.util.find_spec("bokeh") is None:
        dashboard = "dashboard off (it needs bokeh: pip install bokeh)"
    else:
        dashboard = f"dashboard {cluster.dashboard_link}"
    print(f"albert-ref: started a local Dask cluster: {workers} worker process(es), one task at a time, "
          f"{threads} kernel thread(s) each; {dashboard}", file=sys.stderr)
    return cluster


open_embeddings = shards.open_embeddings
