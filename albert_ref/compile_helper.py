"""A cold start's second core: while the CLI compiles the cpu backend's kernels in the
order its forward calls them (weight packing, embeddings, LayerNorm, the dense GEMM), a
helper process compiles the one it calls last, attention (with its real-key index, its
softmax and the GEMM tile it shares), into Numba's on-disk cache, and the CLI loads it
from there instead of compiling it (2 Zen 4 cores: 5.0-5.4 s -> 3.7-3.9 s; benchmarks/RESULTS.md,
"Cold start in two processes").

Why the bits cannot change. The helper calls the same KernelOps method as the forward, in
the same environment (NUMBA_CACHE_DIR, NUMBA_CPU_NAME / FEATURES, the same kernel variant,
the CLI's sys.path), so its signatures and cache keys are the ones the CLI looks up, and a
cache entry is the same compiled code whichever process wrote it. Numba looks each new
signature up in its cache before compiling it, and writes every file under a temporary
name that it then renames, so no half-written file is read (numba/core/caching.py,
`_open_for_write`). It writes a function's index before the data file the index names: a
lookup in between finds no file and compiles (here: waits, then looks again). That file
could only be an older one if a stale cache survived, and albert_ref.kernels deletes one
(other kernel sources or another Numba) on import, before either process compiles
(kernels/__init__.py).

When the CLI reaches attention before the helper has saved it, it waits for the helper to
exit (at most WAIT_S) and looks again, rather than compile it a second time
(`_WaitForHelper`, the cache lookup of that one function).

The helper is an optimisation only. If it cannot start, fails, or writes nothing, the CLI
compiles everything itself. It writes nothing to stdout or stderr, exits when the CLI's
pipe to it closes (so even a killed CLI leaves no orphan), and the CLI terminates and reaps
it when its command ends. Only the CLI starts one (compile_notice.notice_compilation);
`albert_ref.load` never spawns a process.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading

# The helper starts with the CLI's first compilation and needs about as long as the CLI takes
# to reach attention, so a wait is normally a fraction of a second; one this long means the
# helper is stuck, and the CLI compiles attention itself.
WAIT_S = 10.0


class CompileHelper:
    """At most one helper process for one CLI command: `start` on the first compilation,
    `stop` when the command ends."""

    def __init__(self):
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._waiting = None      # the dispatcher whose cache lookups wait for the helper
        self._stopped = False

    def command(self, variant: str) -> list[str]:
        """This interpreter, on this process's sys.path (not `-m`, which would put the current
        directory first: an albert_ref source tree there is not necessarily the one running)."""
        boot = "import sys; sys.path[:] = sys.argv[2:]; from albert_ref.compile_helper import main; main(sys.argv[1])"
        return [sys.executable, "-c", boot, variant, *sys.path]

    def start(self) -> None:
        """Starts the helper for the cpu backend's kernel variant, once; never raises."""
        from albert_ref.errors import IsaError
        from albert_ref.kernels import isa

        with self._lock:
            if self._proc is not None or self._stopped:
                return
            self._stopped = True          # one attempt only, whatever happens below
            if spare_cpus() < 1:
                return                    # on one CPU a second compiler only competes with this one
            try:
                kernels = isa.kernel_set(isa.select().name)
                self._proc = subprocess.Popen(self.command(kernels.variant.name), stdin=subprocess.PIPE,
                                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            except (IsaError, OSError, ValueError, subprocess.SubprocessError):
                return                    # no helper: the CLI compiles everything, as it would anyway
            # reaped as soon as it exits, not when the command ends: `serve` runs for hours
            threading.Thread(target=self._proc.wait, name="albert-ref-helper-reaper", daemon=True).start()
            if hasattr(kernels.attention_part, "_cache"):   # Numba's per-dispatcher cache (a private name)
                self._waiting = kernels.attention_part
                self._waiting._cache = _WaitForHelper(self._waiting._cache, self._proc)

    def stop(self) -> None:
        """Terminates the helper if it still runs, and reaps it."""
        with self._lock:
            self._stopped = True
            proc, self._proc = self._proc, None
            if self._waiting is not None:
                self._waiting._cache = self._waiting._cache.cache
                self._waiting = None
        if proc is None:
            return
        try:
            proc.stdin.close()
        except OSError:
            pass
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
        proc.wait()


def spare_cpus() -> int:
    """CPUs this process may run on besides the one compiling."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return cpus - 1


class _WaitForHelper:
    """A dispatcher's Numba cache whose lookups, on a miss while the helper runs, wait for
    it to exit (bounded) and look again: loading what it compiled beats compiling the same
    function a second time."""

    def __init__(self, cache, proc: subprocess.Popen):
        self.cache = cache
        self._proc = proc

    def load_overload(self, sig, target_context):
        found = self.cache.load_overload(sig, target_context)
        if found is None and self._proc.poll() is None:     # not there yet, and the helper is on it
            try:
                self._proc.wait(timeout=WAIT_S)
            except subprocess.TimeoutExpired:
                pass
            found = self.cache.load_overload(sig, target_context)
        return found

    def __getattr__(self, name):
        return getattr(self.cache, name)


def _exit_with_parent() -> None:
    """Exits this process when the CLI's end of the stdin pipe closes (the CLI ended, or
    was killed before it could terminate us). os.read, not sys.stdin: a daemon thread
    blocked inside a buffered reader aborts the interpreter's shutdown."""
    try:
        while os.read(0, 4096):
            pass
    finally:
        os._exit(0)


def compile_last_kernels(variant: str) -> None:
    """Compiles (or loads from the cache) attention for kernel variant `variant`, through
    KernelOps.attention on tiny arrays (the types make the signatures, not the sizes)."""
    import numpy as np

    from albert_ref.kernel_backend import KernelOps

    ops = KernelOps(fast=True, threads=1, isa=variant)
    q = np.zeros((1, 2, 2), dtype=np.float32)
    ops.attention(q, q, q, np.ones((1, 2), dtype=np.int64), 1)


def main(variant: str) -> None:
    """The helper process (started by CompileHelper.start)."""
    threading.Thread(target=_exit_with_parent, daemon=True).start()
    compile_last_kernels(variant)
    os._exit(0)  # the cache files are closed: the CLI may be waiting, skip the teardown (~0.2 s)
