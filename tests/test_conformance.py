"""The conformance suite: one table of op cases and tiny models, run on every backend x
kernel variant, through the ops interface, against the reference kernels' bits
(NUMERICS.md).

A backend is one line in BACKENDS: the cpu backend once per instruction-set variant of
kernels/isa.py (a variant this CPU does not run is reported as skipped), the cuda backend
once per kernel tiling (tilings never change the bits; the three rows exercise the tile
code with 1 to 16 threads a side). A case is one line in its table. Dense shapes sit on
both sides of every backend's tile edges (MR x NR micro-tiles, CUDA CTA tiles) and of the
contract's KB block, with every activation; LayerNorm widths around the 16 lanes;
attention with holes in the mask, no real key, more than KB keys, heads wider than KB;
non-finite inputs (NaN payloads are not promised, so NaNs compare as NaNs).

The cuda rows run on a GPU when numba.cuda finds one, else under numba-cuda's simulator.
numba.cuda reads NUMBA_ENABLE_CUDASIM once, at import, so in an ordinary run (CI has no
GPU) test_cuda_rows_under_simulator reruns this module's cuda rows in a subprocess with
the switch on. The simulator runs each CUDA thread as a Python thread, thousands of times
slower than a GPU, so there the cuda rows run a lean part of the table (SIM_GPU_ONLY,
SIM_TILINGS; each skip says why): SIM_FULL, the tiling with the fewest threads, runs
every case but the two largest attentions and two thirds of the cpu tile grid, and the tiny
models with a shorter batch; the other tilings run the dense cases at their own CTA edges
and a few cases of each op.
"""
from __future__ import annotations

import functools
import importlib.util
import itertools
import math
import os
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import pytest

import albert_ref
from albert_ref.config import ACTIVATIONS
from albert_ref.kernel_backend import KernelOps
from albert_ref.kernels import isa
from albert_ref.testing import assert_equal_bits
from model_util import HEADS, TINY_VARIANTS, random_inputs, random_params, randn, run_forward, tiny_config

SIM = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")
if SIM:
    # The simulator waits at barriers by polling; with the default 5 ms GIL switch interval
    # every barrier costs milliseconds.
    sys.setswitchinterval(5e-5)


class Backend(NamedTuple):
    make: Callable          # () -> its ops
    load: dict              # albert_ref.load(path, **load) runs it
    tiles: dict = {}        # cuda: CudaOps tilings (the defaults when empty)


def _cpu(variant):
    return Backend(lambda: KernelOps(True, threads=2, isa=variant), dict(backend="cpu", isa=variant))


def _cuda(**tiles):
    def make():
        from albert_ref.cuda_backend import CudaOps
        return CudaOps(**tiles)
    return Backend(make, dict(backend="cuda"), tiles)


BACKENDS = {
    **{f"cpu-{name}": _cpu(name) for name in isa.VARIANTS},
    "cuda": _cuda(),                                                                      # (8, 16, 8), 8, 8
    "cuda-narrow": _cuda(dense_tile=(8, 1, 8), attention_rows=1, layer_norm_rows=2),
    "cuda-wide": _cuda(dense_tile=(16, 2, 16), attention_rows=4, layer_norm_rows=4),
}
SIM_FULL = "cuda-narrow"     # the cuda row that runs the whole table under the simulator
ACTS = (None, *ACTIVATIONS)  # every activation in the registry, and none


@functools.cache
def cuda_mode():
    """("gpu" | "sim" | None, why not) for the cuda rows in this process."""
    if importlib.util.find_spec("numba_cuda") is None:
        return None, "numba-cuda is not installed (pip install 'albert-ref[cuda]')"
    if SIM:
        return "sim", ""
    from numba import cuda
    try:
        if cuda.is_available():
            return "gpu", ""
    except Exception:  # a broken driver counts as none
        pass
    return None, "no CUDA GPU here; the cuda rows run under the simulator (test_cuda_rows_under_simulator)"


