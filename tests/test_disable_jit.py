"""NUMBA_DISABLE_JIT=1 (Numba's debugging mode: every @njit function runs as Python) runs
every kernel, with the same bits: the intrinsics' pure-Python twins (kernels/fmath.py's
fma_exact, float32_bits, float32_from_bits; gemm.micro_exact) round exactly as the LLVM code.
"""
import functools
import json
import os
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from model_util import bits, random_inputs, tiny_config
from numba import njit

from albert_ref.kernels import fmath, gemm
from albert_ref.kernels.fmath import fma_exact
from albert_ref.testing import assert_equal_bits

F = np.float32


@njit
def _fma_llvm(a, b, c, out):
    for i in range(a.shape[0]):
        out[i] = fmath.fma(a[i], b[i], c[i])


def fma_llvm(a, b, c):
    """The intrinsic (llvm.fma.f32), elementwise."""
    a, b, c = (np.atleast_1d(np.asarray(v, dtype=F)) for v in (a, b, c))
    out = np.empty_like(a)
    _fma_llvm(a, b, c, out)
    return out


def fma_exact_map(a, b, c):
    """fma_exact, elementwise."""
    return np.array([fma_exact(x, y, z) for x, y, z in zip(a, b, c)], dtype=F)


def fma_fraction(a, b, c) -> F:
    """a*b + c of finite float32s, exact in rationals, rounded once to float32 (to nearest,
    ties to even; 2^-149 quanta below 2^-126; overflow at FLT_MAX + half an ulp)."""
    q = Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c))
    if q == 0:  # the sign of an exact zero: float64 adds the exact product exactly
        return F(float(a) * float(b) + float(c))
    m = abs(q)
    e = m.numerator.bit_length() - m.denominator.bit_length()       # 2^e <= m < 2^(e+2)
    if m >= Fraction(2) ** (e + 1):
        e += 1
    quantum = Fraction(2) ** max(e - 23, -149)
    n, rest = divmod(m, quantum)
    if rest > quantum / 2 or (rest == quantum / 2 and n % 2):
        n += 1
    r = n * quantum
    value = np.inf if r >= 2 ** 128 else float(r)
    return F(-value if q < 0 else value)


# fma(2^-12 (1 + 2^-18), 2^-12 (1 - 2^-18), 1 + 2^-23) = 1 + 3*2^-24 - 2^-60 exactly: just below
# the midpoint between 1 + 2^-23 and 1 + 2^-22, and within half a float64 ulp of it.
MID_A, MID_B, MID_C = F(2 ** -12 * (1 + 2 ** -18)), F(2 ** -12 * (1 - 2 ** -18)), F(1 + 2 ** -23)


def test_fma_exact_rounds_once_where_naive_and_double_rounding_do_not():
    want = F(1 + 2 ** -23)
    double_rounded = F(float(MID_A) * float(MID_B) + float(MID_C))   # to float64 (the midpoint), then float32
    naive = F(MID_A * MID_B) + MID_C                                 # product rounded to float32 first
    assert double_rounded == naive == F(1 + 2 ** -22) != want
    assert fma_fraction(MID_A, MID_B, MID_C) == want
    assert fma_llvm(MID_A, MID_B, MID_C)[0] == want
    got = fma_exact(MID_A, MID_B, MID_C)
    assert type(got) is F and got == want
    assert fma_exact(-MID_A, MID_B, -MID_C) == -want                 # the mirror image, below zero
    # 1 + (2^-24 + 2^-41 + 2^-60): 2^-41 + 2^-60 above the midpoint between 1 and 1 + 2^-23, not a
    # tie; it rounds up however it is rounded (through float64 too), so it tells no method apart
    up_a, up_b = F(2 ** -12 * (1 + 2 ** -18)), F(2 ** -12 * (1 + 2 ** -18))
    assert fma_exact(up_a, up_b, F(1.0)) == fma_llvm(up_a, up_b, F(1.0))[0] == F(1 + 2 ** -23)


