"""Backends: the ops forward.py composes, implemented over NumPy or over the kernels.

NumPy ("numpy" backend) is the mathematical reference for tolerance comparisons: float64
by default, float32 on request, BLAS matmuls, no bit contract. The kernel backends
("reference", "cpu") follow NUMERICS.md bit for bit.
"""
from __future__ import annotations

import contextlib
import functools
import math

import numpy as np


@functools.lru_cache(maxsize=None)
def _erf():
    """NumPy has no erf; libm's through a Numba ufunc keeps the numpy path free of SciPy.
    Built on first use, so importing albert_ref starts no compiler. float32 is listed
    first: the ufunc takes the first loop an input can be cast to."""
    import numba
    return numba.vectorize(["float32(float32)", "float64(float64)"])(lambda x: math.erf(x))


def _gelu_tanh(x):
    # The original ALBERT/BERT form, written as TF evaluates it.
    c = x.dtype.type(math.sqrt(2.0 / math.pi))
    return x * (0.5 * (1.0 + np.tanh(c * (x + 0.044715 * x ** 3))))


def _gelu_erf(x):
    return 0.5 * x * (1.0 + _erf()(x / x.dtype.type(math.sqrt(2.0))))


ACTIVATIONS = {
    None: lambda x: x,
    "linear": lambda x: x,
    "gelu_tanh": _gelu_tanh,
    "gelu_erf": _gelu_erf,
    "relu": lambda x: np.maximum(x, 0),
    "tanh": np.tanh,
}


def real_keys(input_mask):
    """Which keys attention may look at: the real tokens, or every key of a sequence that
    has none (TF's -10000 bias then shifts all scores alike, so it attends to all)."""
    real = np.asarray(input_mask) != 0
    real[~real.any(axis=1)] = True
    return real


def embedding_indices(input_ids, segment_ids, word, token_type, position):
    """ids and segment ids as contiguous int64, checked against the tables they index (the
    kernels index without bounds checks)."""
    ids = np.ascontiguousarray(input_ids, dtype=np.int64)
    segs = np.ascontiguousarray(segment_ids, dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= word.shape[0]):
        raise ValueError(f"input_ids out of range [0, {word.shape[0]})")
    if segs.size and (segs.min() < 0 or segs.max() >= token_type.shape[0]):
        raise ValueError(f"segment_ids out of range [0, {token_type.shape[0]})")
    if ids.shape[1] > position.shape[0]:
        raise ValueError(f"sequence length {ids.shape[1]} exceeds max_position_embeddings {position.shape[0]}")
    return ids, segs


def size_class(nbytes: int) -> int:
    """A buffer pool's allocation size for a request: rounded up to one of 8 sizes per
    power of two (at most 12.5% slack; a buffer serves every request of its class)."""
    nbytes = max(256, int(nbytes))
    step = 1 << max(8, nbytes.bit_length() - 4)
    return -(-nbytes // step) * step


class NumpyOps:
    """Plain NumPy in float64 or float32."""

    name = "numpy"

    def __init__(self, dtype="float64"):
        if np.dtype(dtype) not in (np.float32, np.float64):
            raise ValueError(f"numpy backend dtype must be float32 or float64, got {dtype!r}")
        self.dtype = np.dtype(dtype)

    def workspace(self):
        """No buffer reuse: NumPy allocates every result."""
        return contextlib.nullcontext()

    def prepare(self, name, array):
        return np.ascontiguousarray(array, dtype=self.dtype)

    def embed(self, input_ids, segment_ids, word, token_type, position):
        seq_len = input_ids.shape[1]
        return (word[input_ids] + token_type[segment_ids]) + position[:seq_len]

    def layer_norm(self, x, residual, gamma, beta, eps):
        if residual is not None:
            x = x + residual
        mean = x.mean(axis=-1, keepdims=True)
        var = np.square(x - mean).mean(axis=-1, keepdims=True)
        # TF's nn.batch_normalization order, not the textbook one.
        inv = (1.0 / np.sqrt(var + self.dtype.type(eps))) * gamma
        return x * inv + (beta - mean * inv)

    def dense(self, x, kernel, bias, activation=None):
        return ACTIVATIONS[activation](np.matmul(x, kernel) + bias)

    def attention(self, q, k, v, input_mask, num_heads):
        b, s, h = q.shape
        d = h // num_heads

        def heads(t):
            return t.reshape(b, s, num_heads, d).transpose(0, 2, 1, 3)

        scores = np.matmul(heads(q), heads(k).transpose(0, 1, 3, 2)) * self.dtype.type(1.0 / math.sqrt(d))
        scores = np.where(real_keys(input_mask)[:, None, None, :], scores, -np.inf)
        scores = scores - scores.max(axis=-1, keepdims=True)
        weights = np.exp(scores)
        weights /= weights.sum(axis=-1, keepdims=True)
        return np.matmul(weights, heads(v)).transpose(0, 2, 1, 3).reshape(b, s, h)
