"""Multi-head self-attention (NUMERICS.md, "Attention").

For sequence b, the real keys are the positions with input_mask != 0 (all positions if
there is none), taken in ascending order as a compact list r_0 < r_1 < ... < r_{n-1}.
For head h (columns h*d .. h*d+d-1 of q, k, v), every query position i (padded ones too):
  s_j   = dot(q[b,i,h], k[b,r_j,h]) * scale        dot: the dense contract over d terms;
                                                   scale = float32(1/sqrt(d)), multiplied
  m     = max_j s_j
  e_j   = exp32(s_j - m)
  sum   = lane_sum(e_0 .. e_{n-1})
  w_j   = e_j / sum                                IEEE division
  out[b,i,h*d+c] = dot over j of (w_j, v[b,r_j,h*d+c])   the dense contract over n terms
Masked keys take no part at all: their weight is exactly 0 by construction, and the
result at any position does not depend on padding or on the other sequences.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .fmath import exp32
from .gemm import KB, MR, NR, _micro, dot_ref
from .reduce import lane_sum, lane_sum_ref

_F32 = np.float32


@njit(cache=True, error_model="numpy")
def real_key_index(mask_row):
    n = 0
    for j in range(mask_row.shape[0]):
        if mask_row[j] != 0:
            n += 1
    if n == 0:
        return np.arange(mask_row.shape[0])
    idx = np.empty(n, dtype=np.int64)
    n = 0
    for j in range(mask_row.shape[0]):
        if mask_row[j] != 0:
            idx[n] = j
            n += 1
    return idx


@njit(cache=True, error_model="numpy")
def attention_ref(q, k, v, mask, num_heads, scale, out):
    """q, k, v, out: [B, S, H] float32 (C order); mask [B, S]."""
    B, S, H = q.shape
    d = H // num_heads
    for b in range(B):
        idx = real_key_index(mask[b])
        n = idx.shape[0]
        s = np.empty(n, dtype=np.float32)
        w = np.empty(n, dtype=np.float32)
        for h in range(num_heads):
            c0 = h * d
            for i in range(S):
                for j in range(n):
                    s[j] = dot_ref(q[b, i, c0:], 1, k[b, idx[j], c0:], 1, d) * scale
                m = s[0]
                for j in range(1, n):
                    if s[j] > m:
                        m = s[j]
                for j in range(n):
                    w[j] = exp32(s[j] - m)
                total = lane_sum_ref(w, n)
                for j in range(n):
                    w[j] = w[j] / total
                for c in range(d):
                    # v column c over the real keys, gathered in order
                    col = np.empty(n, dtype=np.float32)
                    for j in range(n):
                        col[j] = v[b, idx[j], c0 + c]
                    out[b, i, c0 + c] = dot_ref(w, 1, col, 1, n)


@njit(cache=True, error_model="numpy")
def _gemm_padded(ap, bp, kdim, c, ldc):
    """c[:Mp, :Np] = contract dots of packed A [Mp/MR, kdim, MR] and packed B [Np/NR, kdim, NR]."""
    af = ap.reshape(ap.size)
    bf = bp.reshape(bp.size)
    for k0 in range(0, kdim, KB):
        kc = min(KB, kdim - k0)
        acc = 1 if k0 > 0 else 0
        for pj in range(bp.shape[0]):
            b_off = (pj * kdim + k0) * NR
            for pi in range(ap.shape[0]):
                _micro(af, (pi * kdim + k0) * MR, MR, 1, bf, b_off, kc, c, pi * MR * ldc + pj * NR, ldc, acc)


@njit(parallel=True, cache=True, error_model="numpy")
def attention_fast(q, k, v, mask, num_heads, scale, out):
    B, S, H = q.shape
    d = H // num_heads
    mp = (S + MR - 1) // MR
    dp = (d + NR - 1) // NR
    for t in prange(B * num_heads):
        b = t // num_heads
        c0 = (t % num_heads) * d
        idx = real_key_index(mask[b])
        n = idx.shape[0]
        np_ = (n + NR - 1) // NR
        lanes = np.empty(16, dtype=np.float32)
        # scores = Q_h K_h^T: A = Q_h [S, d], B = K_h^T [d, n]
        qa = np.zeros((mp, d, MR), dtype=np.float32)
        for i in range(S):
            for c in range(d):
                qa[i // MR, c, i % MR] = q[b, i, c0 + c]
        kb = np.zeros((np_, d, NR), dtype=np.float32)
        for j in range(n):
            for c in range(d):
                kb[j // NR, c, j % NR] = k[b, idx[j], c0 + c]
        ldc = np_ * NR
        sc = np.empty(mp * MR * ldc, dtype=np.float32)
        _gemm_padded(qa, kb, d, sc, ldc)
        # softmax rows -> packed A for the context product: A = W [S, n]
        wa = np.zeros((mp, n, MR), dtype=np.float32)
        row = np.empty(n, dtype=np.float32)
        for i in range(S):
            base = i * ldc
            for j in range(n):
                row[j] = sc[base + j] * scale
            m = row[0]
            for j in range(1, n):
                m = row[j] if row[j] > m else m
            for j in range(n):
                row[j] = exp32(row[j] - m)
            total = lane_sum(row, n, lanes)
            pi = i // MR
            r = i % MR
            for j in range(n):
                wa[pi, j, r] = row[j] / total
        # context = W V_h: B = V_h [n, d]
        vb = np.zeros((dp, n, NR), dtype=np.float32)
        for j in range(n):
            for c in range(d):
                vb[c // NR, j, c % NR] = v[b, idx[j], c0 + c]
        ldo = dp * NR
        ctx = np.empty(mp * MR * ldo, dtype=np.float32)
        _gemm_padded(wa, vb, n, ctx, ldo)
        for i in range(S):
            for c in range(d):
                out[b, i, c0 + c] = ctx[i * ldo + c]