def _adversarial(rng, n):
    """Float32 triples whose a*b + c lands near float32 midpoints, cancels, or underflows."""
    a = rng.standard_normal(n).astype(F)
    b = rng.standard_normal(n).astype(F)
    c = (-(a.astype(np.float64) * b)).astype(F)                      # near-total cancellation
    third = n // 3
    c[:third] = rng.standard_normal(third).astype(F)
    # c a float32 whose ulp is 2^k times the product's last bit: p's low bits straddle c's midpoints
    scale = np.ldexp(np.ones(third), rng.integers(-30, 1, third)).astype(F)
    a[third:2 * third] = a[third:2 * third] * scale
    a[:200] *= F(1e-20)                                               # subnormal products and results
    b[:200] *= F(1e-19)
    c[:100] = F(0.0)
    c[100:200] = F(-0.0)
    a[200:300] = F(3e38)                                              # overflow
    return a, b, c


def _near_midpoints(rng, n):
    """Float32 triples with a*b within a float32 rounding of +-half an ulp of c: a*b + c lies
    next to a float32 midpoint, where rounding through float64 first lands on the midpoint
    for about 2% of them (2.2% of 10^6 such triples; 0 of 10^6 plain random ones)."""
    c = (rng.uniform(1, 2, n) * np.ldexp(1.0, rng.integers(-60, 60, n)) * rng.choice([-1, 1], n)).astype(F)
    half_ulp = np.spacing(np.abs(c)).astype(np.float64) / 2 * rng.choice([-1, 1], n)
    a = (rng.uniform(1, 2, n) * np.ldexp(1.0, rng.integers(-20, 20, n))).astype(F)
    return a, (half_ulp / a).astype(F), c


def test_fma_exact_matches_llvm_fma_near_midpoints():
    a, b, c = _near_midpoints(np.random.default_rng(3), 4000)
    want = fma_llvm(a, b, c)
    double_rounded = (a.astype(np.float64) * b + c).astype(F)
    assert np.any(bits(double_rounded) != bits(want))      # the set holds cases that tell the two apart
    assert_equal_bits(fma_exact_map(a, b, c), want)
    assert all(bits(fma_fraction(*t)) == bits(w) for t, w in zip(zip(a[:300], b[:300], c[:300]), want[:300]))


def test_fma_exact_matches_llvm_fma_elementwise_with_specials():
    """Cancellation, scaled products and the IEEE special cases: signed zeros, subnormal
    results, overflow, infinities, NaN."""
    a, b, c = _adversarial(np.random.default_rng(1), 6000)
    specials = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45, 1.0, 3.4e38], dtype=F)
    grid = np.array(np.meshgrid(specials, specials, specials)).reshape(3, -1).astype(F)
    a, b, c = (np.concatenate([v, g]) for v, g in zip((a, b, c), grid))
    assert_equal_bits(fma_exact_map(a, b, c), fma_llvm(a, b, c))


finite32 = st.floats(width=32, allow_nan=False, allow_infinity=False).map(F)


@settings(max_examples=300, deadline=None)
@given(finite32, finite32, finite32, st.integers(-40, 40), st.sampled_from([-0.5, 0.5]))
def test_fma_exact_is_the_exactly_rounded_sum(a, b, c, shift, side):
    """Against rational arithmetic: (a, b, c); c moved next to -a*b (cancellation) scaled by
    2^shift; and b replaced by one that puts a*b + c next to a float32 midpoint."""
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        near = F(np.ldexp(-(float(a) * float(b)), shift))
        b_mid = F(np.float64(side) * np.spacing(abs(c)) / np.float64(a))
    triples = [(a, b, c), (a, b, near), (a, b, near + c), (a, b_mid, c)]
    for t in (t for t in triples if all(np.isfinite(t))):
        assert bits(fma_exact(*t)) == bits(fma_fraction(*t)), t


