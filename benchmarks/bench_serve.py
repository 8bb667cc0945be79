"""`albert-ref serve` under load on loopback, against offline `embed` in the same run.

A base-shaped random-weight model (bench_forward's ALBERT base v2 shape: hidden 768,
12 layers, 12 heads, intermediate 3072, embedding 128; big enough that compute
dominates) with the tokenizer bench_embed trains, and bench_embed's sentences (the
first --n). One `albert-ref serve` child process (mean pooling, default limits) runs
throughout; each of --rounds rounds then measures, one after the other:

1. offline, in a child process: Encoder.encode of the n texts (mean pooling, batch 32,
   length-sorted least-padding batches: what `albert-ref embed` does) -> texts/s;
2. for each --clients count, that many concurrent clients (asyncio + httpx, one text per
   request, one request at a time each, cycling through the texts) for --seconds, then
   no new requests: throughput in the steady state (texts answered in the last two
   thirds of the time, divided by it), latency percentiles, and from /metrics the
   texts per forward pass, the padded share of its tokens, and the share of the time
   the compute thread spent in forward passes, and the CPU the clients took (a share of
   one core). With one client every forward pass holds that one text, so the
   server's x-inference-time header is the text's own forward time, and latency minus
   it is what the server adds.

Ratios are taken within a round (the machine's load changes between rounds) and their
median reported. Every vector the server returns is checked against the offline
vector, bit for bit.

    python benchmarks/bench_serve.py                                   # the recorded run
    python benchmarks/bench_serve.py --shape demo --seconds 3 --rounds 1  # a quick check
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
from bench_forward import model_fields  # noqa: E402

from albert_ref.encoder import batches  # noqa: E402
from albert_ref.tokenizer import Tokenizer  # noqa: E402

BASE = model_fields("base")
DEMO = dict(BASE, embedding_size=32, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
            intermediate_size=512)
SHAPES = {"base": BASE, "demo": DEMO}


def write_bench_model(path: Path, shape: str, spm_model: bytes) -> None:
    """The benchmark model of `shape` (random weights, seed 0) with the tokenizer
    `spm_model` (train_tokenizer(sentences()), trained once by the caller)."""
    from albert_ref.config import AlbertConfig
    from albert_ref.weights.model_file import write_model
    from albert_ref.weights.random_model import random_model_file
    write_model(path, random_model_file(AlbertConfig(**SHAPES[shape]), seed=0, spm_model=spm_model))


def offline(args) -> None:
    """Child process: time Encoder.encode on the texts after a warm-up; save the vectors."""
    import albert_ref
    texts = sentences()[:args.n]
    encoder = albert_ref.Encoder(args.offline, threads=args.threads)
    by_length = sorted(texts, key=len)
    encoder.encode(by_length[:32] + by_length[-32:], pooling="mean")
    start = time.perf_counter()
    vectors = encoder.encode(texts, pooling="mean", batch_size=32)
    seconds = time.perf_counter() - start
    np.save(args.save, vectors)
    print(json.dumps({"seconds": seconds}))


def run_offline(args, model: Path, save: Path) -> float:
    child = subprocess.run([sys.executable, __file__, "--offline", str(model), "--save", str(save),
                            "--n", str(args.n), "--threads", str(args.threads)], capture_output=True, text=True)
    if child.returncode:
        sys.exit(f"offline embed failed:\n{child.stderr}")
    return args.n / json.loads(child.stdout.strip().splitlines()[-1])["seconds"]


async def load(url: str, texts: list[str], clients: int, seconds: float):
    """`clients` concurrent clients for `seconds`: [(text index, latency s, inference s,
    vector, answered at s)]."""
    import httpx
    results, counter = [], iter(range(10**9))
    start = time.perf_counter()
    deadline = start + seconds
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=clients)) as client:
        async def worker():
            while time.perf_counter() < deadline:
                i = next(counter) % len(texts)
                t0 = time.perf_counter()
                response = await client.post(f"{url}/v1/embeddings",
                                             json={"input": texts[i], "model": "bench", "encoding_format": "base64"})
                response.raise_for_status()
                vector = np.frombuffer(base64.b64decode(response.json()["data"][0]["embedding"]), "<f4")
                end = time.perf_counter()
                results.append((i, end - t0, float(response.headers["x-inference-time"]) / 1e3, vector, end - start))
        await asyncio.gather(*(worker() for _ in range(clients)))
    return results


def passes(url: str) -> np.ndarray:
    """Forward passes, texts and padded tokens so far, real tokens, and seconds in forward
    passes, from /metrics."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families
    samples = {s.name: s.value for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text)
               for s in family.samples}
    return np.array([samples["albert_ref_batch_texts_count"], samples["albert_ref_batch_texts_sum"],
                     samples["albert_ref_batch_tokens_sum"], samples["albert_ref_tokens_total"],
                     samples["albert_ref_forward_seconds_sum"]])


