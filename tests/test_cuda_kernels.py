"""Every CUDA kernel equals its reference kernel bit for bit, and so does a whole forward
pass of the "cuda" backend (NUMERICS.md): one table of cases, run on whatever runs CUDA
kernels here.

* Under the CUDA simulator (NUMBA_ENABLE_CUDASIM=1): the kernels run as Python with
  exact float32 arithmetic (kernels/cuda_fmath.py), which checks their logic (orders,
  tiling, padding, masking) bit for bit. numba.cuda reads the switch once, at import, so
  in an ordinary pytest run `test_under_simulator` runs this module again in a
  subprocess with the switch on; that is how CI (no GPU) runs it.
* On a real GPU (numba.cuda.is_available()): the same cases run on the device, plus
  larger shapes and the padding/batch invariances.

Skipped, with the reason, when numba-cuda is not installed (pip install 'albert-ref[cuda]').
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from albert_ref.testing import assert_equal_bits
from model_util import TINY_VARIANTS, bits, randn

if importlib.util.find_spec("numba_cuda") is None:
    pytest.skip("numba-cuda is not installed (pip install 'albert-ref[cuda]')", allow_module_level=True)

SIM = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")
from numba import cuda  # noqa: E402  (after the skip; a module global, as the simulator requires)

REPO = Path(__file__).resolve().parents[1]


def _gpu_available():
    if SIM:
        return False
    try:
        return bool(cuda.is_available())
    except Exception:
        return False


GPU = _gpu_available()
MODE = "sim" if SIM else ("gpu" if GPU else None)
if SIM:
    # The simulator runs each CUDA thread as a Python thread and waits at barriers by
    # polling; with the default 5 ms GIL switch interval every barrier costs milliseconds.
    sys.setswitchinterval(5e-5)


# --- CI: the same module again, under the simulator ---------------------------------------------

@pytest.mark.skipif(SIM, reason="already running under the simulator")
def test_under_simulator():
    """Runs this module under the CUDA simulator in a fresh interpreter."""
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    cmd = [sys.executable, "-m", "pytest", str(Path(__file__).resolve()), "-q", "-p", "no:cacheprovider",
           "-W", "ignore::RuntimeWarning", "-o", "addopts="]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=900)
    tail = (r.stdout[-6000:] + "\n" + r.stderr[-3000:]).strip()
    print(f"simulator run ({time.perf_counter() - t0:.0f} s):\n{tail}")
    assert r.returncode == 0, tail


needs_device = pytest.mark.skipif(MODE is None, reason="no CUDA GPU here; these cases run under the simulator "
                                                       "(test_under_simulator)")

# --- helpers ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ref():
    from albert_ref.kernel_backend import KernelOps
    return KernelOps(False)


@pytest.fixture(scope="module")
def cpu():
    from albert_ref.kernel_backend import KernelOps
    return KernelOps(True)


_OPS = {}


def cuda_ops(**kw):
    """A CudaOps per tiling. Under the simulator small tiles keep the thread count down
    (the tiling never changes the bits; the default tiles are covered too)."""
    from albert_ref.cuda_backend import CudaOps
    key = tuple(sorted(kw.items()))
    if key not in _OPS:
        _OPS[key] = CudaOps(**kw)
    return _OPS[key]


SMALL = dict(dense_tile=(8, 1, 8), attention_rows=1, layer_norm_rows=2)


def host(a):
    return np.asarray(a)


# --- the portable math on the device ---------------------------------------------------------------

FMATH = ("exp32", "tanh32", "erf32", "erfc32", "gelu_tanh32", "gelu_erf32", "relu32")


def _special_values(rng):
    f = np.float32
    tiny = np.array([1e-45, 1e-40, 1.1754942e-38, 1.1754944e-38], dtype=np.float32)
    edges = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 0.75, -0.75, 0.7499999, 10.1, -10.1, 14.3, -14.3,
                      -104.0, -103.99, 89.0, 88.72, 88.73, -87.3, -87.34, 9.1, -9.1, 2.0, -2.0, 1e-7, -1e-7,
                      3.4e38, -3.4e38], dtype=np.float32)
    spread = np.concatenate([randn(rng, 300, scale=4.0), randn(rng, 100, scale=30.0),
                             (np.logspace(-8, 2, 120) * rng.choice([-1, 1], 120)).astype(f)])
    return np.concatenate([tiny, -tiny, edges, spread]).astype(np.float32)


@needs_device
def test_fmath_on_device_equals_cpu():
    """exp/tanh/erf/erfc/GELUs compiled for the device from fmath.py's source == the CPU."""
    from numba import njit

    from albert_ref.kernels import cuda_fmath, fmath
    x = _special_values(np.random.default_rng(0))
    for name in FMATH:
        dev_fn = getattr(cuda_fmath, name)
        cpu_fn = getattr(fmath, name)

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


