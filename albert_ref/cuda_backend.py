"""The "cuda" backend: the forward pass on an NVIDIA GPU with the numba.cuda kernels of
kernels/cuda_*.py, bit-identical to the "reference" and "cpu" backends (NUMERICS.md).

`CudaOps` is the same ops interface as kernel_backend.KernelOps (prepare / embed /
layer_norm / dense / attention); forward.py composes it unchanged. Arrays stay on the
device between ops: `prepare` uploads each weight once (the shared ALBERT layer is one
upload however many layers use it); the ops return numba device arrays, which
`np.asarray` (what Model.__call__ does with every output) copies to the host. The only
host-device traffic of a forward pass is the token ids in, the compacted key positions
of the input mask in (once per distinct mask), and the outputs out.

Activations live in a buffer pool: a device buffer whose arrays are all gone returns to
the pool and serves the next op of the same size class, so a forward pass does no
cudaMalloc/cudaFree once the first call has sized the pool. Every kernel runs on one
stream (the default stream), so reusing a buffer is ordered after every kernel that
read it.

Requires the optional `cuda` extra (`pip install 'albert-ref[cuda]'`, i.e. numba-cuda
with the CUDA 13 toolkit wheels) and an NVIDIA driver; without them, constructing
CudaOps raises CudaUnavailableError saying which is missing. Under the CUDA simulator
(NUMBA_ENABLE_CUDASIM=1) it runs the same kernels in Python, slowly, for tests.
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import itertools
import warnings

import numpy as np

from albert_ref.ops import check_out, embedding_indices, real_keys, size_class
from albert_ref.errors import AlbertRefError
from albert_ref.forward import is_dense_kernel



class CudaUnavailableError(AlbertRefError, RuntimeError):
    """The "cuda" backend cannot run here: numba-cuda is not installed, or no usable
    NVIDIA GPU/driver is present."""



def _on_device(a) -> bool:
    """A numba device array (or the simulator's stand-in for one)."""
    return not isinstance(a, np.ndarray) and hasattr(a, "copy_to_host")


def _overlap(a, b) -> bool:
    """Whether two C-contiguous device arrays share device memory (by their byte extents;
    the simulator's arrays wrap host arrays, which NumPy compares)."""
    if hasattr(a, "__cuda_array_interface__"):
        (pa, _), (pb, _) = a.__cuda_array_interface__["data"], b.__cuda_array_interface__["data"]
        return pa < pb + b.nbytes and pb < pa + a.nbytes
    return np.may_share_memory(a._ary, b._ary)


def _require_cuda():
    """numba.cuda, after checking that numba-cuda and a GPU are there."""
    if importlib.util.find_spec("numba_cuda") is None:
        raise CudaUnavailableError(
            "backend 'cuda' needs numba-cuda, which is not installed: pip install 'albert-ref[cuda]' "
            "(numba-cuda with the CUDA 13 toolkit wheels), or use backend='cpu'")
    try:
        from numba import cuda
        from albert_ref.kernels import cuda_fmath
    except ImportError as e:
        raise CudaUnavailableError(f"backend 'cuda': numba-cuda cannot be imported ({e}); "
                                   f"pip install 'albert-ref[cuda]', or use backend='cpu'") from e
    if cuda_fmath.SIM:
        return cuda
    try:
        available = cuda.is_available()
        reason = "numba.cuda.is_available() is False"
    except Exception as e:  # driver library missing or broken
        available, reason = False, f"{type(e).__name__}: {e}"
    if not available:
        raise CudaUnavailableError(
            f"backend 'cuda': no usable NVIDIA GPU/driver found ({reason}); "
            f"run on a machine with an NVIDIA GPU and driver, or use backend='cpu'")
    return cuda


class _BufferPool:
    """Device buffers that return to a free list when the last array over them is gone.

    Each handed-out buffer is a numba AutoFreePointer over a pooled allocation, with the
    finalizer "give the allocation back" (numba's own allocator has the same shape, with
    "cuMemFree" as the finalizer); views, reshapes and slices hold references to it as
    they do for numba's own memory. Sizes are rounded up to 8 classes per power of two."""

    def __init__(self, cuda):
        from numba.cuda.cudadrv import driver
        self._driver = driver
        self._ctx = cuda.current_context()
        self._free: dict[int, list] = {}
        self._live: dict[int, object] = {}
        self._keys = itertools.count()

    def empty(self, shape, dtype=np.float32):
        from numba.cuda.cudadrv.devicearray import DeviceNDArray
        dtype = np.dtype(dtype)
        shape = tuple(int(s) for s in shape)
        size = int(np.prod(shape)) * dtype.itemsize
        cls = size_class(size)
        free = self._free.get(cls)
        base = free.pop() if free else self._ctx.memalloc(cls)
        key = next(self._keys)
        mem = self._driver.AutoFreePointer(self._ctx, base.device_pointer, cls,
                                           finalizer=functools.partial(self._release, key, cls, base))
        self._live[key] = mem
        strides, step = [], dtype.itemsize
        for s in reversed(shape):
            strides.insert(0, step)
            step *= s
        return DeviceNDArray(shape, strides, dtype, gpu_data=mem.own())

    def _release(self, key, cls, base):
        self._live.pop(key, None)
        self._free.setdefault(cls, []).append(base)


class CudaOps:
    """Ops over the CUDA kernels: backend "cuda".

    dense_tile, attention_rows, layer_norm_rows: kernel tilings (speed only; the bits are
    the same for every choice)."""

    name = "cuda"
    dtype = np.dtype(np.float32)

    def __init__(self, dense_tile=None, attention_rows=None, layer_norm_rows=None):
        self._cuda = cuda = _require_cuda()
        from albert_ref.kernels import cuda_attention, cuda_embed, cuda_fmath, cuda_gemm, cuda_layernorm
        self._k_att, self._k_emb, self._k_gemm, self._k_ln = cuda_attention, cuda_embed, cuda_gemm, cuda_layernorm
        self.simulator = cuda_fmath.SIM
        if self.simulator and not cuda_fmath.SIMULATOR_LOCKED:
            warnings.warn("numba-cuda's simulator creates shared arrays racily, so kernels can give wrong "
                          "results; albert_ref.kernels.cuda_fmath.lock_simulated_shared_arrays() fixes it "
                          "(a process-wide patch of numba-cuda)", RuntimeWarning, stacklevel=2)
        self.dense_tile = tuple(dense_tile or cuda_gemm.DEFAULT_TILE)
        self.attention_rows = int(attention_rows or cuda_attention.WQ)
        self.layer_norm_rows = int(layer_norm_rows or cuda_layernorm.ROWS)
        cuda_gemm.make_dense_kernel(0, self.dense_tile)     # validates the tiling now
        self._pool = None if self.simulator else _BufferPool(cuda)
        self._mask_key = None
        self._mask_dev = None

    # -- memory -----------------------------------------------------------------------------
    def workspace(self):
        """Nothing to scope: the device buffer pool lives as long as the backend."""
        return contextlib.nullcontext()

    def empty(self, shape):
        if self._pool is not None:
            try:
                return self._pool.empty(shape)
            except Exception as e:  # a numba-cuda whose memory internals differ: plain allocations
                import warnings
                warnings.warn(f"albert_ref cuda backend: buffer pool disabled ({type(e).__name__}: {e})")
                self._pool = None
        return self._cuda.device_array(tuple(int(s) for s in shape), dtype=np.float32)

    def _dev(self, a):
        """A float32 device array for a (host or device) array."""
        if _on_device(a):
            if a.dtype != np.float32:
                raise TypeError(f"device array of dtype {a.dtype}: the cuda backend is float32 only")
            return a
        return self._cuda.to_device(np.ascontiguousarray(a, dtype=np.float32))

    def _contiguous(self, a):
        """a as a C-contiguous 2-D device array (copies a strided view, e.g. x[:, 0])."""
        if a.is_c_contiguous():
            return a
        out = self.empty(a.shape)
        total = a.shape[0] * a.shape[1]
        if total:
            self._k_gemm.copy_rows_kernel[(total + 255) // 256, 256](a, out)
        return out

    # -- parameters ---------------------------------------------------------------------------
    def prepare(self, name, array):
        array = np.ascontiguousarray(array, dtype=np.float32)
        if is_dense_kernel(name) and array.ndim != 2:
            raise ValueError(f"{name}: a dense kernel must be 2-D, got shape {array.shape}")
        return self._cuda.to_device(array)

    # -- ops ----------------------------------------------------------------------------------
    def embed(self, input_ids, segment_ids, word, token_type, position):
        ids, segs = embedding_indices(input_ids, segment_ids, word, token_type, position)
        B, S = ids.shape
        word, token_type, position = self._dev(word), self._dev(token_type), self._dev(position)
        out = self.empty((B, S, word.shape[1]))
        self._k_emb.launch_embed(self._cuda.to_device(ids.astype(np.int32)), self._cuda.to_device(segs.astype(np.int32)),
                                 word, token_type, position, out)
        return out

    def layer_norm(self, x, residual, gamma, beta, eps):
        shape = tuple(x.shape)
        n = shape[-1]
        M = int(np.prod(shape[:-1]))
        x2 = self._dev(x).reshape(M, n)
        r2 = None if residual is None else self._dev(residual).reshape(M, n)
        out = self.empty((M, n))
        self._k_ln.launch_layer_norm(x2, r2, self._dev(gamma), self._dev(beta), eps, out, rows=self.layer_norm_rows)
        return out.reshape(*shape)

    def dense(self, x, kernel, bias, activation=None, out=None):
        K, N = kernel.shape
        shape = tuple(x.shape)
        if shape[-1] != K:
            raise ValueError(f"dense: input has {shape[-1]} features, kernel expects {K}")
        if activation not in self._k_gemm.ACT_CODES:
            raise KeyError(activation)
        lead = shape[:-1]
        M = int(np.prod(lead))
        x = self._dev(x)
        x2 = self._contiguous(x) if x.ndim == 2 else self._contiguous(x.reshape(M, K))
        if out is None:
            out2 = self.empty((M, N))
        else:
            if not _on_device(out):
                raise ValueError("dense: out must be a device array of this backend's (from empty)")
            check_out(out, (*lead, N), np.float32, contiguous=out.is_c_contiguous(), overlaps=_overlap(out, x2))
            out2 = out.reshape(M, N)
        self._k_gemm.launch_dense(x2, self._dev(kernel), self._dev(bias), out2, activation, tile=self.dense_tile)
        return out2.reshape(*lead, N) if out is None else out

    def _real_keys(self, input_mask):
        keys = np.ascontiguousarray(real_keys(input_mask))
        key = (keys.shape, keys.tobytes())
        if key != self._mask_key:
            idx, nreal = self._k_att.key_index(keys)
            self._mask_dev = (self._cuda.to_device(idx), self._cuda.to_device(nreal))
            self._mask_key = key
        return self._mask_dev

    def attention(self, q, k, v, input_mask, num_heads):
        q, k, v = self._dev(q), self._dev(k), self._dev(v)
        B, S, H = q.shape
        mask = np.asarray(input_mask)
        if mask.shape != (B, S):
            raise ValueError(f"input_mask shape {mask.shape} does not match {(B, S)}")
        idx, nreal = self._real_keys(mask)
        out = self.empty((B, S, H))
        self._k_att.launch_attention(q, k, v, idx, nreal, num_heads, out, wq=self.attention_rows)
        return out