def measure(url, texts, clients, seconds):
    """The load's results, /metrics' change, the seconds it took, and the CPU seconds the
    clients (this process) used: on loopback they share the server's cores."""
    before, start, cpu = passes(url), time.perf_counter(), time.process_time()
    results = asyncio.run(load(url, texts, clients, seconds))
    return results, passes(url) - before, time.perf_counter() - start, time.process_time() - cpu


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
    parser.add_argument("--n", type=int, default=200, help="sentences (bench_embed's first n; default 200)")
    parser.add_argument("--shape", choices=SHAPES, default="base")
    parser.add_argument("--threads", type=int, default=None, help="default: every core numba sees")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--seconds", type=float, default=30, help="load time per --clients count (default 30)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--offline", help=argparse.SUPPRESS)  # child process: the model file
    parser.add_argument("--save", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads is None:
        import numba
        args.threads = numba.config.NUMBA_NUM_THREADS
    if args.offline:
        return offline(args)
    texts = sentences()[:args.n]
    spm_model = train_tokenizer(sentences())
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        model, save = Path(tmp) / "model.h5", Path(tmp) / "offline.npy"
        write_bench_model(model, args.shape, spm_model)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = subprocess.Popen([sys.executable, "-m", "albert_ref.cli", "serve", "--model", str(model),
                                   "--pooling", "mean", "--port", str(port), "--threads", str(args.threads)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_healthy(url, server)
            asyncio.run(load(url, texts, 4, 1))  # warm-up: connections, first batches
            for _ in range(args.rounds):
                rate = run_offline(args, model, save)
                rounds.append((rate, [(c, *measure(url, texts, c, args.seconds)) for c in args.clients]))
        finally:
            server.terminate()
            server.wait(timeout=120)
        reference = np.load(save)

    words = [len(t.split()) for t in texts]
    lengths = Tokenizer(spm_model).encode_batch(texts).lengths
    planned = [(len(rows), len(rows) * width) for rows, width in batches(lengths, 32)]
    print(f"{args.n} texts ({min(words)}-{max(words)} words), {args.shape} shape, {args.threads} threads, "
          f"{platform.machine()}, {args.rounds} rounds of: offline embed, then "
          f"{', '.join(map(str, args.clients))} client(s) for {args.seconds:g} s each; offline embed's passes: "
          f"{len(texts) / len(planned):.1f} texts a pass, padding {1 - sum(lengths) / sum(p for _, p in planned):.0%}")
    print("\n| round | offline texts/s | " + " | ".join(
        f"{c} client(s): texts/s (of offline), p50 / p99 ms, texts a pass, padding, compute busy, client CPU"
        for c in args.clients) + " |")
    print("|---:|---:|" + "---:|" * len(args.clients))
    ratios = {c: [] for c in args.clients}
    mismatches = answered = 0
    overhead, solo_forward, solo_latency = [], [], []
    for r, (rate, runs) in enumerate(rounds, 1):
        cells = []
        for clients, results, (n_passes, n_texts, padded, real, busy), elapsed, client_cpu in runs:
            latency = np.array([x[1] for x in results])
            served = sum(args.seconds / 3 <= x[4] <= args.seconds for x in results) / (args.seconds * 2 / 3)
            ratios[clients].append(served / rate)
            cells.append(f"{served:.2f} ({served / rate:.0%}), {1e3 * np.median(latency):.0f} / "
                         f"{1e3 * np.percentile(latency, 99):.0f}, {n_texts / n_passes:.1f}, {1 - real / padded:.0%}, "
                         f"{busy / elapsed:.0%}, {client_cpu / elapsed:.0%}")
            answered += len(results)
            mismatches += sum(not np.array_equal(v.view(np.uint32), reference[i].view(np.uint32))
                              for i, _, _, v, _ in results)
            if clients == 1:
                overhead += [lat - inf for _, lat, inf, _, _ in results]
                solo_forward += [inf for _, _, inf, _, _ in results]
                solo_latency += [lat for _, lat, _, _, _ in results]
        print(f"| {r} | {rate:.2f} | " + " | ".join(cells) + " |")
    print("\nmedian over rounds of the server's texts/s as a share of offline embed's: "
          + ", ".join(f"{c} client(s) {np.median(v):.0%}" for c, v in ratios.items()))
    if overhead:
        print(f"1 client, all rounds: p50 latency {1e3 * np.median(solo_latency):.1f} ms, p50 forward of the text "
              f"(x-inference-time) {1e3 * np.median(solo_forward):.1f} ms, p50 of latency - forward "
              f"{1e3 * np.median(overhead):.1f} ms (p99 {1e3 * np.percentile(overhead, 99):.1f} ms)")
    print(f"vectors differing from offline embed: {mismatches} of {answered}")


if __name__ == "__main__":
    main()
