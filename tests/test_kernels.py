"""The portable math's accuracy bounds, the reference kernels against the contract's
written definitions, and the invariances the contract promises (tiling, threads, batch,
masking). Fast kernel == reference kernel, op by op on every variant, is
tests/test_conformance.py."""
from __future__ import annotations

import math

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import njit

from albert_ref.kernel_backend import KernelOps, PackedKernel
from albert_ref.kernels import attention as att
from albert_ref.kernels import embed as emb
from albert_ref.kernels import fmath
from albert_ref.kernels import gemm, isa
from albert_ref.kernels import reduce as red
from albert_ref.testing import assert_equal_bits
from model_util import bits, randn

FAST = settings(max_examples=12, deadline=None)


# --- portable math ----------------------------------------------------------------------------

# not cached: Numba would not notice edits to the inlined fmath
@njit(error_model="numpy")
def _map(code, x, out):
    for i in range(x.size):
        v = x[i]
        if code == 0:
            out[i] = fmath.exp32(v)
        elif code == 1:
            out[i] = fmath.tanh32(v)
        elif code == 2:
            out[i] = fmath.erf32(v)
        elif code == 3:
            out[i] = fmath.erfc32(v)
        elif code == 4:
            out[i] = fmath.gelu_tanh32(v)
        else:
            out[i] = fmath.gelu_erf32(v)


@njit
def _fma_scalar(a, b, c):
    return fmath.fma(a, b, c)


def apply(code, x):
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.empty_like(x)
    _map(code, x, out)
    return out


def ulps(got, want):
    want = np.asarray(want, dtype=np.float64)
    mag = np.maximum(np.abs(want), 2.0 ** -126)
    ulp = 2.0 ** (np.floor(np.log2(mag)) - 23)
    return np.abs(got.astype(np.float64) - want) / ulp


def test_fma_is_fused():
    a = np.float32(1 + 2 ** -23)
    c = -(np.float32(1 + 2 ** -22))
    assert _fma_scalar(a, a, c) == np.float32(2.0 ** -46)  # a*a+c unfused would give 0


def libm(f):
    """A float64 libm function (Python's math module) over an array: the truth for erf and
    erfc, which NumPy lacks, without a test dependency on SciPy."""
    ufunc = np.frompyfunc(f, 1, 1)
    return lambda x: ufunc(x).astype(np.float64)


@pytest.mark.parametrize("code, lo, hi, ref, bound", [
    (0, -104.0, 88.7, np.exp, 1.0),
    (1, -10.0, 10.0, np.tanh, 1.5),
    (2, -5.0, 5.0, libm(math.erf), 2.0),
    (3, -5.0, 10.0, libm(math.erfc), 4.5),
])
def test_transcendental_ulp_bounds(code, lo, hi, ref, bound):
    x = np.linspace(lo, hi, 400_001, dtype=np.float32)
    got = apply(code, x)
    want = ref(x.astype(np.float64))
    keep = np.abs(want) > 2.0 ** -126
    assert ulps(got[keep], want[keep]).max() <= bound


def test_special_values():
    inf, nan = np.float32(np.inf), np.float32(np.nan)
    e = apply(0, np.array([0.0, -0.0, inf, -inf, nan, 89.0, -104.0, 1.0], np.float32))
    assert e[0] == 1 and e[1] == 1 and e[2] == inf and e[3] == 0 and np.isnan(e[4])
    assert e[5] == inf and e[6] == 0 and e[7] == np.float32(math.e)
    t = apply(1, np.array([0.0, 50.0, -50.0, inf, -inf, nan, 1e-30], np.float32))
    assert list(t[:5]) == [0, 1, -1, 1, -1] and np.isnan(t[5]) and t[6] == np.float32(1e-30)
    g = apply(4, np.array([0.0, 100.0, -100.0, 1e30, nan], np.float32))
    assert g[0] == 0 and g[1] == 100 and g[2] == 0 and g[3] == np.float32(1e30) and np.isnan(g[4])
    g = apply(5, np.array([0.0, 100.0, -100.0, 1e30, nan], np.float32))
    assert g[0] == 0 and g[1] == 100 and g[2] == 0 and g[3] == np.float32(1e30) and np.isnan(g[4])


def test_gelu_forms_accurate_for_negative_inputs():
    x = np.linspace(-9.0, 3.0, 200_001, dtype=np.float32)
    xd = x.astype(np.float64)
    u = math.sqrt(2 / math.pi) * (xd + 0.044715 * xd ** 3)
    want = xd / (1 + np.exp(-2 * u))
    got = apply(4, x)
    rel = np.abs(got - want) / np.abs(want).clip(1e-300)
    assert rel.max() < 2e-5  # conditioning of exp(-2u) in float32 u, not cancellation
    want = 0.5 * xd * libm(math.erfc)(-xd / math.sqrt(2))
    assert ulps(apply(5, x), want).max() <= 5.5


# --- reductions ----------------------------------------------------------------------------------

@njit
def _lane_fast(v):
    return red.lane_sum(v, v.shape[0], np.empty(16, np.float32))


