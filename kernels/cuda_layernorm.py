"""LayerNorm of (x + residual) on the GPU, TF's order: the CUDA twin of kernels/layernorm.py.

Per row of n values (NUMERICS.md, "LayerNorm"):
  z_i   = x_i + r_i                              add.rn (z = x without a residual)
  mean  = lane_sum(z) / n                        lane sum (cuda_reduce), div.rn
  var   = lane_sum_sq(z, mean) / n               lanes chain fma.rn(d, d, lane), d = z_i - mean (sub.rn)
  rs    = 1 / sqrt(var + eps)                    add.rn, sqrt.rn, div.rn
  inv_i = rs * gamma_i                           mul.rn
  y_i   = z_i * inv_i + (beta_i - mean * inv_i)  mul.rn, mul.rn, sub.rn, add.rn: four roundings, no FMA

A CTA normalises ROWS rows with 16 threads each; thread l of a row runs lane l's chains
(elements l, l + 16, ...), so a row's 16 lanes are exactly the contract's 16 lanes. z is
recomputed in each pass (the same operation on the same inputs: the same bits) rather
than stored, so the kernel needs no row buffer and takes any n.
"""
from __future__ import annotations

import functools

import numpy as np
from numba import cuda, float32

from .cuda_fmath import add32, div32, fma32, mul32, sqrt32, sub32
from .cuda_reduce import fold16

_U = np.uint64
_ZERO = np.float32(0.0)
_ONE = np.float32(1.0)
ROWS = 8            # rows per CTA: 128 threads


def make_layer_norm_kernel(has_res: bool, rows: int = ROWS):
    """kernel(x, res, gamma, beta, eps, out, M, n): x, res, out flat [M*n] float32 (res is
    ignored when has_res is False), gamma/beta [n]; grid ceil(M/rows), 16*rows threads."""
    PART = 16 * rows

    def layer_norm(x, res, gamma, beta, eps, out, M, n):
        part = cuda.shared.array(PART, float32)
        tid = cuda.threadIdx.x
        r = tid // 16
        lane = tid % 16
        row = cuda.blockIdx.x * rows + r
        live = row < M
        row = row if live else M - 1      # every thread takes part in every barrier
        base = row * n
        nf = np.float32(n)

        acc = _ZERO
        for i in range(lane, n, 16):
            z = add32(x[_U(base + i)], res[_U(base + i)]) if has_res else x[_U(base + i)]
            acc = add32(acc, z)
        part[_U(tid)] = acc
        cuda.syncthreads()
        mean = div32(fold16(part, r * 16), nf)
        cuda.syncthreads()

        acc = _ZERO
        for i in range(lane, n, 16):
            z = add32(x[_U(base + i)], res[_U(base + i)]) if has_res else x[_U(base + i)]
            d = sub32(z, mean)
            acc = fma32(d, d, acc)
        part[_U(tid)] = acc
        cuda.syncthreads()
        var = div32(fold16(part, r * 16), nf)
        rs = div32(_ONE, sqrt32(add32(var, eps)))

        if live:
            for i in range(lane, n, 16):
                z = add32(x[_U(base + i)], res[_U(base + i)]) if has_res else x[_U(base + i)]
                inv = mul32(rs, gamma[_U(i)])
                out[_U(base + i)] = add32(mul32(z, inv), sub32(beta[_U(i)], mul32(mean, inv)))

    layer_norm.__name__ = layer_norm.__qualname__ = f"layer_norm_{'res' if has_res else 'plain'}_{rows}"
    return layer_norm


@functools.lru_cache(maxsize=None)
def layer_norm_kernel(has_res: bool, rows: int = ROWS):
    return cuda.jit(make_layer_norm_kernel(bool(has_res), rows))


def launch_layer_norm(x, res, gamma, beta, eps, out, rows=ROWS, stream=0):
    """out [M, n] = LayerNorm(x + res) (res None: of x); float32 device arrays, C order."""
    M, n = x.shape
    if M == 0:
        return out
    kernel = layer_norm_kernel(res is not None, rows)
    x1 = x.reshape(M * n)
    kernel[(M + rows - 1) // rows, 16 * rows, stream](
        x1, x1 if res is None else res.reshape(M * n), gamma, beta, np.float32(eps), out.reshape(M * n), M, n)
    return out
