"""The kernel backends: "reference" (plain scalar kernels that define the bits) and "cpu"
(the fast Numba kernels), both float32 and both bit-exact to NUMERICS.md.

forward.py composes the ops; this class only moves arrays between them. GEMM weights are
packed into panels once, in `prepare`; nothing is ever copied per layer, so the shared
layers of ALBERT stay shared. Within a forward pass, results reuse the memory of dead
results (Workspace).
"""
from __future__ import annotations

import contextlib
import math
import mmap
import threading
import weakref

import numba
import numpy as np

from albert_ref.ops import check_out, embedding_indices, real_keys, size_class
from albert_ref.errors import InputError, IsaError
from albert_ref.forward import is_dense_kernel
from albert_ref.parts import run_parts
from albert_ref.kernels import attention as _att
from albert_ref.kernels import embed as _emb
from albert_ref.kernels import gemm as _gemm
from albert_ref.kernels import isa as _isa
from albert_ref.kernels import layernorm as _ln


class PackedKernel:
    """A [K, N] dense kernel packed into the NR-column panels of one variant (fast backend)."""

    __slots__ = ("panels", "shape", "variant")

    def __init__(self, array, kernels: _isa.KernelSet):
        self.shape = array.shape
        self.variant = kernels.variant
        self.panels = kernels.pack(array)


class Workspace:
    """Activation buffers recycled within a forward pass (`with ops.workspace():`).

    Every op's result is a fresh multi-MB array; a freshly mapped one costs a page fault
    per 4 KiB on first touch (8% of the xlarge FFN's first GEMM: the "reused" column
    of benchmarks/bench_gemm.py). Inside a scope, results are
    carved from pooled anonymous mappings instead: each handed-out array is the one
    owner of its views (its base is the mapping, not an ndarray, so numpy's views stop
    at it), and a finalizer returns the mapping to the pool when the last view is gone.
    So a buffer is reused exactly when nothing can see it any more, and only the first
    layer of a pass touches new memory. When the outermost scope ends, the pool forgets
    every buffer: arrays still held (the outputs) free theirs when dropped, and nothing is
    retained between passes. Outside a scope, results are plain np.empty arrays."""

    def __init__(self):
        self._lock = threading.RLock()       # finalizers may run inside `empty`
        self._depth = 0
        self._generation = 0
        self._free: dict[int, list] = {}

    @contextlib.contextmanager
    def scope(self):
        with self._lock:
            self._depth += 1
        try:
            yield
        finally:
            with self._lock:
                self._depth -= 1
                if self._depth == 0:
                    self._free.clear()
                    self._generation += 1

    def empty(self, shape):
        shape = tuple(int(s) for s in shape)
        n = math.prod(shape)
        with self._lock:
            if self._depth == 0:
                return np.empty(shape, dtype=np.float32)
            cls = size_class(4 * n)
            free = self._free.get(cls)
            block = free.pop() if free else mmap.mmap(-1, cls)
            array = np.frombuffer(block, dtype=np.float32, count=n)
            weakref.finalize(array, self._release, cls, block, self._generation)
        return array.reshape(shape)

    @property
    def pooled_bytes(self) -> int:
        """Bytes of free buffers waiting for reuse."""
        return sum(cls * len(blocks) for cls, blocks in self._free.items())

    def _release(self, cls, block, generation):
        with self._lock:
            if self._depth and generation == self._generation:
                self._free.setdefault(cls, []).append(block)


def _f32(array):
    return np.ascontiguousarray(array, dtype=np.float32)