@njit
def _lane_sq_fast(v, c):
    return red.lane_sum_sq(v, c, v.shape[0], np.empty(16, np.float32))


@FAST
@given(n=st.sampled_from([1, 7, 13, 16, 17, 129, 513]), seed=st.integers(0, 2 ** 16))
def test_lane_sum_fast_equals_ref(n, seed):
    v = randn(np.random.default_rng(seed), n, scale=10)
    assert bits(np.float32(red.lane_sum_ref(v, n))) == bits(np.float32(_lane_fast(v)))
    c = np.float32(0.3)
    assert bits(np.float32(red.lane_sum_sq_ref(v, c, n))) == bits(np.float32(_lane_sq_fast(v, c)))


# --- dense ---------------------------------------------------------------------------------------

def _dense_case(rng, M, K, N):
    x = randn(rng, M, K, scale=2)
    w = randn(rng, K, N, scale=1.5 / math.sqrt(K))
    b = randn(rng, N, scale=0.3)
    return x, w, b


def test_dense_ref_matches_contract_definition():
    # dot_ref (used by attention's reference) and dense_ref agree, and both follow the
    # written contract: KB-blocks chained by FMA from +0.0, block sums added ascending.
    rng = np.random.default_rng(3)
    x, w, b = _dense_case(rng, 3, 300, 5)
    out = np.empty((3, 5), np.float32)
    gemm.dense_ref(x, w, np.zeros(5, np.float32), 0, out)
    for m in range(3):
        for n in range(5):
            blocks = []
            for k0 in range(0, 300, gemm.KB):
                s = np.float32(0)
                for k in range(k0, min(300, k0 + gemm.KB)):
                    s = np.float32(_fma_scalar(x[m, k], w[k, n], s))
                blocks.append(s)
            total = blocks[0]
            for s in blocks[1:]:
                total = np.float32(total + s)
            assert bits(total) == bits(out[m, n])
            assert bits(np.float32(gemm.dot_ref(np.ascontiguousarray(x[m]), 1, np.ascontiguousarray(w[:, n]), 1, 300))) == bits(total)


@pytest.mark.parametrize("mc, nc, kchunk", [(8, 32, 128), (16, 64, 256), (128, 256, 300), (1024, 32, 128), (12, 40, 1)])
@pytest.mark.parametrize("variant", isa.target().variants)
def test_gemm_bits_independent_of_tiling(variant, mc, nc, kchunk):
    rng = np.random.default_rng(5)
    x, w, b = _dense_case(rng, 77, 300, 130)
    kernels = isa.kernel_set(variant)
    bp = kernels.pack(w)
    want = kernels.dense(x, bp, b, 1, 2, np.empty((77, 130), np.float32))
    got = np.empty((77, 130), np.float32)
    kernels.gemm_packed(x, bp, b, 1, got, mc, nc, kchunk)
    assert_equal_bits(got, want)


def test_dense_rows_independent_of_batch_and_threads():
    rng = np.random.default_rng(6)
    x, w, b = _dense_case(rng, 45, 513, 70)
    one, two = KernelOps(True, threads=1), KernelOps(True, threads=2)
    kern = one.prepare("k/kernel", w)
    full = two.dense(x, kern, b, "gelu_tanh")
    assert_equal_bits(one.dense(x, kern, b, "gelu_tanh"), full)
    assert_equal_bits(two.dense(x[13:14], kern, b, "gelu_tanh"), full[13:14])
    assert_equal_bits(two.dense(x[::3], kern, b, "gelu_tanh"), full[::3])  # non-contiguous rows
    seq = x.reshape(5, 9, 513)
    assert_equal_bits(two.dense(seq[:, 0], kern, b, "tanh"), two.dense(x[::9], kern, b, "tanh"))


def test_prepare_packs_dense_kernels_only():
    ops = KernelOps(True)
    assert isinstance(ops.prepare("bert/pooler/dense/kernel", np.ones((4, 3))), PackedKernel)
    assert isinstance(ops.prepare("cls/seq_relationship/output_weights_t", np.ones((4, 2))), PackedKernel)
    assert isinstance(ops.prepare("cls/predictions/decoder/kernel", np.ones((4, 9))), PackedKernel)
    g = ops.prepare("bert/embeddings/LayerNorm/gamma", np.ones(4))
    assert isinstance(g, np.ndarray) and g.dtype == np.float32
    ref = KernelOps(False).prepare("bert/pooler/dense/kernel", np.ones((4, 3)))
    assert isinstance(ref, np.ndarray) and ref.dtype == np.float32


# --- layer norm -----------------------------------------------------------------------------------

# --- embeddings -----------------------------------------------------------------------------------

def test_embed_ref_matches_contract_definition():
    rng = np.random.default_rng(4)
    word, tt, pos = randn(rng, 50, 7), randn(rng, 2, 7), randn(rng, 20, 7)
    ids = rng.integers(0, 50, (2, 13)).astype(np.int64)
    segs = rng.integers(0, 2, (2, 13)).astype(np.int64)
    want = np.empty((2, 13, 7), np.float32)
    emb.embed_ref(ids, segs, word, tt, pos, want)
    assert_equal_bits(want, (word[ids] + tt[segs]) + pos[:13])


