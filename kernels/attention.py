"""Multi-head self-attention (NUMERICS.md, "Attention").

For sequence b, the real keys are the positions where `keys` is nonzero, taken in
ascending order as a compact list r_0 < r_1 < ... < r_{n-1}; `keys` is
albert_ref.ops.real_keys(input_mask), which holds the rule (the real tokens, or every
position of a sequence that has none) for every backend.
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

`attention_part` is a template, compiled per instruction-set variant by isa.py: it reads
MR, NR and `gemm_tile` (the variant's dense kernel) from the variant's namespace.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from .fmath import exp32
from .gemm import ORIGIN, dot_ref
from .reduce import lane_sum, lane_sum_ref

def attention_scale(d):
    """NUMERICS.md section 5's score scale for head size d: float32(1/sqrt(d)), computed in
    float64 and rounded to float32 (0x1p-3 for d = 64). Every backend (reference, cpu,
    cuda) takes its scale from here."""
    return np.float32(1.0 / math.sqrt(d))


@njit(cache=True, error_model="numpy")
def real_key_index(keys_row):
    """The positions where keys_row is nonzero, ascending (the rule that chose them is
    albert_ref.ops.real_keys)."""
    n = 0
    for j in range(keys_row.shape[0]):
        if keys_row[j] != 0:
            n += 1
    idx = np.empty(n, dtype=np.int64)
    n = 0
    for j in range(keys_row.shape[0]):
        if keys_row[j] != 0:
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
        col = np.empty(n, dtype=np.float32)
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
                    for j in range(n):
                        col[j] = v[b, idx[j], c0 + c]
                    out[b, i, c0 + c] = dot_ref(w, 1, col, 1, n)


@njit(cache=True, inline="always", error_model="numpy")
def lane_max(v, n, lanes):
    """max(v[0..n)) in 16 vector lanes. The contract's max is a left-to-right scan; the
    two differ only in which of +0.0 / -0.0 a zero maximum is, and in NaN payloads (any
    NaN score makes the whole row NaN), and exp32(s - m) is the same for either zero."""
    for lane in range(16):
        lanes[lane] = v[0]
    n16 = n - n % 16
    for i in range(0, n16, 16):
        for lane in range(16):
            x = v[i + lane]
            lanes[lane] = x if x > lanes[lane] else lanes[lane]
    for lane in range(n - n16):
        x = v[n16 + lane]
        lanes[lane] = x if x > lanes[lane] else lanes[lane]
    m = lanes[0]
    for lane in range(1, 16):
        m = lanes[lane] if lanes[lane] > m else m
    return m


@njit(cache=True, error_model="numpy")
def softmax_rows(sc, ldc, rows, n, scale, lanes):
    """sc[i, :n] <- softmax(sc[i, :n] * scale) in place for i < rows (rows of stride ldc),
    in the reference's order: scale, max, exp32, lane sum, IEEE division; each step
    is a loop that LLVM vectorizes."""
    for i in range(rows):
        row = sc[i * ldc:i * ldc + n]       # loops from 0 over a slice: LLVM vectorizes them
        for j in range(n):
            row[j] = row[j] * scale
        m = lane_max(row, n, lanes)
        for j in range(n):
            row[j] = exp32(row[j] - m)
        total = lane_sum(row, n, lanes)
        for j in range(n):
            row[j] = row[j] / total


def attention_part(q, k, v, mask, num_heads, scale, out, part, parts):
    """Per (sequence, head), two contract GEMMs on the dense micro-kernel: scores =
    Q_h K_h^T with Q_h read in place from q, then context = W V_h written in place into
    out. Only the real keys of K_h and V_h are packed (as B panels). Slice `part` of
    `parts` (albert_ref.parts) takes the part-th of `parts` equal runs of the B * heads
    pairs, each of which writes its own columns of out."""
    B, S, H = q.shape
    d = H // num_heads
    dp = (d + NR - 1) // NR
    qf = q.reshape(q.size)
    of = out.reshape(out.size)
    pairs = B * num_heads
    for t in range(pairs * part // parts, pairs * (part + 1) // parts):
        b = t // num_heads
        c0 = (t % num_heads) * d
        row0 = b * S * H + c0                   # flat index of [b, 0, c0] in q and out
        idx = real_key_index(mask[b])
        n = idx.shape[0]
        np_ = (n + NR - 1) // NR
        ldc = np_ * NR
        kb = np.zeros((np_, d, NR), dtype=np.float32)   # K_h^T [d, n]
        vb = np.zeros((dp, n, NR), dtype=np.float32)    # V_h [n, d]
        for j in range(n):
            kj = k[b, idx[j], c0:c0 + d]
            vj = v[b, idx[j], c0:c0 + d]
            for c in range(d):
                kb[j // NR, c, j % NR] = kj[c]
                vb[c // NR, j, c % NR] = vj[c]
        tmp = np.empty(MR * NR, dtype=np.float32)
        sc = np.empty(S * ldc, dtype=np.float32)
        gemm_tile(qf, row0, H, S, kb, sc, ORIGIN, ldc, ldc, ORIGIN, S, ORIGIN, ldc, ORIGIN, d, tmp,
                  np.empty((MR, d), dtype=np.float32))
        softmax_rows(sc, ldc, S, n, scale, np.empty(16, dtype=np.float32))
        gemm_tile(sc, ORIGIN, ldc, S, vb, of, row0, H, d, ORIGIN, S, ORIGIN, d, ORIGIN, n, tmp,
                  np.empty((MR, n), dtype=np.float32))
