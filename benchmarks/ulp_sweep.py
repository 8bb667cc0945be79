"""ULP sweeps of the portable float32 math (kernels/fmath.py) against float64 libm.

Every float32 in each range is evaluated (--stride 1, the default: exhaustive; a stride
of n takes every n-th bit pattern). The error of a result y for the float64 reference r
is |y - r| / ulp(r), where ulp(r) = 2^(floor(log2|r|) - 23), floored at 2^-149; the
largest |y - r| / |x| is printed for the GELUs (their absolute error relative to the input).
References: math.exp / tanh / erf / erfc in float64 (each < 1 float64 ulp, i.e. exact
for this purpose); GELU tanh form x / (1 + exp(-2u)), u = sqrt(2/pi)(x + 0.044715x^3),
and erf form 0.5 x erfc(-x/sqrt2), both evaluated in float64.

    python benchmarks/ulp_sweep.py            # exhaustive, about 4-5 minutes on 2 cores
    python benchmarks/ulp_sweep.py --stride 97
"""
from __future__ import annotations

import argparse
import math
import time

import numpy as np
from numba import njit, prange

from albert_ref.kernels import fmath

SQ2PI = math.sqrt(2.0 / math.pi)


@njit(inline="always")
def _eval(code, x):
    xd = np.float64(x)
    if code == 0:
        return fmath.exp32(x), math.exp(xd)
    if code == 1:
        return fmath.tanh32(x), math.tanh(xd)
    if code == 2:
        return fmath.erf32(x), math.erf(xd)
    if code == 3:
        return fmath.erfc32(x), math.erfc(xd)
    if code == 4:
        u = SQ2PI * (xd + 0.044715 * xd * xd * xd)
        return fmath.gelu_tanh32(x), xd / (1.0 + math.exp(-2.0 * u))
    return fmath.gelu_erf32(x), 0.5 * xd * math.erfc(-xd / math.sqrt(2.0))


@njit(parallel=True)
def _sweep(code, lo_bits, hi_bits, negative, stride, chunks):
    """(max ulp error, where, max |y - r| / |x|) over float32 bit patterns lo_bits..hi_bits
    (of +x, or of -x)."""
    n = (hi_bits - lo_bits) // stride + 1
    per = (n + chunks - 1) // chunks
    worst = np.zeros(chunks)
    where = np.zeros(chunks, dtype=np.float32)
    worst_x = np.zeros(chunks)
    for c in prange(chunks):
        best = 0.0
        best_x = 0.0
        arg = np.float32(0.0)
        for t in range(c * per, min(n, (c + 1) * per)):
            b = np.int32(lo_bits + t * stride)
            x = fmath.as_float32(b)
            if negative:
                x = -x
            y, r = _eval(code, x)
            if not (abs(r) < 3.4028234663852886e38) or abs(r) < 1.1754943508222875e-38:
                continue  # overflow and subnormal results: not counted (see NUMERICS.md)
            m, e = math.frexp(abs(r))
            ulp = math.ldexp(1.0, e - 24)
            err = abs(np.float64(y) - r) / ulp
            if err > best:
                best = err
                arg = x
            if x != 0:
                best_x = max(best_x, abs(np.float64(y) - r) / abs(np.float64(x)))
        worst[c] = best
        where[c] = arg
        worst_x[c] = best_x
    i = np.argmax(worst)
    return worst[i], where[i], worst_x.max()


def bits_of(v):
    return int(np.float32(v).view(np.int32))


FUNCS = [  # name, code, ranges
    ("exp", 0, [(-87.3, 88.72)]),
    ("tanh", 1, [(-9.1, 9.1)]),
    ("erf", 2, [(-4.0, 4.0)]),
    ("erfc", 3, [(-4.0, 9.1)]),
    ("gelu_tanh", 4, [(-3.0, 3.0), (-6.0, -3.0), (-10.0, -6.0), (3.0, 10.0)]),
    ("gelu_erf", 5, [(-3.0, 3.0), (-6.0, -3.0), (-10.0, -6.0), (3.0, 10.0)]),
]


def sweep(code, lo, hi, stride):
    """(max ulp error, where, max |y - r| / |x|) over [lo, hi]."""
    results = []
    if hi > 0:  # positive part: [max(lo,0), hi]
        results.append(_sweep(code, bits_of(max(lo, 0.0)), bits_of(hi), False, stride, 256))
    if lo < 0:  # negative part: -[max(-hi,0), -lo]
        results.append(_sweep(code, bits_of(max(-hi, 0.0)), bits_of(-lo), True, stride, 256))
    (err, at), err_x = max((r[0], r[1]) for r in results), max(r[2] for r in results)
    return err, at, err_x


def main(argv=None):
    ap = argparse.ArgumentParser(description="ULP sweeps of kernels/fmath.py")
    ap.add_argument("--stride", type=int, default=1)
    ap.add_argument("--only", nargs="*")
    args = ap.parse_args(argv)
    print(f"stride {args.stride} ({'exhaustive' if args.stride == 1 else 'dense'})")
    for name, code, ranges in FUNCS:
        if args.only and name not in args.only:
            continue
        for lo, hi in ranges:
            t0 = time.perf_counter()
            err, at, err_x = sweep(code, lo, hi, args.stride)
            rel_x = f"max |err|/|x| {err_x:.1e}  " if name.startswith("gelu") else ""
            print(f"{name:10s} [{lo:7.2f}, {hi:7.2f}]  max {err:8.3f} ulp  at x = {float(at)!r:14}  "
                  f"{rel_x}({time.perf_counter() - t0:.1f} s)", flush=True)


if __name__ == "__main__":
    main()
