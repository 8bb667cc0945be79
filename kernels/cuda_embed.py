"""Embeddings on the GPU: the CUDA twin of kernels/embed.py.

out[b, s, :] = (word[input_ids[b, s], :] + token_type[segment_ids[b, s], :]) + position[s, :]
(NUMERICS.md, "Embeddings"): two add.rn, in that order. One thread per output element;
ids are range-checked on the host before the launch.
"""
from __future__ import annotations

import numpy as np
from numba import cuda

from .cuda_fmath import add32

_U = np.uint64
THREADS = 256


def make_embed_kernel():
    """kernel(ids [B*S], segs [B*S], word [V*E], tt [T*E], pos [P*E], out [B*S*E], S, E):
    flat arrays (ids/segs int32, tables float32); grid ceil(B*S*E / THREADS)."""
    def embed(ids, segs, word, tt, pos, out, S, E):
        t = cuda.grid(1)
        if t < out.shape[0]:
            e = t % E
            bs = t // E
            s = bs % S
            wv = word[_U(ids[_U(bs)] * E + e)]
            tv = tt[_U(segs[_U(bs)] * E + e)]
            out[_U(t)] = add32(add32(wv, tv), pos[_U(s * E + e)])
    return embed


embed_kernel = cuda.jit(make_embed_kernel())


def launch_embed(ids, segs, word, tt, pos, out, stream=0):
    """ids, segs [B, S] int32 device arrays; word [V, E], tt [T, E], pos [P, E]; out [B, S, E]."""
    B, S = ids.shape
    E = word.shape[1]
    total = B * S * E
    if total == 0:
        return out
    embed_kernel[(total + THREADS - 1) // THREADS, THREADS, stream](
        ids.reshape(B * S), segs.reshape(B * S), word.reshape(word.size), tt.reshape(tt.size),
        pos.reshape(pos.size), out.reshape(total), S, E)
    return out