@pytest.mark.skipif(not SIM, reason="the exact FMA of the simulator")
def test_simulator_fma_is_correctly_rounded():
    """cuda_fmath's simulated fma == the hardware FMA of the CPU (llvm.fma.f32), including
    signed zeros, subnormal results, overflow, infinities and NaN."""
    from numba import njit

    from albert_ref.kernels import cuda_fmath, fmath

    @njit
    def fma_map(a, b, c, out):
        for i in range(a.shape[0]):
            out[i] = fmath.fma(a[i], b[i], c[i])

    rng = np.random.default_rng(1)
    n = 6000
    a = randn(rng, n)
    b = randn(rng, n)
    c = (-(a.astype(np.float64) * b)).astype(np.float32)           # near-total cancellation
    c[: n // 3] = randn(rng, n // 3)
    a[:200] *= np.float32(1e-20)                                    # subnormal products / results
    b[:200] *= np.float32(1e-19)
    c[:100] = np.float32(0.0)
    c[100:200] = np.float32(-0.0)
    a[200:300] = np.float32(3e38)                                   # overflow
    specials = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45, 1.0], dtype=np.float32)
    grid = np.array(np.meshgrid(specials, specials, specials)).reshape(3, -1).astype(np.float32)
    a, b, c = (np.concatenate([v, g]) for v, g in zip((a, b, c), grid))
    want = np.empty_like(a)
    fma_map(a, b, c, want)
    got = np.array([cuda_fmath.fma32(x, y, z) for x, y, z in zip(a, b, c)], dtype=np.float32)
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan)
    assert_equal_bits(got[~nan], want[~nan], name="fma")


# --- dense ---------------------------------------------------------------------------------------------

DENSE_SHAPES = [(1, 1, 1), (7, 13, 129), (13, 7, 256), (1, 9, 300), (5, 3, 7), (129, 2, 13)]
from albert_ref.config import ACTIVATIONS  # noqa: E402

ACTS = [None, *ACTIVATIONS]  # every activation in the registry, and none


@needs_device
@pytest.mark.parametrize("M,N,K", DENSE_SHAPES)
def test_dense(M, N, K, ref):
    rng = np.random.default_rng(M * 1000 + N * 10 + K)
    x = randn(rng, M, K)
    w = randn(rng, K, N, scale=1.5 / np.sqrt(K))
    b = randn(rng, N, scale=0.5)
    ops = cuda_ops(**SMALL)
    for act in ACTS:
        assert_equal_bits(host(ops.dense(x, w, b, act)), ref.dense(x, w, b, act), name=f"dense {act}")


