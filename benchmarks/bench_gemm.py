"""GEMM on the xlarge shapes: albert-ref's packed FMA kernel vs numpy float32 matmul.

M = 1024 (8 x 128 tokens); K, N in {2048, 8192}; same thread count for both
(NUMBA_NUM_THREADS and OPENBLAS_NUM_THREADS/OMP_NUM_THREADS, set before numpy loads).
Prints medians and GFLOP/s (2*M*N*K / time); albert-ref is timed writing a fresh output
array per call, as numpy does, and ("reused") into one output array allocated once, as
inside a forward pass, where the Workspace spares it the page faults of fresh memory.
Run with OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE
unset so that OpenBLAS picks its best kernel for the machine:

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_gemm.py --threads 2

--isa picks the kernel variant (default: the one albert-ref chooses). To approximate an
AVX2 machine on an AVX-512 one, have Numba compile for Haswell with Haswell's own features
(NUMBA_CPU_NAME alone keeps the host's features, AVX-512 included) and OpenBLAS use its
Haswell kernel:

    env -u OPENBLAS_L2_SIZE OPENBLAS_CORETYPE=Haswell NUMBA_CPU_NAME=haswell NUMBA_CPU_FEATURES= \
        python benchmarks/bench_gemm.py --threads 2
"""
from __future__ import annotations

import argparse
import os
import sys
import time


def time_in_turns(runs, rounds, reps, pause=0.3):
    """{name: [seconds per call]}: `rounds` turns, in each `reps` calls of every run in order.
    Blocks of one engine at a time, with pauses: both OpenBLAS's and the OpenMP workers
    spin after a call and would steal the cores from the next engine. 0.05 s was too
    short for OpenBLAS at 2 threads: of two identical kernel configs, the one timed right
    after numpy ran 6% slower (geomean, M = 1024, Zen 4); after 0.3 s the two were within
    1.2% (benchmarks/RESULTS.md, "Tuning benchmark pause")."""
    times = {name: [] for name in runs}
    for _ in range(rounds):
        for name, f in runs.items():
            time.sleep(pause)
            for _ in range(reps):
                t0 = time.perf_counter()
                f()
                times[name].append(time.perf_counter() - t0)
    return times


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--M", type=int, default=1024)
    ap.add_argument("--isa", default=None, help="kernel variant (avx512, avx2, sse; default: chosen for this CPU)")
    args = ap.parse_args(argv)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        if var in os.environ and (var, os.environ[var]) != ("OPENBLAS_CORETYPE", "Haswell"):
            print(f"warning: {var}={os.environ[var]} is set; numpy's numbers will not be its best", file=sys.stderr)

    import numba
    import numpy as np

    from albert_ref.kernels import isa

    kernels = isa.kernel_set(isa.select(args.isa).name)
    try:
        from threadpoolctl import threadpool_info
        blas = ", ".join(f"{i.get('internal_api')} {i.get('version')} {i.get('architecture')} x{i.get('num_threads')}"
                         for i in threadpool_info())
    except ImportError:
        blas = "?"
    print(f"numpy {np.__version__} ({blas}); numba {numba.__version__}; threads {args.threads}")
    print(isa.describe(kernels.variant))
    rng = np.random.default_rng(0)
    M = args.M
    print("medians (best-of in parentheses)")
    print(f"{'M':>5} {'K':>5} {'N':>5} {'ours ms':>9} {'GF/s':>13} {'reused ms':>9} {'GF/s':>6} {'numpy ms':>9} {'GF/s':>13} "
          f"{'ratio':>6} {'max|d|/rms':>10}")
    ratios = []
    for K in (2048, 8192):
        for N in (2048, 8192):
            x = rng.standard_normal((M, K), dtype=np.float32)
            w = (rng.standard_normal((K, N), dtype=np.float32) / np.float32(np.sqrt(K)))
            bias = np.zeros(N, np.float32)
            bp = kernels.pack(w)
            ours = lambda: kernels.dense(x, bp, bias, 0, args.threads, np.empty((M, N), np.float32))
            out = np.empty((M, N), np.float32)
            reused = lambda: kernels.dense(x, bp, bias, 0, args.threads, out)
            theirs = lambda: np.matmul(x, w)
            a, b = ours(), theirs()
            times = time_in_turns({"ours": ours, "reused": reused, "numpy": theirs}, 2, args.reps)
            flop = 2.0 * M * N * K
            to, tr, tn = np.median(times["ours"]), np.median(times["reused"]), np.median(times["numpy"])
            ratios.append(tn / to)
            bo, bn = min(times["ours"]), min(times["numpy"])
            print(f"{M:5d} {K:5d} {N:5d} {to * 1e3:9.1f} {flop / to / 1e9:6.1f} ({flop / bo / 1e9:5.1f}) "
                  f"{tr * 1e3:9.1f} {flop / tr / 1e9:6.1f} {tn * 1e3:9.1f} "
                  f"{flop / tn / 1e9:6.1f} ({flop / bn / 1e9:5.1f}) "
                  f"{tn / to:6.2f} {np.abs(a - b).max() / np.sqrt(np.mean(b * b)):10.2e}")
    print(f"geometric-mean speed ratio vs numpy: {np.exp(np.mean(np.log(ratios))):.2f}x")


if __name__ == "__main__":
    main()