class KernelOps:
    """Ops over the kernels. fast=True: the "cpu" backend; fast=False: "reference".

    isa: the fast kernels' instruction-set variant (kernels/isa.py; None: $ALBERT_REF_ISA,
    else the widest the CPU runs). The reference kernels have none (`isa` is None)."""

    dtype = np.dtype(np.float32)
    # The feed-forward in near-equal blocks of at most 256 rows (forward.feed_forward,
    # row_blocks): for xlarge its intermediate then takes 8 MB instead of 32 MB at 8 x 128
    # tokens (128 MB at 32 x 128), and the pass's peak RSS is 32 MB lower (120 MB at
    # 32 x 128); the 8 x 128 pass took 1-2.4% longer, each FFN weight streaming from memory
    # once per block (benchmarks/bench_ffn_rows.py; RESULTS.md, the table of commit
    # f1492e2). None: whole.
    ffn_rows = 256

    def __init__(self, fast: bool = True, threads: int | None = None, isa: str | None = None):
        self.fast = bool(fast)
        self.name = "cpu" if self.fast else "reference"
        if isa is not None and not self.fast:
            raise IsaError("isa selects a variant of the cpu backend's kernels; the reference kernels have none")
        self._kernels = _isa.kernel_set(_isa.select(isa).name) if self.fast else None
        self.isa = self._kernels.variant if self.fast else None
        if threads is None:
            threads = numba.config.NUMBA_NUM_THREADS
        threads = int(threads)
        if not 1 <= threads <= numba.config.NUMBA_NUM_THREADS:
            raise InputError(f"threads must be between 1 and {numba.config.NUMBA_NUM_THREADS} "
                             f"(NUMBA_NUM_THREADS), got {threads}")
        self.threads = threads
        self._workspace = Workspace()

    def workspace(self):
        """A scope (one forward pass) within which results reuse dead results' buffers."""
        return self._workspace.scope()

    def empty(self, shape):
        return self._workspace.empty(shape)

    # -- parameters ---------------------------------------------------------------------
    def prepare(self, name, array):
        array = _f32(array)
        if is_dense_kernel(name):
            if array.ndim != 2:
                raise ValueError(f"{name}: a dense kernel must be 2-D, got shape {array.shape}")
            return PackedKernel(array, self._kernels) if self.fast else array
        return array

    def warm_up(self, ops=None):
        """Loads the kernels of the ops named in `ops` (default: all a forward pass calls) from
        Numba's cache, compiling them on a cold one, by calling each op, in a pass's order,
        on arrays of one or two elements: argument types, not sizes, make the signatures.
        albert_ref.load runs it on a second thread while the weights are read, which hides
        Numba's set-up and loading; the CLI's compile helpers run it for their share."""
        one = np.ones((1, 2, 2), dtype=np.float32)
        vec = np.ones(2, dtype=np.float32)
        ids = np.zeros((1, 2), dtype=np.int32)
        calls = {"embed": lambda: self.embed(ids, ids, one[0], one[0], one[0]),
                 "layer_norm": lambda: self.layer_norm(one, one, vec, vec, 1e-12),
                 "dense": lambda: self.dense(one, self.prepare("warm_up/kernel", one[0]), vec, "gelu_tanh"),
                 "attention": lambda: self.attention(one, one, one, ids + 1, 1)}
        with self.workspace():
            for op, call in calls.items():   # a forward pass's order
                if ops is None or op in ops:
                    call()

    # -- ops ----------------------------------------------------------------------------------
    def embed(self, input_ids, segment_ids, word, token_type, position):
        ids, segs = embedding_indices(input_ids, segment_ids, word, token_type, position)
        B, S = ids.shape
        out = self._workspace.empty((B, S, word.shape[1]))
        _emb.embed_ref(ids, segs, word, token_type, position, out)  # one serial gather serves both backends
        return out

    def layer_norm(self, x, residual, gamma, beta, eps):
        shape = x.shape
        n = shape[-1]
        x2 = _f32(x).reshape(-1, n)
        has_res = residual is not None
        r2 = _f32(residual).reshape(-1, n) if has_res else x2
        out = self._workspace.empty(x2.shape)
        if self.fast:
            run_parts(_ln.layer_norm_part, self.threads, x2, r2, has_res, gamma, beta, np.float32(eps), out)
        else:
            _ln.layer_norm_ref(x2, r2, has_res, gamma, beta, np.float32(eps), out)
        return out.reshape(shape)

    def dense(self, x, kernel, bias, activation=None, out=None):
        act = _gemm.ACT_CODES[activation]
        lead = x.shape[:-1]
        K, N = kernel.shape
        if x.shape[-1] != K:
            raise ValueError(f"dense: input has {x.shape[-1]} features, kernel expects {K}")
        x2 = _f32(x).reshape(-1, K)
        if out is None:
            out2 = self._workspace.empty((x2.shape[0], N))
        else:
            check_out(out, (*lead, N), np.float32, contiguous=out.flags.c_contiguous,
                      overlaps=np.may_share_memory(out, x2))
            out2 = out.reshape(x2.shape[0], N)
        if self.fast:
            if kernel.variant != self.isa:
                raise ValueError(f"dense: kernel packed for isa {kernel.variant.name!r}, backend runs {self.isa.name!r}")
            self._kernels.dense(x2, kernel.panels, bias, act, self.threads, out2)
        else:
            _gemm.dense_ref(x2, kernel, bias, act, out2)
        return out2.reshape(*lead, N) if out is None else out

    def attention(self, q, k, v, input_mask, num_heads):
        q, k, v = _f32(q), _f32(k), _f32(v)
        B, S, H = q.shape
        if np.shape(input_mask) != (B, S):
            raise ValueError(f"input_mask shape {np.shape(input_mask)} does not match {(B, S)}")
        mask = np.ascontiguousarray(real_keys(input_mask), dtype=np.int64)  # the keys each sequence attends to
        scale = _att.attention_scale(H // num_heads)
        out = self._workspace.empty(q.shape)
        if self.fast:
            self._kernels.attention(q, k, v, mask, num_heads, scale, out, self.threads)
        else:
            _att.attention_ref(q, k, v, mask, num_heads, scale, out)
        return out

