"""`albert-ref serve` under load on loopback, against offline `embed` in the same run.

A base-shaped random-weight model (bench_forward's ALBERT base v2 shape: hidden 768,
12 layers, 12 heads, intermediate 3072, embedding 128; big enough that compute
dominates) with the tokenizer bench_embed trains, and bench_embed's sentences (the
first --n). Steps, each bounded:

1. offline, in a child process: Encoder.encode of all n texts (mean pooling, batch 32,
   length-sorted least-padding batches: what `albert-ref embed` does) -> texts/s; and the
   forward time of each of the first --solo texts alone (median of 3), the latency floor;
2. `albert-ref serve` in a child process; for each --clients count, that many concurrent
   clients (asyncio + httpx, one text per request, one request at a time each) for
   --seconds, then no new requests: throughput (texts answered / time until the last
   answer) and latency percentiles. The 1-client run cycles through the --solo texts and
   reports each request's latency minus its text's solo forward time: the server's cost.

Every vector the server returns is checked against the offline vector, bit for bit.

    python benchmarks/bench_serve.py                          # the recorded run
    python benchmarks/bench_serve.py --shape demo --seconds 3  # a quick check
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_embed import sentences, train_tokenizer  # noqa: E402
from bench_forward import BASE  # noqa: E402

DEMO = dict(BASE, embedding_size=32, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
            intermediate_size=512)
SHAPES = {"base": BASE, "demo": DEMO}


def write_bench_model(path: Path, shape: str) -> None:
    from albert_ref.config import AlbertConfig
    from albert_ref.weights.model_file import write_model
    from albert_ref.weights.random_model import random_model_file
    write_model(path, random_model_file(AlbertConfig(**SHAPES[shape]), seed=0, spm_model=train_tokenizer(sentences())))


def offline(args) -> None:
    """Child process: the offline throughput and each --solo text's forward time alone."""
    import albert_ref
    texts = sentences()[:args.n]
    encoder = albert_ref.Encoder(args.offline, threads=args.threads)
    by_length = sorted(texts, key=len)
    encoder.encode(by_length[:32] + by_length[-32:], pooling="mean")  # warm-up
    start = time.perf_counter()
    vectors = encoder.encode(texts, pooling="mean", batch_size=32)
    seconds = time.perf_counter() - start
    solo = []
    for text in texts[:args.solo]:
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            encoder.encode([text], pooling="mean")
            times.append(time.perf_counter() - t0)
        solo.append(float(np.median(times)))
    np.save(args.save, vectors)
    print(json.dumps({"seconds": seconds, "solo": solo}))


async def load(url: str, texts: list[str], clients: int, seconds: float, indices: range):
    """`clients` concurrent clients for `seconds`: [(text index, latency s, vector)], elapsed s."""
    import httpx
    results, next_index = [], iter(i for _ in range(10**9) for i in indices)
    start = time.perf_counter()
    deadline = start + seconds
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=clients)) as client:
        async def worker():
            while time.perf_counter() < deadline:
                i = next(next_index)
                t0 = time.perf_counter()
                response = await client.post(f"{url}/v1/embeddings",
                                             json={"input": texts[i], "model": "bench", "encoding_format": "base64"})
                response.raise_for_status()
                vector = np.frombuffer(base64.b64decode(response.json()["data"][0]["embedding"]), "<f4")
                results.append((i, time.perf_counter() - t0, vector))
        await asyncio.gather(*(worker() for _ in range(clients)))
    return results, time.perf_counter() - start


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc, timeout: float = 600) -> None:
    import httpx
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit("the server exited before it was ready")
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    sys.exit(f"the server was not ready after {timeout} s")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=300, help="sentences (bench_embed's first n; default 300)")
    parser.add_argument("--shape", choices=SHAPES, default="base")
    parser.add_argument("--threads", type=int, default=None, help="default: every core numba sees")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--seconds", type=float, default=20, help="load time per --clients count (default 20)")
    parser.add_argument("--solo", type=int, default=40, help="texts timed alone for the 1-client run (default 40)")
    parser.add_argument("--offline", help=argparse.SUPPRESS)  # child process: the model file
    parser.add_argument("--save", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads is None:
        import numba
        args.threads = numba.config.NUMBA_NUM_THREADS
    if args.offline:
        return offline(args)
    args.solo = min(args.solo, args.n)
    texts = sentences()[:args.n]
    with tempfile.TemporaryDirectory() as tmp:
        model, save = Path(tmp) / "model.h5", Path(tmp) / "offline.npy"
        write_bench_model(model, args.shape)
        child = subprocess.run([sys.executable, __file__, "--offline", str(model), "--save", str(save),
                                "--n", str(args.n), "--solo", str(args.solo), "--threads", str(args.threads)],
                               capture_output=True, text=True)
        if child.returncode:
            sys.exit(f"offline embed failed:\n{child.stderr}")
        off = json.loads(child.stdout.strip().splitlines()[-1])
        reference, solo = np.load(save), np.array(off["solo"])
        offline_rate = args.n / off["seconds"]

        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = subprocess.Popen([sys.executable, "-m", "albert_ref.cli", "serve", "--model", str(model),
                                   "--pooling", "mean", "--port", str(port), "--threads", str(args.threads)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_healthy(url, server)
            asyncio.run(load(url, texts, 4, 1, range(args.n)))  # warm-up: connections, first batches
            runs = []
            for clients in args.clients:
                indices = range(args.solo) if clients == 1 else range(args.n)
                runs.append((clients, *asyncio.run(load(url, texts, clients, args.seconds, indices))))
        finally:
            server.terminate()
            server.wait(timeout=120)

    tokens = [len(t.split()) for t in texts]
    print(f"{args.n} texts ({min(tokens)}-{max(tokens)} words), {args.shape} shape, {args.threads} threads, "
          f"{platform.machine()}; offline embed {offline_rate:.2f} texts/s ({off['seconds']:.1f} s); "
          f"solo forward of the first {args.solo}: median {1e3 * np.median(solo):.1f} ms")
    print("\n| clients | texts answered | texts/s | of offline | p50 ms | p99 ms | p50 latency - solo forward ms |"
          "\n|---:|---:|---:|---:|---:|---:|---:|")
    mismatches = 0
    for clients, results, elapsed in runs:
        latency = np.array([r[1] for r in results])
        mismatches += sum(not np.array_equal(v.view(np.uint32), reference[i].view(np.uint32)) for i, _, v in results)
        extra = (f"{1e3 * np.median([lat - solo[i] for i, lat, _ in results]):.1f}" if clients == 1 else "")
        rate = len(results) / elapsed
        print(f"| {clients} | {len(results)} | {rate:.2f} | {rate / offline_rate:.0%} | {1e3 * np.median(latency):.1f} "
              f"| {1e3 * np.percentile(latency, 99):.1f} | {extra} |")
    print(f"\nvectors differing from offline embed: {mismatches} of {sum(len(r[1]) for r in runs)}")


if __name__ == "__main__":
    main()