@needs_device
@pytest.mark.parametrize("tile", [(8, 2, 8), (16, 1, 8), (8, 2, 16), (8, 16, 8)])
def test_dense_tilings(tile, ref):
    """Other tilings (the default (8, 16, 8) included): the same bits."""
    rng = np.random.default_rng(3)
    M, N, K = (70, 19, 300) if SIM and tile != (8, 16, 8) else (7, 13, 129)
    if not SIM:
        M, N, K = 300, 260, 515
    x = randn(rng, M, K)
    w = randn(rng, K, N, scale=1.5 / np.sqrt(K))
    b = randn(rng, N)
    assert_equal_bits(host(cuda_ops(dense_tile=tile).dense(x, w, b, "gelu_tanh")), ref.dense(x, w, b, "gelu_tanh"), name=f"tile {tile}")


@needs_device
def test_dense_signed_zero_survives_padded_tail(ref):
    """A chain that is -0.0 stays -0.0 through the padded end of the last k tile (the
    padding is fma(-0, +0, s) = s, not + 0.0): tiny products round to -0.0 here."""
    K = 13
    x = np.full((2, K), -1e-30, dtype=np.float32)
    w = np.full((K, 3), 1e-30, dtype=np.float32)
    b = np.array([-0.0, 0.0, -0.0], dtype=np.float32)
    want = ref.dense(x, w, b, None)
    assert bits(want)[0, 0] == bits(np.float32(-0.0))
    assert_equal_bits(host(cuda_ops(**SMALL).dense(x, w, b, None)), want, name="signed zero")


@needs_device
def test_dense_strided_input(ref):
    """The pooler's input sequence_output[:, 0] is a strided view."""
    rng = np.random.default_rng(4)
    seq = randn(rng, 3, 5, 16)
    w = randn(rng, 16, 8)
    b = randn(rng, 8)
    got = cuda_ops(**SMALL).dense(cuda.to_device(seq)[:, 0], w, b, "tanh")
    assert_equal_bits(host(got), ref.dense(np.ascontiguousarray(seq[:, 0]), w, b, "tanh"), name="pooler")


# --- layer norm ------------------------------------------------------------------------------------------

@needs_device
@pytest.mark.parametrize("M,n", [(1, 1), (7, 7), (3, 16), (13, 129), (2, 300)])
def test_layer_norm(M, n, ref):
    rng = np.random.default_rng(M * 100 + n)
    x = randn(rng, M, n, scale=3.0) + np.float32(5.0)
    r = randn(rng, M, n)
    g = randn(rng, n) + np.float32(1.0)
    beta = randn(rng, n)
    for rows in (2, 8):
        ops = cuda_ops(**{**SMALL, "layer_norm_rows": rows})
        assert_equal_bits(host(ops.layer_norm(x, r, g, beta, 1e-12)), ref.layer_norm(x, r, g, beta, 1e-12), name="res")
        assert_equal_bits(host(ops.layer_norm(x, None, g, beta, 1e-12)), ref.layer_norm(x, None, g, beta, 1e-12), name="plain")


@needs_device
def test_layer_norm_3d_and_constant_rows(ref):
    x = np.zeros((2, 3, 20), dtype=np.float32)
    x[1] = 7.0
    g = np.ones(20, np.float32)
    beta = np.linspace(-1, 1, 20).astype(np.float32)
    assert_equal_bits(host(cuda_ops(**SMALL).layer_norm(x, None, g, beta, 1e-12)),
                      ref.layer_norm(x, None, g, beta, 1e-12), name="constant rows")


# --- attention ---------------------------------------------------------------------------------------------

ATTN_CASES = [
    # B, S, H, heads, lengths (None: mask all ones)
    (1, 1, 4, 1, None),
    (2, 7, 12, 3, [7, 3]),
    (3, 13, 16, 4, [13, 0, 1]),          # a sequence with no real key attends to all
    (1, 5, 260, 2, [4]),                 # head size 130 > KB: blocked score dots
    (1, 131, 4, 1, [130]),               # 130 real keys > KB: blocked context dots
]


def _mask(B, S, lengths, rng):
    if lengths is None:
        return np.ones((B, S), np.int32)
    mask = (np.arange(S)[None, :] < np.asarray(lengths)[:, None]).astype(np.int32)
    if B > 1:                            # holes too: the real keys need not be a prefix
        mask[0, rng.integers(0, S, 2)] = 0
        if not mask[0].any():
            mask[0, 0] = 1
    return mask


