"""LayerNorm of (x + residual) over the last axis, TF's order (NUMERICS.md, "LayerNorm").

Per row of n = H values:
  z_i   = x_i + r_i                              (no add when there is no residual)
  mean  = lane_sum(z) / n                        (IEEE division by float32(n))
  var   = lane_sum_sq(z, mean) / n               (terms fma(d, d, lane), d = z_i - mean)
  rs    = 1 / sqrt(var + eps)                    (eps as float32; IEEE sqrt and division)
  inv_i = rs * gamma_i
  y_i   = z_i * inv_i + (beta_i - mean * inv_i)  (each operation rounded, no FMA)
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from .reduce import lane_sum, lane_sum_ref, lane_sum_sq, lane_sum_sq_ref

_F32 = np.float32


@njit(cache=True, error_model="numpy")
def layer_norm_ref(x, res, has_res, gamma, beta, eps, out):
    """x, res, out: [M, n]; res ignored unless has_res."""
    M, n = x.shape
    nf = _F32(n)
    z = np.empty(n, dtype=np.float32)
    for m in range(M):
        for i in range(n):
            z[i] = x[m, i] + res[m, i] if has_res else x[m, i]
        mean = lane_sum_ref(z, n) / nf
        var = lane_sum_sq_ref(z, mean, n) / nf
        rs = _F32(1.0) / np.float32(math.sqrt(var + eps))
        for i in range(n):
            inv = rs * gamma[i]
            out[m, i] = z[i] * inv + (beta[i] - mean * inv)


@njit(cache=True, nogil=True, error_model="numpy")
def layer_norm_part(x, res, has_res, gamma, beta, eps, out, part, parts):
    """The fast kernel, on slice `part` of `parts` of the rows (albert_ref.parts)."""
    M, n = x.shape
    nf = _F32(n)
    for m in range(M * part // parts, M * (part + 1) // parts):
        lanes = np.empty(16, dtype=np.float32)
        z = out[m]
        if has_res:
            for i in range(n):
                z[i] = x[m, i] + res[m, i]
        else:
            for i in range(n):
                z[i] = x[m, i]
        mean = lane_sum(z, n, lanes) / nf
        var = lane_sum_sq(z, mean, n, lanes) / nf
        rs = _F32(1.0) / np.float32(math.sqrt(var + eps))
        for i in range(n):
            inv = rs * gamma[i]
            z[i] = z[i] * inv + (beta[i] - mean * inv)
