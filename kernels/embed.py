"""Embeddings: out[b, s, :] = (word[input_ids[b, s]] + token_type[segment_ids[b, s]]) + position[s].

Two float32 adds in that order (NUMERICS.md, "Embeddings"); ids are assumed in range
(the backend checks them).
"""
from __future__ import annotations

from numba import njit


@njit(cache=True, error_model="numpy")
def embed_ref(ids, segs, word, tt, pos, out):
    """The only embedding kernel, for the reference and cpu backends alike: a serial gather
    of B*S rows of E floats (under 1 ms at xlarge 8 x 128) that a parallel loop would not
    repay (it adds ~0.5 s of compilation to every cold start)."""
    B, S = ids.shape
    for b in range(B):
        for s in range(S):
            for e in range(word.shape[1]):
                out[b, s, e] = (word[ids[b, s], e] + tt[segs[b, s], e]) + pos[s, e]
