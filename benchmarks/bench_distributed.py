"""Rows/s of `albert-ref embed --cluster` (a LocalCluster of single-threaded workers)
against the single-process `albert-ref embed` at the same total threads, on the sentences
of benchmarks/bench_embed.py (its text generator and tokenizer, mean pooling), and the
per-task overhead of the distributed path.

1. Throughput: each command runs end to end in its own process, as a user runs it
   (process start, model load, cluster start, the job, the output), on --shape weights:
   `embed --threads T` against `embed --cluster --workers T --threads 1`, for T = 1, 2;
   the runs alternate, --repeat times, and the medians are printed with their ratio. The
   vectors of the two paths are checked to be the same bits.
2. Per-task overhead: on the demo shape (where the model costs least), one worker embeds
   the same --overhead-rows texts as 1 partition and as --overhead-parts partitions,
   through one client (no cluster start in the timing); (many - one) / (parts - 1) is what
   one more task costs: scheduling, reading its lines, writing its shard and entry,
   checking a done partition's checksum on the way.

    python benchmarks/bench_distributed.py                  # the recorded run (a few minutes on 2 cores)
    python benchmarks/bench_distributed.py --n 16 --shape demo --repeat 1   # a quick check
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_embed import POOL, SHAPES, model_file, sentences, train_tokenizer  # noqa: E402

from albert_ref.weights.model_file import write_model  # noqa: E402


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "albert_ref.cli", *command], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"failed: {' '.join(command)}\n{done.stderr}")
    return seconds


def throughput(args, model: Path, corpus: Path, tmp: Path) -> None:
    from albert_ref.distributed import open_embeddings
    common = ["--model", str(model), "--input", str(corpus), "--pooling", "mean",
              "--batch-size", str(args.batch_size)]
    print("\n| cores | single-process embed rows/s | --cluster rows/s | cluster / single | runs |\n|---:|---:|---:|---:|---:|")
    for threads in (1, 2):
        single, cluster = [], []
        for k in range(args.repeat):
            single_out, cluster_out = tmp / f"single-{threads}-{k}.npy", tmp / f"cluster-{threads}-{k}"
            single.append(timed(["embed", *common, "--threads", str(threads), "--output", str(single_out)]))
            cluster.append(timed(["embed", *common, "--cluster", "--workers", str(threads), "--threads", "1",
                                  "--partition-size", str(args.partition_size), "--output", str(cluster_out)]))
            if not np.array_equal(np.load(single_out).view(np.uint32),
                                  open_embeddings(cluster_out).vectors.view(np.uint32)):
                sys.exit("the cluster's vectors differ from the single process's")
        s, c = args.n / statistics.median(single), args.n / statistics.median(cluster)
        print(f"| {threads} | {s:.2f} | {c:.2f} | {c / s:.3f} | {args.repeat} |")
    print("(end to end; the vectors of both paths are the same bits)")


def overhead(args, corpus: Path, tmp: Path) -> None:
    from distributed import Client

    from albert_ref.distributed import embed_corpus, local_cluster
    size_many = -(-args.overhead_rows // args.overhead_parts)
    times = {1: [], args.overhead_parts: []}
    with local_cluster(1, 1, dashboard_address=":0") as cluster, Client(cluster) as client:
        embed_corpus(corpus, tmp / "warm", client=client, pooling="mean")
        for k in range(args.repeat):
            for parts, size in ((1, args.overhead_rows), (args.overhead_parts, size_many)):
                start = time.perf_counter()
                summary = embed_corpus(corpus, tmp / f"over-{parts}-{k}", client=client, pooling="mean",
                                       partition_size=size, batch_size=args.batch_size)
                times[parts].append(time.perf_counter() - start)
                assert summary.ok and summary.partitions == parts
    one, many = statistics.median(times[1]), statistics.median(times[args.overhead_parts])
    print(f"\nper-task overhead (demo shape, 1 worker, {args.overhead_rows} texts): 1 partition {one:.2f} s, "
          f"{args.overhead_parts} partitions {many:.2f} s (medians of {args.repeat}): "
          f"{(many - one) / (args.overhead_parts - 1) * 1000:.1f} ms per extra task")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=64, help=f"sentences for the throughput runs, at most {POOL}")
    parser.add_argument("--shape", choices=SHAPES, default="xlarge")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--partition-size", type=int, default=8, help="lines per partition of the --cluster runs")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--overhead-rows", type=int, default=256)
    parser.add_argument("--overhead-parts", type=int, default=64)
    args = parser.parse_args()
    pool = sentences()
    spm_model = train_tokenizer(pool)
    print(f"{platform.machine()}, {os.cpu_count()} cores; {args.shape} shape; {args.n} sentences of bench_embed; "
          f"partitions of {args.partition_size} lines; batch {args.batch_size}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = tmp / f"{args.shape}.h5"
        write_model(model, model_file(args.shape, spm_model))
        corpus = tmp / "corpus.txt"
        corpus.write_text("\n".join(pool[:args.n]) + "\n", encoding="utf-8")
        throughput(args, model, corpus, tmp)
        small = tmp / "small.txt"
        small.write_text("\n".join(pool[:args.overhead_rows]) + "\n", encoding="utf-8")
        overhead(args, small, tmp)


if __name__ == "__main__":
    main()
