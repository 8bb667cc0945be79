"""Multi-head self-attention on the GPU: the CUDA twin of kernels/attention.py.

NUMERICS.md, "Attention": for sequence b, the real keys are the ascending positions
r_0 < ... < r_{n-1} with input_mask != 0 (all positions when there is none); for head h
and every query position i:
  s_j = dot(q[b,i,h], k[b,r_j,h]) * scale       dot: KB-blocked fma.rn chains, then mul.rn
  m   = max_j s_j                                (see below)
  e_j = exp32(s_j - m)                           sub.rn, exp32 of kernels/fmath.py
  den = lane_sum(e_0 .. e_{n-1})                 16 lanes of add.rn, folded (cuda_reduce)
  w_j = e_j / den                                div.rn
  out[b,i,h*d+c] = dot over j of (w_j, v[b,r_j,h*d+c])   KB-blocked fma.rn chains over j
Masked keys are not in the list (the host passes it compacted: `idx`, `nreal`), so their
weight is exactly zero by construction, whatever the padded length or batch.

A CTA serves one (sequence, head) and WQ query rows, a warp (32 threads) per row; the
row's q, its scores and the reduction scratch live in dynamic shared memory. The keys
are taken 32 at a time: the CTA stages their K rows in shared memory (coalesced reads,
transposed), and lane t of every row computes the score of key j0 + t (a whole chain
over the head's columns, never split),
threads 0..15 run the 16 lane chains of the softmax sum, and lane t computes the outputs
c = t, t + 32, ... (each a whole chain over the real keys, ascending). Barriers separate
the phases (no warp shuffles, so the simulator runs the kernel as it is).

The max. The reference takes m = s_0, then m = s_j if s_j > m for j = 1, 2, ...: that is
s_0 when s_0 is NaN, else the largest non-NaN score. Here each lane keeps the largest of
its scores starting from -inf (a NaN never wins a `>`), one thread takes the largest of
the 32 lane values, and m = s_0 if s_0 is NaN: the same value, except that when the
largest score is a zero, its sign may differ, which cannot change any e_j (s_j - (+0) and
s_j - (-0) are equal unless s_j is a zero, and exp32(+0) = exp32(-0) = 1).
"""
from __future__ import annotations

import functools

import numpy as np
from numba import cuda, float32

from .attention import attention_scale
from .cuda_fmath import add32, div32, exp32, fma32, mul32, sub32
from .cuda_reduce import fold16
from .gemm import KB

_U = np.uint64
_ZERO = np.float32(0.0)
_NEG_INF = np.float32(-np.inf)
WQ = 8                                   # query rows (warps) per CTA
DYNAMIC_SMEM_LIMIT = 48 * 1024


def smem_floats(S, d, wq):
    """Dynamic shared memory of one CTA, in floats: a K chunk (32 keys, rows padded to 33
    so that its transposed stores and its loads are conflict-free), then per query row
    its q, its scores and 32 floats of reduction scratch."""
    return 33 * d + wq * (d + S + 32)


