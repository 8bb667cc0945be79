"""The cpu backend's parallel loops: a serial, GIL-free Numba kernel that takes
`(..., part, parts)` does the part-th of `parts` fixed slices of its work, and `run_parts`
runs the slices on `parts` threads at once (the caller's and a small pool's).

Why not Numba's `parallel=True`: a prange function is compiled twice over (the parfor
body as a gufunc, then the function around it, each optimized with its callees' IR linked
in), and it doubled the kernels' first-run compile time (12.7 s of CPU against 5.7 s for
the same kernels serial; benchmarks/RESULTS.md, "Start-up"). A thread pool costs no
compilation, and its per-call overhead (tens of microseconds) is noise next to a kernel.

The bits cannot depend on the thread count: a slice is fixed by (part, parts) alone, never
by timing, and every output element is written by exactly one slice, in the kernel's own
order. The pool is made on first use (never on import) and again in a forked child, whose
copy of the parent's pool has no threads.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait

_lock = threading.Lock()
_pool: tuple[int, int, ThreadPoolExecutor] | None = None   # (pid, workers, executor)


def _executor(workers: int) -> ThreadPoolExecutor:
    """The process's pool, with room for every core (its threads start only as work comes),
    so it is remade only in a forked child or for more slices than cores; a pool it
    replaces is shut down once its queued slices are done."""
    global _pool
    with _lock:
        if _pool is None or _pool[0] != os.getpid() or _pool[1] < workers:
            old = _pool[2] if _pool is not None and _pool[0] == os.getpid() else None
            size = max(workers, os.cpu_count() or 1)
            _pool = (os.getpid(), size, ThreadPoolExecutor(size, thread_name_prefix="albert-ref-kernel"))
            if old is not None:
                old.shutdown(wait=False)
        return _pool[2]


def run_parts(kernel, parts: int, *args) -> None:
    """kernel(*args, part, parts) for every part < parts, part 0 in the calling thread;
    returns when all are done, raising the first part's error if any failed."""
    if parts <= 1:
        kernel(*args, 0, 1)
        return
    pool = _executor(parts - 1)
    futures = [pool.submit(kernel, *args, part, parts) for part in range(1, parts)]
    try:
        kernel(*args, 0, parts)
    finally:
        wait(futures)  # no slice may still be writing when the caller sees an error
    for f in futures:
        f.result()