def test_fma_exact_refuses_other_than_float32():
    with pytest.raises(TypeError):
        fma_exact(F(1.0), 2.0, F(0.0))
    with pytest.raises(TypeError):
        fma_exact(F(1.0), np.float64(2.0), F(0.0))


@functools.cache
def micro_llvm(mr, nr, vw, unroll):
    """gemm.make_micro's compiled micro-kernel, callable from Python."""
    micro = gemm.make_micro(mr, nr, vw, unroll)

    @njit
    def call(a, a_off, a_rs, b, b_off, kc, c, c_off, ldc, accumulate):
        micro(a, a_off, a_rs, b, b_off, kc, c, c_off, ldc, accumulate)
    return call


@pytest.mark.parametrize("accumulate", [0, 1])
@pytest.mark.parametrize("kc", [0, 1, 129, 300])
def test_micro_exact_folds_blocks_as_the_compiled_micro_kernel(kc, accumulate):
    """micro_exact == the LLVM micro-kernel on a 2 x 8 tile in a larger, prefilled C, for
    no k (zeros stored, or C kept), one, and two or three KB-blocks folded into C; with
    accumulate == 0 each output is also the contract's dot product (gemm.dot_ref)."""
    mr, nr, a_rs, a_off, b_off, c_off, ldc = 2, 8, 307, 5, 16, 3, 11
    rng = np.random.default_rng(kc)
    a = rng.standard_normal(a_off + mr * a_rs).astype(F)
    b = rng.standard_normal(b_off + max(kc, 1) * nr).astype(F)
    c0 = rng.standard_normal(c_off + mr * ldc).astype(F)
    got, want = c0.copy(), c0.copy()
    gemm.micro_exact(mr, nr, a, a_off, a_rs, b, b_off, kc, got, c_off, ldc, accumulate)
    micro_llvm(mr, nr, 4, 2)(a, a_off, a_rs, b, b_off, kc, want, c_off, ldc, accumulate)
    assert_equal_bits(got, want)
    tile = got[c_off:].reshape(mr, ldc)[:, :nr]
    if accumulate == 0:
        dots = [[gemm.dot_ref(a[a_off + r * a_rs:], 1, b[b_off + n:], nr, kc) for n in range(nr)] for r in range(mr)]
        assert_equal_bits(tile, np.array(dots, dtype=F))


# A tiny model under NUMBA_DISABLE_JIT in a subprocess: every kernel (embedding, LayerNorm,
# the GEMM through micro_exact, attention with a padded sequence, erf GELU, the pooler's tanh)
# as Python, on 2 threads; its outputs' bits printed as JSON.
_RUN = """
import json, sys
import numpy as np
import albert_ref
from albert_ref.kernels import fmath
assert fmath.fma is fmath.fma_exact, "NUMBA_DISABLE_JIT was not in effect"
ids, mask, seg = (np.array(v, dtype=np.int32) for v in json.loads(sys.argv[2]))
out = albert_ref.load(sys.argv[1], threads=2)(ids, mask, seg)
print(json.dumps({k: np.ascontiguousarray(v, dtype=np.float32).view(np.uint32).tolist() for k, v in out.items()}))
"""


def test_tiny_model_gives_the_same_bits_without_the_jit(tmp_path):
    import albert_ref
    from albert_ref.weights.model_file import write_model
    from model_util import random_model_file

    config = tiny_config(hidden_act="gelu_erf", num_hidden_layers=2)
    path = tmp_path / "tiny.h5"
    write_model(path, random_model_file(config, seed=5))
    batch = random_inputs(config, [3, 1], seed=2)          # (input_ids, input_mask, segment_ids)
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    proc = subprocess.run([sys.executable, "-c", _RUN, str(path), json.dumps([v.tolist() for v in batch])], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    python = json.loads(proc.stdout)
    jitted = albert_ref.load(path, threads=2)(*batch)
    assert set(python) == set(jitted)
    for name, out in jitted.items():
        assert_equal_bits(np.array(python[name], dtype=np.uint32).view(F).reshape(out.shape), out, name=name)