@needs_device
@pytest.mark.parametrize("B,S,H,heads,lengths", ATTN_CASES)
def test_attention(B, S, H, heads, lengths, ref):
    rng = np.random.default_rng(B * 7 + S * 3 + H)
    q, k, v = (randn(rng, B, S, H, scale=2.0) for _ in range(3))
    mask = _mask(B, S, lengths, rng)
    for rows in ((4,) if S == 7 else (1,)) if SIM else (1, 4):
        ops = cuda_ops(**{**SMALL, "attention_rows": rows})
        assert_equal_bits(host(ops.attention(q, k, v, mask, heads)), ref.attention(q, k, v, mask, heads), name=f"rows {rows}")


@needs_device
def test_attention_nan_and_inf_as_reference(ref):
    """The max of the scores: NaN in the first real key's score, or elsewhere, and
    infinities give what the reference's sequential max gives."""
    rng = np.random.default_rng(9)
    B, S, H, heads = 3, 6, 8, 2
    q, k, v = (randn(rng, B, S, H) for _ in range(3))
    k[0, 0, :2] = np.nan                 # s_0 is NaN for head 0 of sequence 0
    k[1, 3, 4] = np.nan                  # a later key is NaN (head 1 of sequence 1)
    k[2, 2, :] = np.float32(1e30)        # infinite scores
    q[2, 1, :] = np.float32(1e10)
    mask = np.ones((B, S), np.int32)
    got = host(cuda_ops(**SMALL).attention(q, k, v, mask, heads))
    want = ref.attention(q, k, v, mask, heads)
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan)
    assert_equal_bits(got[~nan], want[~nan], name="specials")


# --- embeddings ------------------------------------------------------------------------------------------------

@needs_device
def test_embed(ref):
    rng = np.random.default_rng(11)
    word, tt, pos = randn(rng, 50, 7), randn(rng, 2, 7), randn(rng, 20, 7)
    ids = rng.integers(0, 50, (3, 13))
    segs = rng.integers(0, 2, (3, 13))
    assert_equal_bits(host(cuda_ops(**SMALL).embed(ids, segs, word, tt, pos)), ref.embed(ids, segs, word, tt, pos))
    with pytest.raises(ValueError, match="input_ids out of range"):
        cuda_ops(**SMALL).embed(ids + 50, segs, word, tt, pos)


# --- whole forward passes -----------------------------------------------------------------------------------------

CONFIGS = TINY_VARIANTS
def _random_params(config, seed):
    from model_util import HEADS, random_params
    return random_params(config, seed, heads=HEADS)


def _run(ops, raw, config, ids, mask, segs, hidden_states=False):
    from model_util import run_forward
    out = run_forward(ops, raw, config, ids, mask, segs, hidden_states=hidden_states)
    if hidden_states:
        out["hidden_states"] = np.stack([host(h) for h in out["hidden_states"]])
    return {k: host(v) for k, v in out.items()}


def _assert_outputs_equal(got, want, rows=None):
    for key in want:
        a, b = got[key], want[key]
        if rows is not None and key in ("sequence_output", "mlm_logits"):
            a, b = a[:, :rows], b[:, :rows]
        assert_equal_bits(a, b, name=key)


@needs_device
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_forward_equals_reference(name, ref):
    """The whole forward pass (embeddings, shared layers, pooler, MLM and SOP heads, every
    hidden state) of the cuda backend == the reference backend, bit for bit."""
    from model_util import random_inputs, tiny_config
    config = tiny_config(**CONFIGS[name])
    raw = _random_params(config, 1)
    lengths = [7, 0, 3] if SIM else [9, 3, 1, 0, 6]     # a sequence with no real token, padding
    ids, mask, segs = random_inputs(config, lengths, seq_len=max(lengths) + 1, seed=2)
    ops = cuda_ops() if name == "projected" else cuda_ops(**SMALL)
    _assert_outputs_equal(_run(ops, raw, config, ids, mask, segs, hidden_states=True),
                          _run(ref, raw, config, ids, mask, segs, hidden_states=True))


