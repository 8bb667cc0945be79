"""The conformance suite: one table of op cases and tiny models, run on every backend x
kernel variant, through the ops interface, against the reference kernels' bits
(NUMERICS.md).

A backend is one line in BACKENDS (the cpu backend once per instruction-set variant of
kernels/isa.py; a variant this CPU does not run is reported as skipped); a case is one
line in its table. Dense shapes sit on both sides of every variant's tile edges (MR rows,
NR columns) and of the contract's KB block, with every activation; LayerNorm widths
around the 16 lanes; attention with holes in the mask, no real key, more than KB keys;
non-finite inputs (NaN payloads are not promised, so NaNs compare as NaNs).
"""
from __future__ import annotations

import itertools
import math
import zlib

import numpy as np
import pytest

from albert_ref.config import ACTIVATIONS
from albert_ref.kernel_backend import KernelOps
from albert_ref.kernels import isa
from albert_ref.testing import assert_equal_bits
from model_util import HEADS, TINY_VARIANTS, random_inputs, random_params, randn, run_forward, tiny_config

BACKENDS = {f"cpu-{name}": (lambda name=name: KernelOps(True, threads=2, isa=name)) for name in isa.VARIANTS}
ACTS = (None, *ACTIVATIONS)  # every activation in the registry, and none

_OPS = {}


def backend_ops(name):
    variant = name.removeprefix("cpu-")
    if variant in isa.VARIANTS and variant not in isa.target().variants:
        pytest.skip(f"{variant}: Numba compiles for {isa.target().cpu}, which runs {', '.join(isa.target().variants)}")
    if name not in _OPS:
        _OPS[name] = BACKENDS[name]()
    return _OPS[name]


REFERENCE = KernelOps(False)


def _rng(case_id):
    return np.random.default_rng(zlib.crc32(case_id.encode()))


# --- the op table -----------------------------------------------------------------------------
# Each case: (id, function(ops, rng) -> array). Inputs come from a generator seeded by the id,
# so every backend sees the same ones.

def _dense(M, K, N, act, special=None):
    def run(ops, rng):
        x = randn(rng, M, K, scale=2)
        w = randn(rng, K, N, scale=1.5 / math.sqrt(K))
        b = randn(rng, N, scale=0.3)
        if special:
            x[rng.integers(0, M), rng.integers(0, K)] = np.float32(special)
        return ops.dense(x, ops.prepare("case/kernel", w), b, act)
    return f"dense-{M}x{K}x{N}-{act}" + (f"-{special}" if special else ""), run


def _edges(sizes, lo=1):
    """Every size in `sizes`, one less and one more."""
    return sorted({s + d for s in sizes for d in (-1, 0, 1) if s + d >= lo})


MS = _edges({1, 2} | {v.mr for v in isa.VARIANTS.values()} | {2 * v.mr for v in isa.VARIANTS.values()})
NS = _edges({1} | {v.nr for v in isa.VARIANTS.values()})
KS = (1, 7, 127, 128, 129, 300)
DENSE = [_dense(M, KS[i % len(KS)], N, ACTS[i % len(ACTS)]) for i, (M, N) in enumerate(itertools.product(MS, NS))]
DENSE += [_dense(13, 1100, 70, "gelu_tanh"),                                  # several K chunks of the fast path
          _dense(5, 129, 17, None, "nan"), _dense(7, 64, 13, "gelu_erf", "inf"), _dense(6, 200, 65, "tanh", "-inf")]


def _layer_norm(M, n, residual, special=None):
    def run(ops, rng):
        x, r = randn(rng, M, n, scale=3) + 1, randn(rng, M, n)
        g, b = 1 + randn(rng, n, scale=0.3), randn(rng, n, scale=0.2)
        if special:
            x[0, rng.integers(0, n)] = np.float32(special)
        return ops.layer_norm(x, r if residual else None, g, b, 1e-12)
    return f"layer_norm-{M}x{n}-{'res' if residual else 'nores'}" + (f"-{special}" if special else ""), run


LAYER_NORM = [_layer_norm(M, n, res) for M, n, res in
              zip(itertools.cycle((1, 7, 3)), (1, 7, 15, 16, 17, 33, 129, 513), itertools.cycle((True, False)))]
LAYER_NORM += [_layer_norm(3, 40, True, "nan"), _layer_norm(2, 17, False, "inf")]


