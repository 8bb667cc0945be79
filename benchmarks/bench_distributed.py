"""Rows/s of `albert-ref embed --cluster` (a LocalCluster of single-threaded workers)
against the single-process `albert-ref embed` at the same total threads, on the sentences
of benchmarks/bench_embed.py (its text generator and tokenizer, mean pooling), and the
per-task overhead of the distributed path.

1. Throughput: each command runs end to end in its own process, as a user runs it
   (process start, model load, cluster start, the job, the output), on --shape weights
   (random; base: ALBERT base v2's shape, as benchmarks/bench_forward.py --model base):
   `embed --threads T` against `embed --cluster --workers T --threads 1`, for T = 1, 2,
   on --n texts and on 1 text; the runs alternate, --repeat times. Printed: medians of
   the end-to-end rows/s, of the fixed cost (the 1-text run: start, model loads, cluster),
   and of the marginal rate (n - 1) / (t(n) - t(1)), the rate a long job approaches. The
   vectors of the two paths are checked to be the same bits.
2. Per-task overhead: on the demo shape (where the model costs least), one worker embeds
   the same --overhead-rows texts as 1 partition and as --overhead-parts partitions,
   through one client (no cluster start in the timing); (many - one) / (parts - 1) is what
   one more task costs: scheduling, reading its lines, writing its shard and entry,
   checking first that it has no finished shard.

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
from bench_serve import write_bench_model  # noqa: E402

from albert_ref.encoder import batches  # noqa: E402
from albert_ref.tokenizer import Tokenizer  # noqa: E402
from albert_ref.weights.model_file import write_model  # noqa: E402


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "albert_ref.cli", *command], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"failed: {' '.join(command)}\n{done.stderr}")
    return seconds


def throughput(args, model: Path, corpus: Path, one: Path, tmp: Path) -> None:
    from albert_ref.distributed import open_embeddings
    common = ["--model", str(model), "--pooling", "mean", "--batch-size", str(args.batch_size)]
    rows = []
    for threads in (1, 2):
        paths = {"single": ["--threads", str(threads)],
                 "cluster": ["--cluster", "--workers", str(threads), "--threads", "1",
                             "--partition-size", str(args.partition_size)]}
        times = {(path, n): [] for path in paths for n in (args.n, 1)}
        for k in range(args.repeat):
            for (path, n), runs in times.items():
                out = tmp / f"{path}-{threads}-{n}-{k}{'.npy' if path == 'single' else ''}"
                runs.append(timed(["embed", *common, *paths[path], "--input", str(corpus if n > 1 else one),
                                   "--output", str(out)]))
            if not np.array_equal(np.load(tmp / f"single-{threads}-{args.n}-{k}.npy").view(np.uint32),
                                  open_embeddings(tmp / f"cluster-{threads}-{args.n}-{k}").vectors.view(np.uint32)):
                sys.exit("the cluster's vectors differ from the single process's")
        t = {key: statistics.median(runs) for key, runs in times.items()}
        for path in paths:
            marginal = (args.n - 1) / (t[path, args.n] - t[path, 1])
            rows.append((threads, path, args.n / t[path, args.n], t[path, 1], marginal))
    print("\n| cores | path | end-to-end rows/s | fixed cost s | marginal rows/s |\n|---:|---|---:|---:|---:|")
    for threads, path, rate, fixed, marginal in rows:
        print(f"| {threads} | {path} | {rate:.2f} | {fixed:.2f} | {marginal:.2f} |")
    for threads in (1, 2):
        (_, _, s, _, sm), (_, _, c, _, cm) = [r for r in rows if r[0] == threads]
        print(f"{threads} core(s): cluster / single end to end {c / s:.3f}, marginal {cm / sm:.3f}")
    print(f"(medians of {args.repeat}; the vectors of both paths are the same bits)")


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


def padded_rows(lengths, batch_size: int) -> int:
    return sum(len(rows) * width for rows, width in batches(lengths, batch_size))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=256, help=f"sentences for the throughput runs, at most {POOL}")
    parser.add_argument("--shape", choices=[*SHAPES, "base"], default="base")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--partition-size", type=int, default=64, help="lines per partition of the --cluster runs")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--overhead-rows", type=int, default=256)
    parser.add_argument("--overhead-parts", type=int, default=64)
    args = parser.parse_args()
    pool = sentences()
    spm_model = train_tokenizer(pool)
    print(f"{platform.machine()}, {os.cpu_count()} cores; {args.shape} shape; {args.n} sentences of bench_embed; "
          f"partitions of {args.partition_size} lines; batch {args.batch_size}")
    # a partition is length-sorted and batched on its own: what that costs in padded token rows
    lengths = Tokenizer(spm_model).encode_batch(pool[:args.n], max_seq_length=512).lengths
    whole = padded_rows(lengths, args.batch_size)
    parted = sum(padded_rows(lengths[a:a + args.partition_size], args.batch_size)
                 for a in range(0, args.n, args.partition_size))
    print(f"token rows the forward passes run: {whole} in one process, {parted} in partitions "
          f"({parted / whole - 1:+.1%}); {sum(lengths)} real tokens")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = tmp / f"{args.shape}.h5"
        if args.shape == "base":
            write_bench_model(model, "base", spm_model)
        else:
            write_model(model, model_file(args.shape, spm_model))
        corpus, one = tmp / "corpus.txt", tmp / "one.txt"
        corpus.write_text("\n".join(pool[:args.n]) + "\n", encoding="utf-8")
        one.write_text(pool[0] + "\n", encoding="utf-8")
        throughput(args, model, corpus, one, tmp)
        small = tmp / "small.txt"
        small.write_text("\n".join(pool[:args.overhead_rows]) + "\n", encoding="utf-8")
        overhead(args, small, tmp)


if __name__ == "__main__":
    main()
