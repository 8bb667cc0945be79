"""The server's batches at saturation, without HTTP: bench_serve's closed loop simulated
through the batcher's planner (serve_batcher.next_pass), and the passes it plans timed
against offline embed's in the same process.

bench_serve's load: --clients clients, each sending one of bench_embed's first --n
sentences (cycling through them) as soon as its last one is answered. The simulation
runs the batcher's rules (a --window-ms collection window for texts that arrived while
the compute thread was idle, none for texts left over from the last plan; the next pass
is the least-padding batch of the oldest waiting texts that holds the oldest, at most
--max-batch-requests texts) on a cost model of a forward pass, --row-ms per padded token
row plus --pass-rows rows; a client resubmits --return-ms after its answer. For each
charge per pass the planner is given (--charges), it prints the texts per pass, the
padding and the modelled texts/s as a share of offline embed's (Encoder.encode's plan:
batch 32, 64 rows a pass). The default cost model is the measured one (`--measure`
prints the fit: base shape, 2 cores of a Zen 4).

--measure then runs the first passes of each plan (covering --n texts) and offline
embed's plan on the base-shaped model of bench_serve, --rounds times, the plans taking
turns, and counts each pass's best time (a shared machine's other jobs only add time):
the throughput of each plan's forward passes and its ratio to offline's, and the line
fitted through the passes' times (the cost model). This separates the batches' shape
from what HTTP, tokenization and the event loop cost the server (bench_serve measures
everything together).

    python benchmarks/bench_serve_plan.py                     # the simulation only
    python benchmarks/bench_serve_plan.py --measure --rounds 5
"""
from __future__ import annotations

import argparse
import heapq
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_embed import sentences, train_tokenizer  # noqa: E402
from bench_serve import write_bench_model  # noqa: E402

from albert_ref.encoder import BATCH_OVERHEAD_ROWS, batches  # noqa: E402
from albert_ref.serve_batcher import PASS_OVERHEAD_ROWS, POOL_BATCHES, next_pass  # noqa: E402
from albert_ref.serve_inputs import DEFAULTS  # noqa: E402
from albert_ref.tokenizer import Tokenizer  # noqa: E402


def simulate(lengths, args, charge: int, passes: int = 400) -> list[np.ndarray]:
    """The text indices of the first `passes` passes the batcher runs under the closed loop."""
    row_s, window, back = args.row_ms / 1e3, args.window_ms / 1e3, args.return_ms / 1e3
    counter = iter(range(10**9))
    arrivals = [(1e-6 * c, next(counter) % len(lengths)) for c in range(args.clients)]  # (time, text)
    heapq.heapify(arrivals)
    pending, planned_at, now, plan = [], -1.0, 0.0, []

    def arrive(until):
        while arrivals and arrivals[0][0] <= until:
            pending.append(heapq.heappop(arrivals))

    while len(plan) < passes:
        arrive(now)
        if not pending:
            now = arrivals[0][0]
            continue
        if pending[0][0] > planned_at and len(pending) < args.max_batch_requests:  # the collection window
            now = max(now, pending[0][0] + window)
            arrive(now)
        planned_at = now
        pool = pending[:POOL_BATCHES * args.max_batch_requests]
        rows = set(next_pass([lengths[i] for _, i in pool], args.max_batch_requests, DEFAULTS["max_batch_tokens"],
                             charge).tolist())
        batch = np.array([pool[r][1] for r in rows])
        pending = [p for r, p in enumerate(pending) if r not in rows]
        now += row_s * (len(batch) * lengths[batch].max() + args.pass_rows)
        for k in range(len(batch)):
            heapq.heappush(arrivals, (now + back * (k + 1), next(counter) % len(lengths)))
        plan.append(batch)
    return plan


def shape(lengths, plan) -> tuple[float, float, float]:
    """texts a pass, padding, modelled seconds a text (cost in rows)."""
    texts = sum(len(b) for b in plan)
    padded = sum(len(b) * lengths[b].max() for b in plan)
    return texts / len(plan), 1 - sum(lengths[b].sum() for b in plan) / padded, padded / texts


def offline_plan(lengths) -> list[np.ndarray]:
    return [rows for rows, _ in batches(lengths, 32)]


