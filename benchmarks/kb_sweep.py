"""Why the dot-product block length is KB = 128 (NUMERICS.md, "Why KB = 128"): the error of
blocked FMA chains against float64, for several block lengths, beside a plain chain and
OpenBLAS's sgemm on the same data.

64 x 256 dot products per case, inputs N(0, 1) ("normal") or max(N(0, 1), -0.17)
("gelu-like": all terms one sign heavy), weights N(0, 1.5^2 / K). Prints the RMS error
relative to the RMS of the result, in units of 1e-8, and the max in parentheses.

    python benchmarks/kb_sweep.py
"""
from __future__ import annotations

import numpy as np
from numba import njit

from albert_ref.kernels.fmath import fma

BLOCKS = (16, 32, 64, 128, 256, 512)


@njit(cache=True)
def blocked_dots(x, w, kb):
    """out[m, n]: FMA chains over blocks of kb terms from +0.0, block sums added in order
    (kb >= K: one plain chain), the contract's dot with KB = kb."""
    M, K = x.shape
    N = w.shape[1]
    out = np.empty((M, N), dtype=np.float32)
    for m in range(M):
        for n in range(N):
            total = np.float32(0.0)
            for k0 in range(0, K, kb):
                s = np.float32(0.0)
                for k in range(k0, min(K, k0 + kb)):
                    s = fma(x[m, k], w[k, n], s)
                total = s if k0 == 0 else np.float32(total + s)
            out[m, n] = total
    return out


def errors(got, truth):
    d = (got.astype(np.float64) - truth) / np.sqrt(np.mean(truth * truth))
    return f"{np.sqrt(np.mean(d * d)) * 1e8:5.1f} ({np.abs(d).max() * 1e8:4.0f})"


def main():
    rng = np.random.default_rng(0)
    print(f"{'K':>5} {'inputs':10s} {'OpenBLAS':>12s} " + " ".join(f"{'KB=' + str(b):>12s}" for b in BLOCKS)
          + f" {'plain chain':>12s}")
    for K in (2048, 8192):
        for kind in ("normal", "gelu-like"):
            x = rng.standard_normal((64, K), dtype=np.float32)
            if kind == "gelu-like":
                x = np.maximum(x, np.float32(-0.17))
            w = (rng.standard_normal((K, 256)) * (1.5 / np.sqrt(K))).astype(np.float32)
            truth = x.astype(np.float64) @ w.astype(np.float64)
            cells = [errors(x @ w, truth)] + [errors(blocked_dots(x, w, b), truth) for b in BLOCKS]
            cells.append(errors(blocked_dots(x, w, K), truth))
            print(f"{K:5d} {kind:10s} " + " ".join(f"{c:>12s}" for c in cells))


if __name__ == "__main__":
    main()
