"""`albert-ref embed --cluster`: the embed command's options for a Dask cluster.

Kept apart from albert_ref.distributed so that the command line does not import Dask
(an optional extra) unless --cluster is given.
"""
from __future__ import annotations

import sys

from albert_ref.errors import AlbertRefError, InputError

CLUSTER_ONLY = ("workers", "partition_size", "shard_format")

HELP = """\
cluster (--cluster): --input is a file or a glob pattern ('corpus/*.jsonl'; also .parquet),
  --output a folder: one shard per partition (--partition-size lines of a .txt/.jsonl
  file or rows of a Parquet file; a .csv/.tsv file is one partition), a manifest entry
  per shard, manifest.json at the end; read it with albert_ref.distributed.open_embeddings.
  Rerunning the same command resumes. Without ADDRESS a local cluster is started.
  albert-ref embed -m m.h5 --input 'corpus/*.jsonl' --output out/ --cluster --workers 4
  albert-ref embed -m m.h5 --input 'corpus/*.jsonl' --output out/ --cluster tcp://scheduler:8786
"""


def add_cluster_options(p) -> None:
    p.add_argument("--cluster", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run on a Dask cluster: the scheduler at ADDRESS, or without ADDRESS a local cluster "
                        "(needs the dask extra; --input FILE|GLOB, --output FOLDER)")
    p.add_argument("--workers", type=int, default=None,
                   help="--cluster without ADDRESS: worker processes (default: one per core)")
    p.add_argument("--partition-size", type=int, default=None,
                   help="--cluster: lines (Parquet rows) per partition, the unit of work and of resumption "
                        "(default 10000)")
    p.add_argument("--shard-format", choices=("parquet", "h5"), default=None,
                   help="--cluster: the format of each partition's shard (default parquet)")


def reject_cluster_options(args) -> None:
    """Without --cluster, the options that only it takes are an error, not ignored."""
    given = [f"--{name.replace('_', '-')}" for name in CLUSTER_ONLY if getattr(args, name) is not None]
    if given:
        raise InputError(f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} with --cluster only")


def run_cluster(args, model, texts) -> None:
    """`embed --cluster`: exits non-zero (AlbertRefError) when some partition failed."""
    if texts or args.input is None:
        raise InputError("--cluster embeds files: give --input FILE|GLOB, not TEXT arguments")
    if args.output is None:
        raise InputError("--cluster needs --output FOLDER (one shard per partition)")
    try:
        from albert_ref import distributed
    except ImportError as exc:
        raise InputError(f"--cluster: {exc}") from None
    from distributed import Client
    options = dict(model=model, pooling=args.pooling, normalize=args.normalize, fields=args.field,
                   id_field=args.id_field, pair=args.pair, input_format=args.input_format,
                   max_seq_length=args.max_seq_length, batch_size=args.batch_size, backend=args.backend,
                   threads=args.threads, partition_size=args.partition_size or distributed.PARTITION_SIZE,
                   shard_format=args.shard_format or "parquet", restart=args.restart)
    if args.cluster:
        if args.workers is not None:
            raise InputError("--workers sizes a local cluster; an existing cluster (--cluster ADDRESS) is sized "
                             "where its workers are started")
        try:
            client = Client(args.cluster, timeout="30s")
        except OSError as exc:
            raise InputError(f"--cluster {args.cluster}: cannot reach the scheduler ({exc})") from None
        with client:
            print(f"albert-ref: connected to {args.cluster}: {len(client.scheduler_info()['workers'])} worker(s); "
                  f"dashboard {client.dashboard_link}", file=sys.stderr)
            summary = distributed.embed_corpus(args.input, args.output, client=client, **options)
    else:
        summary = distributed.embed_corpus(args.input, args.output, workers=args.workers, **options)
    print(summary.report())
    if not summary.ok:
        raise AlbertRefError(f"{len(summary.failed)} of {summary.partitions} partitions failed (listed above)")
