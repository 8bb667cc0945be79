"""The contract's non-dot reductions (NUMERICS.md, "The lane sum"): the 16-lane sum.

lane_sum(v[0..n)): 16 float32 lanes start at +0.0; element i is added to lane i % 16
(ascending i, plain IEEE adds; `lane_sum_sq` uses fma(d, d, lane) instead); then lanes
fold pairwise: for w in 8, 4, 2, 1: lane[l] = lane[l] + lane[l + w] for l < w; the
result is lane[0]. The order depends only on n, and is what SIMD hardware does
naturally, so the fast kernels need no special care to reproduce it.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .fmath import fma

@njit(cache=True, inline="always", error_model="numpy")
def fold16(lanes):
    for w in (8, 4, 2, 1):
        for lane in range(w):
            lanes[lane] = lanes[lane] + lanes[lane + w]
    return lanes[0]


# reference: one element at a time, obviously the definition
@njit(cache=True, error_model="numpy")
def lane_sum_ref(v, n):
    lanes = np.zeros(16, dtype=np.float32)
    for i in range(n):
        lanes[i % 16] = lanes[i % 16] + v[i]
    return fold16(lanes)


@njit(cache=True, error_model="numpy")
def lane_sum_sq_ref(v, c, n):
    """lane sum of (v[i] - c)^2, each term one fma(d, d, lane) with d = v[i] - c rounded."""
    lanes = np.zeros(16, dtype=np.float32)
    for i in range(n):
        d = v[i] - c
        lanes[i % 16] = fma(d, d, lanes[i % 16])
    return fold16(lanes)


# fast: whole 16-element rows so that LLVM keeps the lanes in one vector register
@njit(cache=True, inline="always", error_model="numpy")
def lane_sum(v, n, lanes):
    for lane in range(16):
        lanes[lane] = 0.0
    n16 = n - n % 16
    for i in range(0, n16, 16):
        for lane in range(16):
            lanes[lane] = lanes[lane] + v[i + lane]
    for lane in range(n - n16):
        lanes[lane] = lanes[lane] + v[n16 + lane]
    return fold16(lanes)


@njit(cache=True, inline="always", error_model="numpy")
def lane_sum_sq(v, c, n, lanes):
    for lane in range(16):
        lanes[lane] = 0.0
    n16 = n - n % 16
    for i in range(0, n16, 16):
        for lane in range(16):
            d = v[i + lane] - c
            lanes[lane] = fma(d, d, lanes[lane])
    for lane in range(n - n16):
        d = v[n16 + lane] - c
        lanes[lane] = fma(d, d, lanes[lane])
    return fold16(lanes)
