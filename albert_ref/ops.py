"""The ops interface that forward.py composes, the registry of backends that implement it,
and what those backends share.

A backend is an object with the methods of `Ops`. forward.py says how they compose; each
backend says how one op is computed: "numpy" (numpy_backend.py: float64 or float32 with
BLAS, the mathematical reference), "reference" and "cpu" (kernel_backend.py: the bit
contract of NUMERICS.md, plain and fast kernels), "cuda" (cuda_backend.py: the same
contract on a GPU). testing/fixtures.py wraps one to record every activation.
"""
from __future__ import annotations

from typing import Any, ContextManager, Protocol

import numpy as np

from albert_ref import forward
from albert_ref.errors import InputError, IsaError

BACKENDS = ("cpu", "reference", "numpy", "cuda")
# The backends under the bit contract: a vector does not depend on its batch or padding
# (the server and the distributed embedder run only on these).
CONTRACT_BACKENDS = ("cpu", "reference", "cuda")


class Ops(Protocol):
    """What a backend provides. Arrays are the backend's own (NumPy arrays, device arrays);
    `prepare` turns a stored tensor into the backend's form once, at load time."""

    name: str           # the backend's name in BACKENDS
    dtype: np.dtype     # the dtype it computes and returns

    def workspace(self) -> ContextManager:
        """A scope (one forward pass) within which results may reuse dead results' memory."""

    def prepare(self, name: str, array: np.ndarray) -> Any:
        """A stored tensor, by its TF name, in the form the other ops take (e.g. packed panels)."""

    # Optional: warm_up(), loading the backend's compiled kernels before the first pass
    # (albert_ref.load calls it, if present, while it reads the weights); ffn_rows, the most
    # rows forward.feed_forward gives one block of its two dense layers (absent or None:
    # all of them at once).

    def empty(self, shape) -> Any:
        """An uninitialised array of the backend's (within a workspace scope, from its buffers)."""

    def embed(self, input_ids, segment_ids, word, token_type, position):
        """(word[ids] + token_type[segment_ids]) + position: [B, S] -> [B, S, E]."""

    def layer_norm(self, x, residual, gamma, beta, eps):
        """LayerNorm(x + residual) (residual may be None), TF's order."""

    def dense(self, x, kernel, bias, activation=None, out=None):
        """activation(x @ kernel + bias); kernel as prepared, [in, out]. out: an array of the
        result's shape (e.g. rows of a larger one from `empty`), not overlapping x, to write
        it into and return."""

    def attention(self, q, k, v, input_mask, num_heads):
        """Multi-head softmax(q k^T / sqrt(d)) v over each sequence's real keys: [B, S, H]."""


def check_ops_args(backend: str, dtype: str | None, threads: int | None, isa: str | None = None) -> None:
    """make_ops' checks of its arguments that need no backend imported (an unknown isa
    name is the kernels' to refuse)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise InputError(f"threads must be a positive integer, got {threads!r}")
    if isa is not None and backend != "cpu":
        raise IsaError(f"isa={isa!r} selects a variant of the cpu backend's kernels; backend {backend!r} has none")
    if backend != "numpy" and dtype not in (None, "float32"):
        raise ValueError(f"backend {backend!r} computes in float32 only (got dtype={dtype!r}); "
                         f"use backend='numpy' for float64")
    if backend == "cuda" and threads is not None:   # the GPU's parallelism is not set in CPU threads: say so
        raise InputError("threads applies to the cpu and reference backends, not to 'cuda'")


def make_ops(backend: str, dtype: str | None, threads: int | None, isa: str | None = None):
    """The ops object for a backend name. Kernel backends are float32 only; isa picks the
    "cpu" backend's kernel variant (albert_ref.kernels.isa)."""
    check_ops_args(backend, dtype, threads, isa)
    if backend == "numpy":
        from albert_ref.numpy_backend import NumpyOps
        return NumpyOps(dtype or "float64")
    if backend == "cuda":
        from albert_ref.cuda_backend import CudaOps
        return CudaOps()
    from albert_ref.kernel_backend import KernelOps
    return KernelOps(fast=backend == "cpu", threads=threads, isa=isa)


def prepare_params(ops: Ops, tensors: dict, prepared=frozenset()) -> dict:
    """A model's tensors (plus the heads' derived decoders) as `ops` takes them; the names
    in `prepared` are in that form already."""
    return {name: array if name in prepared else ops.prepare(name, array)
            for name, array in forward.with_head_decoders(tensors).items()}


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


def check_out(out, shape, dtype, *, contiguous: bool, overlaps: bool) -> None:
    """dense's `out`: the result's shape and dtype, C-contiguous and apart from x where the
    backend's kernels need it (`contiguous`, `overlaps`: what the backend found; a backend
    that writes its result in whole after computing it passes True and False), or a
    ValueError naming the fault."""
    if tuple(out.shape) != tuple(shape) or np.dtype(out.dtype) != np.dtype(dtype):
        raise ValueError(f"dense: out is {np.dtype(out.dtype)} {tuple(out.shape)}, the result "
                         f"{np.dtype(dtype)} {tuple(shape)}")
    if not contiguous:
        raise ValueError("dense: out must be C-contiguous (e.g. a block of rows)")
    if overlaps:   # the kernels would overwrite x while reading it
        raise ValueError("dense: out must not overlap x")


def size_class(nbytes: int) -> int:
    """A buffer pool's allocation size for a request: rounded up to one of 8 sizes per
    power of two (at most 12.5% slack; a buffer serves every request of its class)."""
    nbytes = max(256, int(nbytes))
    step = 1 << max(8, nbytes.bit_length() - 4)
    return -(-nbytes // step) * step