def _attention(B, S, heads, d, mask_kind="holes", special=None):
    def run(ops, rng):
        H = heads * d
        q, k, v = randn(rng, B, S, H, scale=2), randn(rng, B, S, H, scale=2), randn(rng, B, S, H)
        if mask_kind == "all":
            mask = np.ones((B, S), np.int64)
            mask[-1, S - S // 7:] = 0
        else:
            mask = (rng.random((B, S)) < 0.7).astype(np.int64)       # holes anywhere
            mask[0, :] = 0                                            # no real key: attends to all
            if B > 1:
                mask[1, :] = np.arange(S) < max(1, S // 2)            # a prefix, as tokenizers make
        if special:
            k[-1, 0, 0] = np.float32(special)
        return ops.attention(q, k, v, mask, heads)
    return f"attention-{B}x{S}-h{heads}x{d}-{mask_kind}" + (f"-{special}" if special else ""), run


ATTENTION = [_attention(B, S, h, d) for B, S, h, d in
             [(1, 1, 1, 1), (2, 7, 2, 7), (3, 13, 3, 16), (2, 33, 1, 64), (2, 17, 2, 65), (3, 5, 1, 128), (2, 129, 2, 12)]]
ATTENTION += [_attention(2, 300, 2, 8, "all"),                 # more than KB real keys: several context blocks
              _attention(2, 9, 2, 8, special="inf"), _attention(2, 9, 1, 16, special="nan")]


def _embed(B, S, E):
    def run(ops, rng):
        word, tt, pos = randn(rng, 50, E), randn(rng, 2, E), randn(rng, 20, E)
        ids, segs = rng.integers(0, 50, (B, S)), rng.integers(0, 2, (B, S))
        return ops.embed(ids, segs, word, tt, pos)
    return f"embed-{B}x{S}x{E}", run


EMBED = [_embed(B, S, E) for B, S, E in [(1, 1, 1), (2, 7, 16), (7, 13, 129), (3, 20, 7)]]

OPS = dict(DENSE + LAYER_NORM + ATTENTION + EMBED)


@pytest.mark.parametrize("case", list(OPS))
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_op_equals_reference(backend, case):
    ops = backend_ops(backend)
    assert_equal_bits(OPS[case](ops, _rng(case)), OPS[case](REFERENCE, _rng(case)))


def test_dense_table_straddles_every_tile_edge():
    """For every variant: rows and columns below, at and above its micro-tile, and K
    below, at and above one block."""
    shapes = [tuple(int(s) for s in name.split("-")[1].split("x")) for name in OPS if name.startswith("dense-")]
    for v in isa.VARIANTS.values():
        for size, dim in ((v.mr, 0), (v.nr, 2)):
            assert {size - 1, size, size + 1} <= {s[dim] for s in shapes}, (v.name, dim)
    assert {127, 128, 129} <= {s[1] for s in shapes}
    acts = {name.split("-")[2] for name in OPS if name.startswith("dense-")}
    assert acts == {str(a) for a in ACTS}


# --- tiny models --------------------------------------------------------------------------------

@pytest.mark.parametrize("model", sorted(TINY_VARIANTS))
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_tiny_forward_equals_reference(backend, model):
    ops = backend_ops(backend)
    config = tiny_config(**TINY_VARIANTS[model])
    raw = random_params(config, 1, heads=HEADS)
    ids, mask, segs = random_inputs(config, [9, 3, 1, 0, 6], seq_len=11, seed=2)

    def run(o):
        return run_forward(o, raw, config, ids, mask, segs)

    got, want = run(ops), run(REFERENCE)
    assert set(got) == set(want)
    for key in want:
        assert_equal_bits(got[key], want[key])


def test_every_backend_implements_exactly_the_registered_activations():
    """config.ACTIVATIONS is the one list of activation names: each backend's table of them
    (NumPy functions, kernel codes, CUDA device functions) covers exactly it."""
    from albert_ref import numpy_backend
    from albert_ref.kernels import cuda_gemm, gemm
    assert set(numpy_backend.ACTIVATIONS) == {None, *ACTIVATIONS}
    assert set(gemm.ACT_CODES) == {None, *ACTIVATIONS}
    assert len({gemm.ACT_CODES[name] for name in ACTIVATIONS}) == len(ACTIVATIONS)  # one code each
    assert set(cuda_gemm._ACT_NAMES.values()) == set(ACTIVATIONS)
