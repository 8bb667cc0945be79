"""The "numpy" backend: the ops of albert_ref.ops over plain NumPy.

The mathematical reference for tolerance comparisons: float64 by default, float32 on
request, BLAS matmuls, no bit contract (the kernel backends follow NUMERICS.md bit for
bit; this one is what they are compared with).
"""
from __future__ import annotations

import contextlib
import functools
import math

import numpy as np

from albert_ref.ops import check_out, real_keys


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

    def empty(self, shape):
        return np.empty(shape, dtype=self.dtype)

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

    def dense(self, x, kernel, bias, activation=None, out=None):
        result = ACTIVATIONS[activation](np.matmul(x, kernel) + bias)
        if out is None:
            return result
        check_out(out, result.shape, result.dtype, contiguous=True, overlaps=False)
        out[...] = result
        return out

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