@needs_device
def test_forward_padding_and_batch_invariance():
    """A sequence alone == padded to a longer length inside a batch of other sequences
    (at its real positions), on the device alone, no reference involved."""
    from model_util import random_inputs, tiny_config
    config = tiny_config(max_position_embeddings=64, num_hidden_groups=2)
    raw = _random_params(config, 5)
    ops = cuda_ops(**SMALL)
    ids, mask, segs = random_inputs(config, [5], seed=6)
    alone = _run(ops, raw, config, ids, mask, segs)
    S = 9 if SIM else 40
    pad = lambda a: np.pad(a, ((0, 0), (0, S - a.shape[1])))
    o_ids, o_mask, o_segs = random_inputs(config, [S - 1, 2], seq_len=S, seed=7)
    batch = [np.insert(o, 1, pad(a)[0], axis=0) for o, a in ((o_ids, ids), (o_mask, mask), (o_segs, segs))]
    together = _run(ops, raw, config, *batch)
    _assert_outputs_equal({k: v[1:2] for k, v in together.items()}, alone, rows=5)


@needs_device
def test_load_backend_cuda(tmp_path):
    """albert_ref.load(path, backend="cuda") runs the model file and equals "reference"."""
    import albert_ref
    from albert_ref.weights.model_file import write_model
    from albert_ref.weights.random_model import random_model_file
    from model_util import random_inputs, tiny_config
    config = tiny_config()
    path = tmp_path / "tiny.h5"
    write_model(path, random_model_file(config, seed=3))
    ids, mask, segs = random_inputs(config, [5, 2], seed=4)
    got = albert_ref.load(path, backend="cuda")(ids, mask, segs, hidden_states=True)
    want = albert_ref.load(path, backend="reference")(ids, mask, segs, hidden_states=True)
    for key in want:
        assert isinstance(got[key], np.ndarray)
        assert_equal_bits(got[key], want[key], name=key)


# --- GPU only: larger shapes against the (bit-identical) fast CPU kernels ----------------------------------------

@pytest.mark.skipif(not GPU, reason="needs a CUDA GPU")
@pytest.mark.parametrize("M,N,K", [(1024, 2048, 2048), (300, 8192, 2048), (1000, 2048, 8192), (8, 30000, 128)])
def test_gpu_dense_large(M, N, K, cpu):
    rng = np.random.default_rng(M + N + K)
    x = randn(rng, M, K)
    w = randn(rng, K, N, scale=1.5 / np.sqrt(K))
    b = randn(rng, N)
    ops = cuda_ops()
    packed = cpu.prepare("large/kernel", w)
    for act in (None, "gelu_tanh"):
        assert_equal_bits(host(ops.dense(x, w, b, act)), cpu.dense(x, packed, b, act), name=f"dense {act}")


@pytest.mark.skipif(not GPU, reason="needs a CUDA GPU")
def test_gpu_attention_and_layer_norm_large(cpu):
    rng = np.random.default_rng(12)
    B, S, H, heads = 4, 512, 2048, 32
    q, k, v = (randn(rng, B, S, H) for _ in range(3))
    mask = _mask(B, S, [512, 300, 1, 129], rng)
    ops = cuda_ops()
    assert_equal_bits(host(ops.attention(q, k, v, mask, heads)), cpu.attention(q, k, v, mask, heads), name="attention")
    x, r = randn(rng, 3000, 2048), randn(rng, 3000, 2048)
    g, beta = randn(rng, 2048), randn(rng, 2048)
    assert_equal_bits(host(ops.layer_norm(x, r, g, beta, 1e-12)), cpu.layer_norm(x, r, g, beta, 1e-12), name="layer_norm")