def _skip_unless_runs(name):
    if name.startswith("cuda"):
        mode, why = cuda_mode()
        if mode is None:
            pytest.skip(why)
    else:
        variant = name.removeprefix("cpu-")
        if variant not in isa.target().variants:
            pytest.skip(f"{variant}: Numba compiles for {isa.target().cpu}, which runs {', '.join(isa.target().variants)}")


def simulated(name):
    return name.startswith("cuda") and SIM


_OPS = {}


def backend_ops(name):
    _skip_unless_runs(name)
    if name not in _OPS:
        _OPS[name] = BACKENDS[name].make()
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


def _dense_signed_zero(ops, rng):
    """A chain that is -0.0 stays -0.0 through a padded tail (padding is fma(-0, +0, s) = s,
    not + 0.0): the tiny products round to -0.0, and K = 13 is no tile's multiple."""
    x = np.full((2, 13), -1e-30, np.float32)
    w = np.full((13, 3), 1e-30, np.float32)
    return ops.dense(x, ops.prepare("case/kernel", w), np.array([-0.0, 0.0, -0.0], np.float32), None)


def _dense_strided(ops, rng):
    """The pooler's input, sequence_output[:, 0]: a strided view of the backend's own array."""
    word, tt, pos = randn(rng, 30, 16), randn(rng, 2, 16), randn(rng, 9, 16)
    seq = ops.embed(rng.integers(0, 30, (3, 5)), rng.integers(0, 2, (3, 5)), word, tt, pos)
    return ops.dense(seq[:, 0], ops.prepare("case/kernel", randn(rng, 16, 8)), randn(rng, 8), "tanh")


def _dense_into_rows(ops, rng):
    """dense(..., out=) into a block of rows of a larger array from ops.empty, as
    forward.feed_forward's blocks write: those rows of the larger array are the result."""
    x, w, b = randn(rng, 20, 24), randn(rng, 24, 10), randn(rng, 10)
    out = ops.empty((30, 10))
    ops.dense(x, ops.prepare("case/kernel", w), b, "gelu_tanh", out=out[5:25])
    return out[5:25]


def _edges(sizes, lo=1):
    """Every size in `sizes`, one less and one more."""
    return sorted({s + d for s in sizes for d in (-1, 0, 1) if s + d >= lo})


def cuda_dense_tile(backend):
    """(TY, TX, BK): a CTA computes (8 TY) x (8 TX) outputs over k tiles of BK."""
    from albert_ref.kernels import cuda_gemm
    return BACKENDS[backend].tiles.get("dense_tile") or cuda_gemm.DEFAULT_TILE