# --- attention -------------------------------------------------------------------------------------

def _att_case(rng, B, S, heads, d):
    H = heads * d
    q, k, v = randn(rng, B, S, H, scale=2), randn(rng, B, S, H, scale=2), randn(rng, B, S, H)
    mask = (rng.random((B, S)) < 0.7).astype(np.int64)
    mask[0, :] = 0                                          # no real key: attends to all
    if B > 1:
        mask[1, :] = (np.arange(S) < max(1, S // 2))        # a prefix, as tokenizers make
    return q, k, v, mask


def _att(q, k, v, mask, heads):
    return KernelOps(True).attention(q, k, v, mask, heads)


def test_attention_masked_keys_are_exact_zeros():
    rng = np.random.default_rng(11)
    q, k, v, mask = _att_case(rng, 3, 20, 2, 16)
    mask[2] = 0
    mask[2, [1, 4, 5, 17]] = 1
    base = _att(q, k, v, mask, 2)
    # anything at masked key positions (even huge values) changes nothing at all
    k2, v2 = k.copy(), v.copy()
    masked = mask == 0
    masked[0] = False                                       # row 0 has no real key: all are used
    k2[masked] = 1e4
    v2[masked] = np.float32(3e38)
    assert_equal_bits(_att(q, k2, v2, mask, 2), base)
    # a sequence alone, or padded to a longer length, gives the same bits
    alone = _att(q[2:3], k[2:3], v[2:3], mask[2:3], 2)
    assert_equal_bits(alone, base[2:3])
    pad = lambda t: np.concatenate([t[2:3], randn(rng, 1, 29, t.shape[2])], axis=1)
    padded = _att(pad(q), pad(k), pad(v), np.pad(mask[2:3], ((0, 0), (0, 29))), 2)
    assert_equal_bits(padded[:, :20], base[2:3])


@njit
def _softmax_scan(row):
    # NUMERICS.md section 5 as written: a left-to-right max, then exp32, lane sum, division
    m = row[0]
    for j in range(1, row.size):
        m = row[j] if row[j] > m else m
    e = np.empty_like(row)
    for j in range(row.size):
        e[j] = fmath.exp32(row[j] - m)
    total = red.lane_sum_ref(e, row.size)
    for j in range(row.size):
        e[j] = e[j] / total
    return e


@FAST
@given(n=st.sampled_from([1, 5, 16, 17, 40, 128, 200]), seed=st.integers(0, 2 ** 16),
       special=st.sampled_from(["none", "zeros", "+inf", "-inf", "nan"]))
def test_softmax_rows_lane_max_matches_the_scan(n, seed, special):
    # the vectorized max may pick -0.0 where the scan picks +0.0 (or the reverse), and
    # NaN payloads may differ; neither may change a single weight's bits
    rng = np.random.default_rng(seed)
    rows = (-np.abs(randn(rng, 4, n, scale=3))).astype(np.float32)
    if special == "zeros":          # a zero maximum of both signs, in every lane position
        rows[:, rng.integers(0, n, max(1, n // 3))] = np.float32(-0.0)
        rows[:, rng.integers(0, n, max(1, n // 3))] = np.float32(0.0)
    elif special != "none":
        rows[1:, rng.integers(0, n)] = np.float32(special)
    got = rows.copy().reshape(-1)
    att.softmax_rows(got, n, 4, n, np.float32(1.0), np.empty(16, np.float32))
    want = np.stack([_softmax_scan(r) for r in rows]).reshape(-1)
    assert_equal_bits(got, want)


def test_attention_matches_float64_softmax():
    from albert_ref.numpy_backend import NumpyOps
    q, k, v, mask = _att_case(np.random.default_rng(12), 3, 13, 2, 8)
    want = NumpyOps().attention(q.astype(np.float64), k.astype(np.float64), v.astype(np.float64), mask, 2)
    assert np.abs(_att(q, k, v, mask, 2) - want).max() < 1e-5


def test_threads_argument():
    assert KernelOps(True, threads=1).threads == 1
    with pytest.raises(ValueError):
        KernelOps(True, threads=numba.config.NUMBA_NUM_THREADS + 1)
    assert KernelOps(True).name == "cpu" and KernelOps(False).name == "reference"


@settings(max_examples=40, deadline=None)
@given(k=st.integers(1, 9), n=st.integers(1, 70), nr=st.sampled_from([12, 24, 64]))
def test_packed_panels_hold_w_column_by_column_and_zeros_past_n(k, n, nr):
    w = np.arange(1, k * n + 1, dtype=np.float32).reshape(k, n)
    panels = gemm.pack_b(w, nr)
    assert panels.shape == (-(-n // nr), k, nr) and panels.dtype == np.float32 and panels.flags.c_contiguous
    for p in range(panels.shape[0]):
        cols = min(nr, n - p * nr)
        assert np.array_equal(panels[p, :, :cols], w[:, p * nr:p * nr + cols])
        assert not panels[p, :, cols:].any()
