"""The feed-forward in blocks of rows (KernelOps.ffn_rows, forward.feed_forward) against
whole: time and peak RSS of the forward pass, random weights, the bits compared.

    python benchmarks/bench_ffn_rows.py --batch 8 --reps 6          # xlarge, 256 vs whole

Time: one process, one KernelOps whose ffn_rows is switched between passes, the settings
taking turns (first one, then the other, then the other first), medians. Peak RSS: each
setting in a fresh process that builds the weights and runs one pass (ru_maxrss, so the
weights count too: compare the settings, not the figure with a model file's).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_forward import MODEL_NAMES, peak_rss_mb, setup_ours  # noqa: E402


def setting(text):
    return None if text == "whole" else int(text)


def peak_rss(args, rows):
    """Peak RSS (MB) of a fresh process running one pass with ffn_rows = rows."""
    cmd = [sys.executable, __file__, "--model", args.model, "--batch", str(args.batch), "--seq", str(args.seq),
           "--threads", str(args.threads), "--child", "whole" if rows is None else str(rows)]
    return float(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.split()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=MODEL_NAMES, default="xlarge")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=6)
    ap.add_argument("--rows", type=setting, nargs=2, default=(256, None), metavar="N|whole",
                    help="the two ffn_rows settings compared (default: 256 whole)")
    ap.add_argument("--child", metavar="N|whole", help=argparse.SUPPRESS)   # peak_rss's process
    args = ap.parse_args(argv)
    from albert_ref import forward
    if args.child is not None:
        config, ops, params, (ids, mask, segs) = setup_ours(args.model, args.threads, args.batch, args.seq)
        ops.ffn_rows = setting(args.child)
        forward.forward(ops, params, config, ids, mask, segs)
        print(peak_rss_mb())
        return
    from albert_ref.kernels import isa
    rss = {rows: peak_rss(args, rows) for rows in args.rows}
    config, ops, params, (ids, mask, segs) = setup_ours(args.model, args.threads, args.batch, args.seq)
    print(f"{args.model} {args.batch}x{args.seq}, {args.threads} threads; {isa.describe(ops.isa)}; "
          f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')}")
    times, first = {rows: [] for rows in args.rows}, None
    for rep in range(args.reps + 1):
        for rows in (args.rows if rep % 2 else args.rows[::-1]):
            ops.ffn_rows = rows
            t = time.perf_counter()
            out = forward.forward(ops, params, config, ids, mask, segs)["sequence_output"]
            if rep:   # the first turn compiles or loads the kernels
                times[rows].append(time.perf_counter() - t)
            if first is None:
                first = out.copy()
            elif not np.array_equal(out.view(np.uint32), first.view(np.uint32)):
                raise SystemExit(f"ffn_rows={rows} gives other bits: a bug")
    for rows, ts in times.items():
        print(f"  ffn_rows={rows or 'whole'}: median {np.median(ts):.3f} s (runs "
              f"{', '.join(f'{t:.2f}' for t in ts)}), peak RSS {rss[rows]:.0f} MB (fresh process, one pass)")
    a, b = (np.median(times[rows]) for rows in args.rows)
    print(f"  time {args.rows[0] or 'whole'} / {args.rows[1] or 'whole'}: {a / b:.3f}")


if __name__ == "__main__":
    main()