MS = _edges({1, 2} | {v.mr for v in isa.VARIANTS.values()} | {2 * v.mr for v in isa.VARIANTS.values()})
NS = _edges({1} | {v.nr for v in isa.VARIANTS.values()})
KS = (1, 7, 127, 128, 129, 300)
# K cycles fastest and the activation once per cycle of K, so that every (K, activation) pair
# occurs (and again in every run of len(KS) * len(ACTS) cases)
DENSE_GRID = [_dense(M, KS[i % len(KS)], N, ACTS[i // len(KS) % len(ACTS)])
              for i, (M, N) in enumerate(itertools.product(MS, NS))]
# each CUDA tiling's CTA edges: rows, columns and k, one below, at and one above, in three cases
CUDA_EDGES = {name: [_dense(8 * ty + d, bk - d, 8 * tx - d, ACTS[(ty + tx + d) % len(ACTS)]) for d in (-1, 0, 1)]
              for name in BACKENDS if name.startswith("cuda") for ty, tx, bk in [cuda_dense_tile(name)]}
DENSE = DENSE_GRID + [case for cases in CUDA_EDGES.values() for case in cases]
DENSE += [_dense(13, 1100, 70, "gelu_tanh"),                                  # several K chunks of the fast path
          _dense(5, 129, 17, None, "nan"), _dense(7, 64, 13, "gelu_erf", "inf"), _dense(6, 200, 65, "tanh", "-inf"),
          ("dense-signed-zero", _dense_signed_zero), ("dense-strided-input", _dense_strided),
          ("dense-into-rows", _dense_into_rows)]


def _layer_norm(M, n, residual, special=None):
    def run(ops, rng):
        x, r = randn(rng, M, n, scale=3) + 1, randn(rng, M, n)
        g, b = 1 + randn(rng, n, scale=0.3), randn(rng, n, scale=0.2)
        if special:
            x[0, rng.integers(0, n)] = np.float32(special)
        return ops.layer_norm(x, r if residual else None, g, b, 1e-12)
    return f"layer_norm-{M}x{n}-{'res' if residual else 'nores'}" + (f"-{special}" if special else ""), run


def _layer_norm_constant_rows(ops, rng):
    """[B, S, n] input; rows of one value (variance exactly 0)."""
    x = np.zeros((2, 3, 20), np.float32)
    x[1] = 7
    return ops.layer_norm(x, None, np.ones(20, np.float32), np.linspace(-1, 1, 20, dtype=np.float32), 1e-12)


LAYER_NORM = [_layer_norm(M, n, res) for M, n, res in
              zip(itertools.cycle((1, 7, 3)), (1, 7, 15, 16, 17, 33, 129, 513), itertools.cycle((True, False)))]
LAYER_NORM += [_layer_norm(13, 129, True), _layer_norm(9, 300, False),    # CTAs of 2, 4 and 8 rows, a partial one
               _layer_norm(3, 40, True, "nan"), _layer_norm(2, 17, False, "inf"),
               ("layer_norm-constant-rows-3d", _layer_norm_constant_rows)]


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


def _attention_specials(ops, rng):
    """NaN in the first real key's score and in a later one, infinite scores: the max over
    the scores gives what the reference's sequential max gives."""
    B, S, H, heads = 3, 6, 8, 2
    q, k, v = (randn(rng, B, S, H) for _ in range(3))
    k[0, 0, :2] = np.nan                 # s_0 is NaN for head 0 of sequence 0
    k[1, 3, 4] = np.nan                  # a later key is NaN (head 1 of sequence 1)
    k[2, 2, :] = np.float32(1e30)        # infinite scores
    q[2, 1, :] = np.float32(1e10)
    return ops.attention(q, k, v, np.ones((B, S), np.int64), heads)


ATTENTION = [_attention(B, S, h, d) for B, S, h, d in
             [(1, 1, 1, 1), (2, 7, 2, 7), (3, 13, 3, 16), (2, 33, 1, 64), (2, 17, 2, 65), (3, 5, 1, 128), (2, 129, 2, 12),
              (2, 5, 2, 130)]]                                 # heads wider than KB: blocked score dots
ATTENTION += [_attention(2, 300, 2, 8, "all"),                 # more than KB real keys: several context blocks
              _attention(1, 151, 1, 4, "all"),                 # 130 real keys: the simulator's multi-block case
              _attention(2, 9, 2, 8, special="inf"), _attention(2, 9, 1, 16, special="nan"),
              ("attention-nan-inf-scores", _attention_specials)]


def _embed(B, S, E):
    def run(ops, rng):
        word, tt, pos = randn(rng, 50, E), randn(rng, 2, E), randn(rng, 20, E)
        ids, segs = rng.integers(0, 50, (B, S)), rng.integers(0, 2, (B, S))
        return ops.embed(ids, segs, word, tt, pos)
    return f"embed-{B}x{S}x{E}", run


EMBED = [_embed(B, S, E) for B, S, E in [(1, 1, 1), (2, 7, 16), (7, 13, 129), (3, 20, 7)]]

OPS = dict(DENSE + LAYER_NORM + ATTENTION + EMBED)
assert len(OPS) == len(DENSE + LAYER_NORM + ATTENTION + EMBED), "case ids must be unique"

# The lean run under the simulator (see the module docstring; costs in benchmarks/RESULTS.md):
# SIM_FULL runs the table but the largest cases and two thirds of the cpu tile grid (every
# (K, activation) pair kept); the other tilings run their own CTA edges and a few cases of
# each op.
SIM_GPU_ONLY = {"attention-2x300-h2x8-all", "attention-2x129-h2x12-holes"}
SIM_GPU_ONLY |= {case for i, (case, _) in enumerate(DENSE_GRID) if i // (len(KS) * len(ACTS)) % 3}
SIM_TILINGS = {"dense-strided-input", "dense-signed-zero", "dense-into-rows", "layer_norm-13x129-res", "layer_norm-constant-rows-3d",
               "attention-2x7-h2x7-holes", "attention-nan-inf-scores", "embed-2x7x16"}


def _sim_skip(backend, case):
    if not simulated(backend):
        return
    if case in SIM_GPU_ONLY:
        pytest.skip("too slow for the simulator: runs on a GPU")
    if backend != SIM_FULL and case not in SIM_TILINGS and case not in dict(CUDA_EDGES[backend]):
        pytest.skip(f"under the simulator this tiling runs its own tile edges and a few cases; {SIM_FULL} all")


@pytest.mark.parametrize("case", list(OPS))
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_op_equals_reference(backend, case):
    ops = backend_ops(backend)
    _sim_skip(backend, case)
    assert_equal_bits(OPS[case](ops, _rng(case)), _reference(case))


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_dense_refuses_an_out_that_overlaps_its_input(backend):
    """dense(..., out=) writes out as its kernels go, so an out sharing x's memory would be
    overwritten while read: refused, by the check every backend shares (ops.check_out)."""
    ops = backend_ops(backend)
    eye = ops.prepare("case/kernel", np.eye(4, dtype=np.float32))
    zero = np.zeros(4, np.float32)
    x = ops.dense(randn(np.random.default_rng(0), 6, 4), eye, zero)   # the backend's own array
    with pytest.raises(ValueError, match="dense: out must not overlap x"):
        ops.dense(x, eye, zero, out=x)
    out = ops.empty((6, 4))
    assert ops.dense(x, eye, zero, out=out) is out


@functools.cache
def _reference(case):
    """A case's reference result: the slow scalar kernels run once, whichever backend asks."""
    return OPS[case](REFERENCE, _rng(case))


def test_simulator_subset_names_table_cases():
    """A misspelt id in the simulator's subset would drop a case silently."""
    assert SIM_GPU_ONLY <= set(OPS) and SIM_TILINGS <= set(OPS)
    assert SIM_FULL in BACKENDS and not SIM_TILINGS & SIM_GPU_ONLY


def test_signed_zero_case_makes_negative_zero():
    """The premise of dense-signed-zero: the reference's result starts with -0.0."""
    assert np.signbit(OPS["dense-signed-zero"](REFERENCE, None)[0, 0])


def test_dense_table_straddles_every_tile_edge():
    """For every cpu variant: rows and columns below, at and above its micro-tile; for every
    cuda tiling, the same around its CTA tile and its k tile; K below, at and above one
    block."""
    shapes = [tuple(int(s) for s in name.split("-")[1].split("x")) for name in OPS if name.startswith("dense-")
              and name.split("-")[1][0].isdigit()]
    edges = [(v.name, v.mr, v.nr, None) for v in isa.VARIANTS.values()]
    edges += [(name, 8 * ty, 8 * tx, bk) for name in CUDA_EDGES for ty, tx, bk in [cuda_dense_tile(name)]]
    for name, mr, nr, bk in edges:
        for size, dim in ((mr, 0), (nr, 2), (bk, 1)):
            if size is not None:
                assert {size - 1, size, size + 1} <= {s[dim] for s in shapes}, (name, dim)
    assert {127, 128, 129} <= {s[1] for s in shapes}
    pairs = {(int(name.split("-")[1].split("x")[1]), name.split("-")[2]) for name, _ in DENSE_GRID}
    assert pairs == {(k, str(a)) for k in KS for a in ACTS}   # every K with every activation


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_out_of_range_ids_are_refused(backend):
    """Every backend checks ids before its kernels index the tables without bounds checks."""
    ops = backend_ops(backend)
    word, tt, pos = np.zeros((50, 4), np.float32), np.zeros((2, 4), np.float32), np.zeros((20, 4), np.float32)
    ids, segs = np.zeros((2, 3), np.int64), np.zeros((2, 3), np.int64)
    for bad_ids, bad_segs, match in ((ids + 50, segs, "input_ids out of range"), (ids - 1, segs, "input_ids out of range"),
                                     (ids, segs + 2, "segment_ids out of range")):
        with pytest.raises(ValueError, match=match):
            ops.embed(bad_ids, bad_segs, word, tt, pos)


# --- tiny models --------------------------------------------------------------------------------

def _model_backend(backend):
    ops = backend_ops(backend)
    if simulated(backend) and backend != SIM_FULL:
        pytest.skip(f"under the simulator the models run on {SIM_FULL} only (the tiling does not change the bits)")
    return ops


def _host(out):
    return {k: np.stack([np.asarray(h) for h in v]) if k == "hidden_states" else np.asarray(v) for k, v in out.items()}


def _tiny_forward(ops, model, lengths):
    config = tiny_config(**TINY_VARIANTS[model])
    ids, mask, segs = random_inputs(config, list(lengths), seq_len=max(lengths) + 1, seed=2)
    return _host(run_forward(ops, random_params(config, 1, heads=HEADS), config, ids, mask, segs, hidden_states=True))


@functools.cache
def _tiny_reference(model, lengths):
    return _tiny_forward(REFERENCE, model, lengths)


@pytest.mark.parametrize("model", sorted(TINY_VARIANTS))
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_tiny_forward_equals_reference(backend, model):
    """Embeddings, shared layers, pooler, MLM and SOP heads and every hidden state; a
    sequence with no real token, padding."""
    lengths = (6, 0, 2) if simulated(backend) else (9, 3, 1, 0, 6)
    got, want = _tiny_forward(_model_backend(backend), model, lengths), _tiny_reference(model, lengths)
    assert set(got) == set(want)
    for key in want:
        assert_equal_bits(got[key], want[key])


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_padding_and_batch_invariance(backend):
    """A sequence alone == padded to a longer length inside a batch of other sequences (at
    its real positions), on the backend alone, no reference involved."""
    ops = _model_backend(backend)
    config = tiny_config(max_position_embeddings=64, num_hidden_groups=2)
    raw = random_params(config, 5, heads=HEADS)
    ids, mask, segs = random_inputs(config, [5], seed=6)
    alone = _host(run_forward(ops, raw, config, ids, mask, segs))
    S = 9 if simulated(backend) else 40
    o_ids, o_mask, o_segs = random_inputs(config, [S - 1, 2], seq_len=S, seed=7)
    batch = [np.insert(o, 1, np.pad(a, ((0, 0), (0, S - a.shape[1])))[0], axis=0)
             for o, a in ((o_ids, ids), (o_mask, mask), (o_segs, segs))]
    together = _host(run_forward(ops, raw, config, *batch))
    for key, a in alone.items():
        b = together[key][1:2]
        if key in ("sequence_output", "mlm_logits"):
            a, b = a[:, :5], b[:, :5]
        assert_equal_bits(b, a, name=key)


LOADS = {}
for _name, _row in BACKENDS.items():   # one per distinct albert_ref.load(...) of a row
    LOADS.setdefault(tuple(sorted(_row.load.items())), _name)


@pytest.mark.parametrize("backend", sorted(LOADS.values()))
def test_load_equals_reference(backend, tmp_path, monkeypatch):
    """albert_ref.load(path, backend=..., isa=...) runs a model file as the reference does."""
    _skip_unless_runs(backend)
    if simulated(backend):  # SIM_FULL's tiling as the default: the default one's CTAs take ~45 s here
        from albert_ref.kernels import cuda_attention, cuda_gemm, cuda_layernorm
        tiles = BACKENDS[SIM_FULL].tiles
        monkeypatch.setattr(cuda_gemm, "DEFAULT_TILE", tiles["dense_tile"])
        monkeypatch.setattr(cuda_attention, "WQ", tiles["attention_rows"])
        monkeypatch.setattr(cuda_layernorm, "ROWS", tiles["layer_norm_rows"])
    from albert_ref.weights.model_file import write_model
    from albert_ref.weights.random_model import random_model_file
    config = tiny_config()
    path = tmp_path / "tiny.h5"
    write_model(path, random_model_file(config, seed=3))
    ids, mask, segs = random_inputs(config, [5, 2], seed=4)
    got = albert_ref.load(path, **BACKENDS[backend].load)(ids, mask, segs, hidden_states=True)
    want = albert_ref.load(path, backend="reference")(ids, mask, segs, hidden_states=True)
    for key in want:
        assert isinstance(got[key], np.ndarray)
        assert_equal_bits(got[key], want[key], name=key)


def test_every_backend_implements_exactly_the_registered_activations():
    """config.ACTIVATIONS is the one list of activation names: each backend's table of them
    (NumPy functions, kernel codes, CUDA device functions) covers exactly it."""
    from albert_ref import numpy_backend
    from albert_ref.kernels import cuda_gemm, gemm
    assert set(numpy_backend.ACTIVATIONS) == {None, *ACTIVATIONS}
    assert set(gemm.ACT_CODES) == {None, *ACTIVATIONS}
    assert len({gemm.ACT_CODES[name] for name in ACTIVATIONS}) == len(ACTIVATIONS)  # one code each
    assert set(cuda_gemm._ACT_NAMES.values()) == set(ACTIVATIONS)


# --- CUDA only: the portable math on the device, the simulator's FMA, GPU-sized shapes -------------

cuda = None   # numba.cuda once _cuda_here() ran: a module global, which the simulator swaps in kernels


def _cuda_here():
    """Binds `cuda` when the cuda rows run in this process."""
    global cuda
    _skip_unless_runs("cuda")
    from numba import cuda


FMATH = ("exp32", "tanh32", "erf32", "erfc32", "gelu_tanh32", "gelu_erf32", "relu32")


def _special_values(rng):
    tiny = np.array([1e-45, 1e-40, 1.1754942e-38, 1.1754944e-38], dtype=np.float32)
    edges = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 0.75, -0.75, 0.7499999, 10.1, -10.1, 14.3, -14.3,
                      -104.0, -103.99, 89.0, 88.72, 88.73, -87.3, -87.34, 9.1, -9.1, 2.0, -2.0, 1e-7, -1e-7,
                      3.4e38, -3.4e38], dtype=np.float32)
    spread = np.concatenate([randn(rng, 300, scale=4.0), randn(rng, 100, scale=30.0),
                             (np.logspace(-8, 2, 120) * rng.choice([-1, 1], 120)).astype(np.float32)])
    return np.concatenate([tiny, -tiny, edges, spread]).astype(np.float32)


def test_cuda_device_math_equals_cpu():
    """exp/tanh/erf/erfc/GELUs compiled for the device from fmath.py's source == the CPU's."""
    _cuda_here()
    from numba import njit

    from albert_ref.kernels import cuda_fmath, fmath
    x = _special_values(np.random.default_rng(0))
    for name in FMATH:
        dev_fn, cpu_fn = getattr(cuda_fmath, name), getattr(fmath, name)

        def kernel(xs, out):
            i = cuda.grid(1)
            if i < xs.shape[0]:
                out[i] = dev_fn(xs[i])

        @njit
        def cpu_map(xs, out):
            for i in range(xs.shape[0]):
                out[i] = cpu_fn(xs[i])

        want = np.empty_like(x)
        cpu_map(x, want)
        out = cuda.device_array(x.shape, np.float32)
        cuda.jit(kernel)[(x.size + 127) // 128, 128](cuda.to_device(x), out)
        assert_equal_bits(out.copy_to_host(), want, name=name)


@pytest.mark.skipif(not SIM, reason="the simulator's exact FMA (under NUMBA_ENABLE_CUDASIM=1)")
def test_cuda_simulator_fma_is_fmath_fma_exact():
    """Under the simulator, cuda_fmath's fma is fmath.fma_exact itself, whose bits against
    llvm.fma.f32 and exact rationals tests/test_disable_jit.py checks."""
    from albert_ref.kernels import cuda_fmath, fmath

    assert cuda_fmath.fma32 is fmath.fma_exact


@functools.cache
def cpu_fast(op, *shape):
    """`op` of the host's widest cpu variant (bit-identical to the reference, the table
    above; fast enough for GPU-sized shapes) on inputs seeded by the shape, once for
    every cuda row: (inputs, output)."""
    ops, rng = KernelOps(True), _rng(repr((op, *shape)))
    if op == "dense":
        M, K, N, act = shape
        x, w, b = randn(rng, M, K), randn(rng, K, N, scale=1.5 / np.sqrt(K)), randn(rng, N)
        return (x, w, b, act), ops.dense(x, ops.prepare("l/kernel", w), b, act)
    if op == "attention":
        B, S, H, heads = shape
        q, k, v = (randn(rng, B, S, H) for _ in range(3))
        mask = (np.arange(S)[None, :] < np.array([S, S * 3 // 5, 1, 129][:B])[:, None]).astype(np.int64)
        mask[0, rng.integers(0, S, 2)] = 0                 # holes too
        return (q, k, v, mask, heads), ops.attention(q, k, v, mask, heads)
    M, n = shape
    x, r, g, beta = randn(rng, M, n), randn(rng, M, n), randn(rng, n), randn(rng, n)
    return (x, r, g, beta, 1e-12), ops.layer_norm(x, r, g, beta, 1e-12)


def _gpu_only(backend):
    ops = backend_ops(backend)
    if cuda_mode()[0] != "gpu":
        pytest.skip("GPU-sized shapes: a real GPU only")
    return ops


@pytest.mark.parametrize("case", [("dense", 1024, 2048, 2048, None), ("dense", 300, 2048, 8192, "gelu_tanh"),
                                  ("dense", 1000, 8192, 2048, None), ("dense", 8, 128, 30000, "gelu_tanh"),
                                  ("attention", 4, 512, 2048, 32), ("layer_norm", 3000, 2048)], ids=str)
@pytest.mark.parametrize("backend", [name for name in BACKENDS if name.startswith("cuda")])
def test_cuda_large_equals_cpu(backend, case):
    """GPU-sized shapes (full tiles, many CTAs, 512 keys, 32 heads) against the cpu kernels."""
    ops = _gpu_only(backend)
    args, want = cpu_fast(*case)
    if case[0] == "dense":
        x, w, b, act = args
        args = (x, ops.prepare("l/kernel", w), b, act)
    assert_equal_bits(np.asarray(getattr(ops, case[0])(*args)), want, name=str(case))


# --- CI without a GPU: the cuda rows again, under the simulator ------------------------------------

@pytest.mark.skipif(SIM, reason="already under the simulator")
def test_cuda_rows_under_simulator():
    """This module's cuda rows in a fresh interpreter with NUMBA_ENABLE_CUDASIM=1 (numba.cuda
    reads the switch at import); on a GPU they run on the device instead."""
    mode, why = cuda_mode()
    if mode == "gpu" or importlib.util.find_spec("numba_cuda") is None:
        pytest.skip("the cuda rows run on the GPU here" if mode == "gpu" else why)
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    cmd = [sys.executable, "-m", "pytest", str(Path(__file__).resolve()), "-q", "-p", "no:cacheprovider",
           "-W", "ignore::RuntimeWarning", "-o", "addopts=", "-k", "cuda and not under_simulator"]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True,
                       timeout=900)
    tail = (r.stdout[-6000:] + "\n" + r.stderr[-3000:]).strip()
    print(f"simulator run ({time.perf_counter() - t0:.0f} s):\n{tail}")
    assert r.returncode == 0, tail
