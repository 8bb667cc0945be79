"""Where the time of one forward (xlarge, or --model base) goes: seconds per op kind (and per dense shape),
measured by wrapping the cpu backend's ops while forward.py runs, with the GFLOP/s of the
matrix products (2*M*N*K; attention: scores and context over all keys, inputs unpadded).

    python benchmarks/profile_forward.py --batch 8 --threads 2
"""
import argparse
import collections
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_forward import MODEL_NAMES, build_params, model_fields  # noqa: E402

from albert_ref import forward  # noqa: E402
from albert_ref.config import AlbertConfig  # noqa: E402
from albert_ref.kernel_backend import KernelOps  # noqa: E402
from albert_ref.kernels import isa  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=MODEL_NAMES, default="xlarge")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--isa", default=None, help="kernel variant (avx512, avx2, sse; default: chosen for this CPU)")
    args = ap.parse_args()
    config = AlbertConfig(**model_fields(args.model))
    ops = KernelOps(True, threads=args.threads, isa=args.isa)
    print(isa.describe(ops.isa))
    params = build_params(ops, config)
    times = collections.defaultdict(float)
    flops = collections.defaultdict(float)
    for name in ("embed", "layer_norm", "dense", "attention"):
        op = getattr(ops, name)

        def timed(*a, _op=op, _name=name, **k):
            t = time.perf_counter()
            r = _op(*a, **k)
            dt = time.perf_counter() - t
            keys = [_name]
            if _name == "dense":
                keys.append(f"  dense K={a[0].shape[-1]} N={a[2].shape[0]}")
                work = 2.0 * a[0].size * a[2].shape[0]
            elif _name == "attention":
                B, S, H = a[0].shape
                work = 4.0 * B * S * S * H
            else:
                work = 0.0
            for key in keys:
                times[key] += dt
                flops[key] += work
            return r
        setattr(ops, name, timed)
    ids = np.random.default_rng(0).integers(0, config.vocab_size, (args.batch, args.seq)).astype(np.int32)
    mask, segs = np.ones_like(ids), np.zeros_like(ids)
    forward.forward(ops, params, config, ids, mask, segs)  # compile / warm up
    times.clear()
    flops.clear()
    t = time.perf_counter()
    forward.forward(ops, params, config, ids, mask, segs)
    print(f"{args.model} {args.batch}x{args.seq}, {args.threads} threads: {time.perf_counter() - t:.3f} s")
    for name, seconds in sorted(times.items()):
        rate = f"  {flops[name] / seconds / 1e9:5.0f} GFLOP/s" if flops[name] else ""
        print(f"  {name:28s} {seconds:7.3f} s{rate}")


if __name__ == "__main__":
    main()