def make_attention_kernel(wq: int = WQ):
    """kernel(q, k, v, idx, nreal, scale, out, S, H, d, heads): q, k, v, out flat
    [B*S*H] float32; idx flat [B*S] int32 (row b: the real key positions, ascending, then
    anything), nreal [B] int32; grid (B*heads, ceil(S/wq)), 32*wq threads, dynamic shared
    memory 4*smem_floats(S, d, wq) bytes."""
    def attention(q, k, v, idx, nreal, scale, out, S, H, d, heads):
        sm = cuda.shared.array(0, float32)
        tid = cuda.threadIdx.x
        w = tid // 32
        lane = tid % 32
        b = cuda.blockIdx.x // heads
        c0 = (cuda.blockIdx.x % heads) * d
        i = cuda.blockIdx.y * wq + w
        live = i < S
        i = i if live else S - 1            # every thread takes part in every barrier
        n = nreal[_U(b)]
        ib = b * S                          # idx row of sequence b
        nt = 32 * wq
        qs = 33 * d + w * (d + S + 32)      # this row's q (after the staged K chunk)
        sc = qs + d                         # its scores, then weights
        red = sc + S                        # its reduction scratch (32 floats)

        qrow = (b * S + i) * H + c0
        for c in range(lane, d, 32):
            sm[_U(qs + c)] = q[_U(qrow + c)]
        cuda.syncthreads()

        mloc = _NEG_INF
        for j0 in range(0, n, 32):          # scores, 32 keys at a time: lane t <-> key j0 + t
            kc = n - j0
            kc = 32 if kc > 32 else kc
            cuda.syncthreads()              # the previous chunk has been read
            for e in range(tid, kc * d, nt):    # stage K rows (coalesced), transposed: Ks[c*33 + t]
                t = e // d
                c = e % d
                sm[_U(c * 33 + t)] = k[_U((b * S + idx[_U(ib + j0 + t)]) * H + c0 + c)]
            cuda.syncthreads()
            if lane < kc:
                tot = _ZERO
                for cb in range(0, d, KB):
                    ce = cb + KB
                    ce = d if d < ce else ce
                    s = _ZERO
                    for c in range(cb, ce):
                        s = fma32(sm[_U(qs + c)], sm[_U(c * 33 + lane)], s)
                    tot = s if cb == 0 else add32(tot, s)
                s = mul32(tot, scale)
                sm[_U(sc + j0 + lane)] = s
                mloc = s if s > mloc else mloc
        sm[_U(red + lane)] = mloc
        cuda.syncthreads()

        m = _NEG_INF
        for t in range(32):
            mt = sm[_U(red + t)]
            m = mt if mt > m else m
        s0 = sm[_U(sc)]
        m = s0 if s0 != s0 else m
        cuda.syncthreads()

        for j in range(lane, n, 32):
            sm[_U(sc + j)] = exp32(sub32(sm[_U(sc + j)], m))
        cuda.syncthreads()

        if lane < 16:                       # the 16 lane chains of the softmax sum
            acc = _ZERO
            for j in range(lane, n, 16):
                acc = add32(acc, sm[_U(sc + j)])
            sm[_U(red + lane)] = acc
        cuda.syncthreads()
        den = fold16(sm, red)

        for j in range(lane, n, 32):
            sm[_U(sc + j)] = div32(sm[_U(sc + j)], den)
        cuda.syncthreads()

        if live:                            # context: lane-strided columns, whole chains over j
            orow = (b * S + i) * H + c0
            for c in range(lane, d, 32):
                tot = _ZERO
                for jb in range(0, n, KB):
                    je = jb + KB
                    je = n if n < je else je
                    s = _ZERO
                    for j in range(jb, je):
                        vr = (b * S + idx[_U(ib + j)]) * H + c0 + c
                        s = fma32(sm[_U(sc + j)], v[_U(vr)], s)
                    tot = s if jb == 0 else add32(tot, s)
                out[_U(orow + c)] = tot

    attention.__name__ = attention.__qualname__ = f"attention_{wq}"
    return attention


@functools.lru_cache(maxsize=None)
def attention_kernel(wq: int = WQ):
    return cuda.jit(make_attention_kernel(wq))


def key_index(keys):
    """Host side: (idx [B, S] int32, nreal [B] int32), the positions where keys [B, S] is
    true (albert_ref.ops.real_keys chose them), compacted per sequence, padded with zeros."""
    keys = np.asarray(keys, dtype=bool)
    B, S = keys.shape
    idx = np.zeros((B, S), dtype=np.int32)
    nreal = keys.sum(axis=1).astype(np.int32)
    for b in range(B):
        idx[b, :nreal[b]] = np.flatnonzero(keys[b])
    return idx, nreal


def launch_attention(q, k, v, idx, nreal, num_heads, out, wq=WQ, stream=0):
    """out [B, S, H] = attention of q, k, v [B, S, H] (C-order float32 device arrays) over
    the real keys idx [B, S], nreal [B] (device int32, from `key_index`)."""
    B, S, H = q.shape
    d = H // num_heads
    if B * S * H == 0:
        return out
    while wq > 1 and 4 * smem_floats(S, d, wq) > DYNAMIC_SMEM_LIMIT:
        wq //= 2
    if 4 * smem_floats(S, d, wq) > DYNAMIC_SMEM_LIMIT:
        raise ValueError(f"attention: sequence length {S} with head size {d} needs more than 48 KiB "
                         f"of shared memory per query row")
    scale = attention_scale(d)
    attention_kernel(wq)[(B * num_heads, (S + wq - 1) // wq), 32 * wq, stream, 4 * smem_floats(S, d, wq)](
        q.reshape(B * S * H), k.reshape(B * S * H), v.reshape(B * S * H), idx.reshape(B * S), nreal,
        scale, out.reshape(B * S * H), S, H, d, num_heads)
    return out
