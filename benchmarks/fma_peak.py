"""This machine's float32 FMA peak, as Numba compiles for it: the ceiling every GEMM figure
is measured against (GFLOP/s = 2 x FMA lanes per second).

Each thread runs CHAINS independent chains of vector FMAs on registers (no loads, no
stores: a chain's next FMA waits only on its own last one, and CHAINS chains cover the FMA
units' latency times their number), at each vector width the target has, on 1 thread and
then on `--threads` threads at once (Numba releases the GIL).

    python benchmarks/fma_peak.py --threads 2
    NUMBA_CPU_NAME=haswell NUMBA_CPU_FEATURES= python benchmarks/fma_peak.py   # 256-bit code
"""
from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

sys.path.insert(0, str(Path(__file__).parent.parent))
from albert_ref.kernels import isa  # noqa: E402

CHAINS = 12   # 12 of the 16 ymm (or 32 zmm) registers: Zen 4 and Intel cores have 2 FMA units of latency 4


def make_chains(lanes: int):
    """fn(trips, x): CHAINS accumulators of `lanes` floats, each updated acc = fma(acc, x, x)
    8 times per trip; returns the lane-sum of all of them (so nothing is optimized away)."""

    @intrinsic
    def chains(typingctx, trips, x):
        def codegen(context, builder, signature, args):
            trips_v, x_v = args
            vty = ir.VectorType(ir.FloatType(), lanes)
            fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vty, [vty] * 3),
                                                 f"llvm.fma.v{lanes}f32")
            splat = builder.shuffle_vector(builder.insert_element(ir.Constant(vty, ir.Undefined), x_v,
                                                                  ir.Constant(ir.IntType(32), 0)),
                                           ir.Constant(vty, ir.Undefined),
                                           ir.Constant(ir.VectorType(ir.IntType(32), lanes), None))
            entry, loop, done = builder.block, builder.append_basic_block("loop"), builder.append_basic_block("done")
            builder.branch(loop)
            builder.position_at_end(loop)
            i = builder.phi(trips_v.type)
            accs = [builder.phi(vty) for _ in range(CHAINS)]
            new = list(accs)
            for _ in range(8):
                new = [builder.call(fma, [a, splat, splat]) for a in new]
            i_next = builder.add(i, ir.Constant(trips_v.type, 1))
            i.add_incoming(ir.Constant(trips_v.type, 0), entry)
            i.add_incoming(i_next, loop)
            for a, n in zip(accs, new):
                a.add_incoming(splat, entry)
                a.add_incoming(n, loop)
            builder.cbranch(builder.icmp_signed("<", i_next, trips_v), loop, done)
            builder.position_at_end(done)
            total = new[0]
            for n in new[1:]:
                total = builder.fadd(total, n)
            out = builder.extract_element(total, ir.Constant(ir.IntType(32), 0))
            for lane in range(1, lanes):
                out = builder.fadd(out, builder.extract_element(total, ir.Constant(ir.IntType(32), lane)))
            return out
        return types.float32(trips, x), codegen

    @njit(nogil=True)
    def run(trips, x):
        return chains(trips, x)
    return run


def gflops(run, lanes: int, threads: int, seconds: float) -> float:
    trips = 1000
    run(trips, np.float32(0.5))
    while True:   # trips for `seconds` on one thread
        t0 = time.perf_counter()
        run(trips, np.float32(0.5))
        if time.perf_counter() - t0 > seconds / 4:
            break
        trips *= 4
    workers = [threading.Thread(target=run, args=(trips, np.float32(0.5))) for _ in range(threads)]
    t0 = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return threads * trips * 8 * CHAINS * lanes * 2 / (time.perf_counter() - t0) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5, help="median of this many runs (default 5)")
    args = ap.parse_args()
    t = isa.target()
    print(isa.describe(isa.select()))
    for bits in (b for b in (128, 256, 512) if b <= t.vector_bits):
        run = make_chains(bits // 32)
        for threads in sorted({1, args.threads}):
            runs = sorted(gflops(run, bits // 32, threads, 0.5) for _ in range(args.repeats))
            print(f"{bits}-bit FMA, {threads} thread{'s' * (threads > 1)}: {runs[len(runs) // 2]:.1f} GFLOP/s "
                  f"(median of {len(runs)}; {runs[0]:.1f}-{runs[-1]:.1f})")


if __name__ == "__main__":
    main()
