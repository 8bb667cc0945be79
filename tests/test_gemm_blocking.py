"""The GEMM's speed parameters never change its bits: a micro-kernel call that covers several
KB-blocks (folding each into C before the next), its unrolled k loop with a remainder, the
near-equal cache tiles and the thread slices all give the reference kernel's bits
(NUMERICS.md, "Dot products"). The shipped variants' own settings are held to the
reference by tests/test_conformance.py; here the settings themselves vary, on the 128-bit
tile shape that every host runs."""
from __future__ import annotations

import dataclasses
import functools

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from albert_ref.kernels import gemm, isa
from albert_ref.testing import assert_equal_bits
from model_util import randn

SSE = isa.VARIANTS["sse"]


@functools.lru_cache(maxsize=None)
def kernels(unroll, kblocks):
    """A kernel set of the sse shape with these settings, cached under its own name."""
    v = dataclasses.replace(SSE, name=f"test_u{unroll}_kb{kblocks}", doc="test", unroll=unroll, kblocks=kblocks)
    return isa.KernelSet(v)


@settings(max_examples=30, deadline=None)
@given(M=st.integers(1, 13), K=st.integers(1, 700), N=st.integers(1, 40),
       setting=st.sampled_from([(1, 1), (3, 2), (4, 3)]),
       mc=st.integers(1, 16), nc=st.integers(1, 48), kchunk=st.sampled_from([128, 256, 640, 1024]),
       threads=st.integers(1, 3), act=st.sampled_from([0, 1]), seed=st.integers(0, 2**16))
def test_blocking_and_unrolling_keep_the_reference_bits(M, K, N, setting, mc, nc, kchunk, threads, act, seed):
    rng = np.random.default_rng(seed)
    x, w, b = randn(rng, M, K, scale=2), randn(rng, K, N, scale=1.5 / np.sqrt(K)), randn(rng, N, scale=0.3)
    want = np.empty((M, N), np.float32)
    gemm.dense_ref(x, w, b, act, want)
    ks = kernels(*setting)
    got = np.full((M, N), np.nan, np.float32)
    ks.gemm_packed(x, ks.pack(w), b, act, got, mc, nc, kchunk, threads)
    assert_equal_bits(got, want)


def test_slices_cover_the_output_once_with_equal_work():
    """gemm_part's slices: every output written by exactly one, and equal work for each
    (N = 2048 in tiles of at most 240 columns used to leave one slice 11% more)."""
    M, N, parts = 1024, 2048, 2
    ks = kernels(1, 1)
    x = np.ones((M, 1), np.float32)
    bp = ks.pack(np.ones((1, N), np.float32))
    bias = np.zeros(N, np.float32)
    out = np.full((M, N), np.nan, np.float32)
    written = []
    for part in range(parts):
        before = np.isnan(out)
        out[~before] = -7.0             # outputs of earlier slices: must stay untouched
        ks.gemm_part(x, bp, bias, 0, out, 64, 240, 128, part, parts)
        assert np.all(out[~before] == -7.0), "an output written by two slices"
        assert np.all(out[before & ~np.isnan(out)] == 1.0)
        written.append(int(np.count_nonzero(before & ~np.isnan(out))))
    assert sum(written) == M * N
    assert max(written) <= 1.05 * min(written), written
