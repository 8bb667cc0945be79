"""Embeddings: out[b, s, :] = (word[input_ids[b, s]] + token_type[segment_ids[b, s]]) + position[s].

Two float32 adds in that order (NUMERICS.md, "Embeddings"); ids are assumed in range
(the backend checks them).
"""
from __future__ import annotations

from numba import njit


@njit(cache=True, error_model="numpy")
def embed_ref(ids, segs, word, tt, pos, out):
    B, S = ids.shape
    for b in range(B):
        for s in range(S):
            for e in range(word.shape[1]):
                out[b, s, e] = (word[ids[b, s], e] + tt[segs[b, s], e]) + pos[s, e]


@njit(cache=True, error_model="numpy")
def embed_fast(ids, segs, word, tt, pos, out):
    """Serial: a gather of B*S rows of E floats (under 1 ms at xlarge 8 x 128) does not
    repay the 0.5 s that compiling a parallel loop adds to every cold start."""
    B, S = ids.shape
    E = word.shape[1]
    for t in range(B * S):
        b = t // S
        s = t % S
        w = word[ids[b, s]]
        y = tt[segs[b, s]]
        p = pos[s]
        o = out[b, s]
        for e in range(E):
            o[e] = (w[e] + y[e]) + p[e]
