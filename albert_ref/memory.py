"""Large, long-lived arrays (a model's weights) in memory of their own, and a process's
malloc kept from holding on to freed large buffers.

NumPy advises the kernel to back every array of 4 MiB or more with transparent huge pages.
Where the kernel has no free 2 MiB page at hand and honours that advice by compacting
memory at the first touch (/sys/kernel/mm/transparent_hugepage/defrag = madvise, a common
default), each huge page can stall: loading xlarge once took 0.62-0.69 s that way against
0.32-0.34 s on plain pages, and no longer than on plain pages when free huge pages were at
hand; the forward pass was no faster on huge pages (2 cores of a Zen 4 VM;
benchmarks/RESULTS.md, "Start-up after loading was rebuilt"). A private anonymous mapping
carries no advice, so the kernel uses huge pages only where its own policy gives them
without compacting.
"""
from __future__ import annotations

import math
import mmap
import os

import numpy as np


def weight_array(shape, dtype=np.float32) -> np.ndarray:
    """An uninitialised, writable array in a private anonymous mapping (np.empty below
    1 MiB, where a mapping of its own would waste its last page's slack on many small
    tensors and NumPy gives no huge-page advice anyway, or where the platform has no such
    mapping); the mapping is released with the last view of the array."""
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < (1 << 20) or not hasattr(mmap, "MAP_PRIVATE"):
        return np.empty(shape, dtype=dtype)
    # Not MAP_POPULATE: packing alone was faster (the FFN kernel in 30 ms instead of 40),
    # but loading as a whole slower (+35 ms): the kernels loading on the other thread
    # waited meanwhile (the populating mmap call holds the process's memory-map lock).
    try:
        block = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    except OSError:   # out of memory or mappings: NumPy's allocation, and its MemoryError
        return np.empty(shape, dtype=dtype)
    return np.frombuffer(block, dtype=dtype).reshape(shape)


def weight_copy(array: np.ndarray) -> np.ndarray:
    """A C-ordered copy of `array` in a weight_array."""
    out = weight_array(array.shape, array.dtype)
    out[...] = array
    return out


_HEAP_LIMITED = False


def limit_heap_retention():
    """Keep glibc from parking freed multi-MB buffers in its heap: an opt-in for programs
    that own their process (the albert-ref CLI and the benchmarks call it; a library
    import never does, since it changes malloc for the whole process).

    glibc raises its mmap threshold (up to 32 MiB) each time a large mmapped block is
    freed, after which multi-MB arrays come from the heap and their memory is not returned
    to the OS. Activations inside a forward pass come from the Workspace's own mappings,
    but arrays made outside a pass do not: without this, peak RSS at xlarge 8 x 128 was
    11 MB higher (measured 2026-11-26, before the weights had mappings of their own). A fixed threshold of 1 MiB
    (M_MMAP_THRESHOLD; also disables the dynamic adjustment) keeps every large array
    mmapped. Skipped off glibc, or when the user has set MALLOC_MMAP_THRESHOLD_ themselves."""
    global _HEAP_LIMITED
    if _HEAP_LIMITED or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return
    _HEAP_LIMITED = True
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass
