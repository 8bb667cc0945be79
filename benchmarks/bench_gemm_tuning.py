"""GEMM tuning: kernel variants with changed settings against numpy, interleaved in one process.

Each CONFIG is a variant of kernels/isa.py with settings overridden, `name[:key=value...]`
over the fields mr, nr, vw, unroll, kblocks, mc, nc (kernels/isa.py's Variant) and
kchunk (otherwise gemm.tile_sizes picks it), e.g.

    env -u OPENBLAS_L2_SIZE OPENBLAS_CORETYPE=Haswell NUMBA_CPU_NAME=haswell NUMBA_CPU_FEATURES= \\
        python benchmarks/bench_gemm_tuning.py --threads 1 avx2 avx2:kblocks=1:unroll=1 avx2:mc=128

The configs and numpy run in turns (`--rounds` of `--reps` calls each), so that load from
other processes falls on all of them alike; it prints, per shape, GFLOP/s medians and each
config's median and best-of speed ratio to numpy, then their geometric means. Every config
is checked to give the first one's bits. Settings change speed only, never the bits
(NUMERICS.md): this is for choosing them, bench_gemm.py for reporting.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_gemm import time_in_turns  # noqa: E402



def parse(spec):
    """'avx2:kblocks=1:mc=128' -> (label, Variant, kchunk or None)."""
    from albert_ref.kernels import isa

    base, *pairs = spec.split(":")
    if base not in isa.VARIANTS:
        raise SystemExit(f"unknown variant {base!r} in {spec!r}; choose one of {', '.join(isa.VARIANTS)}")
    keys = tuple(f.name for f in dataclasses.fields(isa.Variant) if f.type in ("int", int)) + ("kchunk",)
    changes, kchunk = {}, None
    for pair in pairs:
        key, _, value = pair.partition("=")
        if key not in keys or not value.isdigit() or int(value) < 1:
            raise SystemExit(f"bad setting {pair!r} in {spec!r}: want KEY=N, N >= 1, KEY one of {keys}")
        if key == "kchunk":
            kchunk = int(value)
        else:
            changes[key] = int(value)
    variant = isa.VARIANTS[base]
    if changes.get("nr", variant.nr) % changes.get("vw", variant.vw):
        raise SystemExit(f"{spec!r}: nr must be a multiple of vw (whole vectors per row)")
    name = "tune_" + "_".join([base] + [f"{k}{v}" for k, v in sorted(changes.items())])  # its own cache entries
    return spec, dataclasses.replace(variant, name=name, **changes), kchunk


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("configs", nargs="+", metavar="CONFIG")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--M", type=int, default=1024)
    ap.add_argument("--pause", type=float, default=0.3,
                    help="seconds between engines (OpenBLAS's threads spin after a call; bench_gemm.time_in_turns)")
    ap.add_argument("--shapes", default="2048x2048,2048x8192,8192x2048,8192x8192", help="KxN,KxN,...")
    args = ap.parse_args(argv)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = str(args.threads)

    import numpy as np

    from albert_ref.kernels import gemm, isa

    configs = [parse(spec) for spec in args.configs]
    print(f"numpy {np.__version__}; threads {args.threads}; compile target {isa.target()}")
    sets = [(label, isa.KernelSet(v), kchunk) for label, v, kchunk in configs]
    rng = np.random.default_rng(0)
    M = args.M
    ratios = {label: [] for label, _, _ in sets}
    for shape in args.shapes.split(","):
        K, N = map(int, shape.split("x"))
        x = rng.standard_normal((M, K), dtype=np.float32)
        w = rng.standard_normal((K, N), dtype=np.float32) / np.float32(np.sqrt(K))
        bias = np.zeros(N, np.float32)
        runs, first = {}, None
        for label, ks, kchunk in sets:
            bp, out = ks.pack(w), np.empty((M, N), np.float32)
            if kchunk is None:
                runs[label] = lambda ks=ks, bp=bp, out=out: ks.dense(x, bp, bias, 0, args.threads, out)
            else:
                mc, nc, _ = gemm.tile_sizes(M, N, K, args.threads, ks.variant)
                runs[label] = (lambda ks=ks, bp=bp, out=out, mc=mc, nc=nc, kc=kchunk:
                               ks.gemm_packed(x, bp, bias, 0, out, mc, nc, kc, args.threads))
            runs[label]()
            if first is None:
                first = out.copy()
            elif not np.array_equal(out.view(np.int32), first.view(np.int32)):
                raise SystemExit(f"{label} gives other bits than {sets[0][0]}: a kernel bug")
        runs["numpy"] = lambda: np.matmul(x, w)
        times = time_in_turns(runs, args.rounds, args.reps, args.pause)
        flop = 2.0 * M * N * K
        tn, bn = np.median(times["numpy"]), min(times["numpy"])
        line = f"M {M} K {K} N {N}: numpy {flop / tn / 1e9:6.1f} GF/s"
        for label, _, _ in sets:
            t, b = np.median(times[label]), min(times[label])
            ratios[label].append((tn / t, bn / b))
            line += f" | {label} {flop / t / 1e9:6.1f} GF/s {tn / t:5.3f}x (best {bn / b:5.3f}x)"
        print(line, flush=True)
    for label, r in ratios.items():
        r = np.log(np.array(r))
        print(f"geomean vs numpy, {label}: median {np.exp(r[:, 0].mean()):.3f}x, best-of {np.exp(r[:, 1].mean()):.3f}x")


if __name__ == "__main__":
    main()