def measure(args, spm_model, lengths, plans):
    """Time every pass of each plan (and of offline's) on the base model, --rounds times,
    the plans taking turns; each pass's best time counts (other jobs only add time)."""
    import albert_ref
    texts = sentences()[:args.n]
    with tempfile.TemporaryDirectory() as tmp:
        write_bench_model(Path(tmp) / "model.h5", "base", spm_model)
        encoder = albert_ref.Encoder(Path(tmp) / "model.h5", threads=args.threads)
    tokens = encoder.tokenizer.encode_batch(texts)

    def run(rows) -> float:
        width = int(lengths[rows].max())
        start = time.perf_counter()
        encoder.forward_pooled(tokens.input_ids[rows, :width], tokens.input_mask[rows, :width],
                               tokens.segment_ids[rows, :width], lengths[rows], "mean")
        return time.perf_counter() - start

    plans = {"offline": offline_plan(lengths), **plans}
    for rows in plans["offline"][:2]:
        run(rows)  # warm-up
    best = {name: np.full(len(plan), np.inf) for name, plan in plans.items()}
    for _ in range(args.rounds):
        for name, plan in plans.items():
            best[name] = np.minimum(best[name], [run(rows) for rows in plan])
    rows = np.concatenate([[len(b) * lengths[b].max() for b in plan] for plan in plans.values()])
    slope, intercept = np.polyfit(rows, np.concatenate(list(best.values())), 1)
    print(f"\nforward pass (best of {args.rounds}) ~ {1e3 * slope:.3f} ms a padded row + {1e3 * intercept:.1f} ms "
          f"(= {intercept / slope:.0f} rows): the least-squares line through the {len(rows)} passes below")
    print("\n| plan | passes | texts a pass | padding | forward texts/s (best of each pass) | of offline's |")
    print("|---|---:|---:|---:|---:|---:|")
    offline_rate = len(texts) / best["offline"].sum()
    for name, plan in plans.items():
        n_texts, pad, _ = shape(lengths, plan)
        rate = sum(len(b) for b in plan) / best[name].sum()
        print(f"| {name} | {len(plan)} | {n_texts:.1f} | {pad:.0%} | {rate:.2f} | {rate / offline_rate:.0%} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200, help="sentences (bench_embed's first n; default 200)")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--max-batch-requests", type=int, default=DEFAULTS["max_batch_requests"])
    parser.add_argument("--window-ms", type=float, default=DEFAULTS["batch_window_ms"])
    parser.add_argument("--row-ms", type=float, default=0.9, help="cost model: ms per padded token row")
    parser.add_argument("--pass-rows", type=float, default=10, help="cost model: fixed cost of a pass, in rows")
    parser.add_argument("--return-ms", type=float, default=1.0, help="from one answer to that client's next text")
    parser.add_argument("--charges", type=int, nargs="+", default=sorted({BATCH_OVERHEAD_ROWS, PASS_OVERHEAD_ROWS, 8, 16}))
    parser.add_argument("--measure", action="store_true", help="time the plans' passes on the base model")
    parser.add_argument("--rounds", type=int, default=3, help="times each pass is run under --measure")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    texts = sentences()[:args.n]
    spm_model = train_tokenizer(sentences())
    lengths = np.asarray(Tokenizer(spm_model).encode_batch(texts).lengths, np.int64)
    off = offline_plan(lengths)
    off_texts, off_pad, off_rows = shape(lengths, off)
    cost = off_rows + args.pass_rows / off_texts
    print(f"{args.n} texts, {args.clients} clients, cost model {args.row_ms} ms a padded row + {args.pass_rows:g} "
          f"rows a pass; offline embed's plan: {off_texts:.1f} texts a pass, padding {off_pad:.0%}\n")
    print("| planner's charge a pass (rows) | texts a pass | padding | modelled texts/s of offline |")
    print("|---:|---:|---:|---:|")
    plans = {}
    for charge in args.charges:
        plan = simulate(lengths, args, charge)[50:]  # the steady state
        n_texts, pad, rows = shape(lengths, plan)
        print(f"| {charge} | {n_texts:.1f} | {pad:.0%} | {cost / (rows + args.pass_rows / n_texts):.0%} |")
        covered = np.cumsum([len(b) for b in plan])
        plans[f"server, charge {charge}"] = plan[:int(np.searchsorted(covered, args.n)) + 1]
    if args.measure:
        measure(args, spm_model, lengths, plans)


if __name__ == "__main__":
    main()
