"""A cold start on every core: when the CLI first compiles, helper processes compile the cpu
backend's kernels into Numba's on-disk cache, one share each (SHARES: LayerNorm and the
dense GEMM; attention, with its real-key index, its softmax and its own GEMM tile), while
the CLI reads its model; the CLI then loads them from the cache. 2 Zen 4 cores: 5.7 s ->
about 4 s to the first demo vector (benchmarks/RESULTS.md, "Cold start in two processes").
The CLI itself compiles only what it had begun before they started (the embedding gather),
so it keeps none of the memory LLVM holds for each function a process compiled (40-50 MB
for all the kernels: the peak RSS of a cold pass is then the warm one's).

Why the bits cannot change. A helper calls the same KernelOps methods as the forward
(KernelOps.warm_up), in the same environment (NUMBA_CACHE_DIR, NUMBA_CPU_NAME / FEATURES,
the same kernel variant, the CLI's sys.path), so its signatures and cache keys are the ones
the CLI looks up, and a cache entry is the same compiled code whichever process wrote it.
Numba looks each new signature up in its cache before compiling it, and writes every file
under a temporary name that it then renames, so no half-written file is read
(numba/core/caching.py, `_open_for_write`). It writes a function's index before the data
file the index names: a lookup in between finds no file and compiles (here: waits, then
looks again). That file could only be an older one if a stale cache survived, and
albert_ref.kernels deletes one (other kernel sources or another Numba) on import, before
any process compiles (kernels/__init__.py).

When the CLI reaches a kernel that its helper has not saved yet, it waits for that helper
to exit (at most WAIT_S) and looks again, rather than compile it a second time
(`_WaitForHelper`, the cache lookup of the share's functions).

The helpers are an optimisation only. If one cannot start, fails, or writes nothing, the
CLI compiles its share itself. They write nothing to stdout or stderr, exit when the CLI's
pipe to them closes (so even a killed CLI leaves no orphan), and the CLI terminates and
reaps them when its command ends. Only the CLI starts them (compile_notice.notice_compilation);
`albert_ref.load` never spawns a process.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading

# The helpers' shares of KernelOps.warm_up's ops, balanced by compile time (2.9 and 2.3 s of
# CPU on a Zen 4).
SHARES = (("layer_norm", "dense"), ("attention",))
# ALBERT_REF_COMPILE_HELPERS=0 starts none (the CLI compiles everything itself).
ENV = "ALBERT_REF_COMPILE_HELPERS"
# A share compiles in a few seconds; a wait this long means its helper is stuck (or the
# machine badly overloaded): it is killed, and the CLI compiles the share itself.
WAIT_S = 30.0


def _dispatcher(kernels, op):
    """The Numba dispatcher that KernelOps calls for `op` with a KernelSet's variant."""
    from albert_ref.kernels import layernorm
    return {"layer_norm": layernorm.layer_norm_part, "dense": kernels.gemm_part,
            "attention": kernels.attention_part}[op]


class CompileHelper:
    """The helper processes of one CLI command: `start` on the first compilation, `stop`
    when the command ends."""

    def __init__(self):
        self._lock = threading.Lock()
        self._procs: list[subprocess.Popen] = []
        self._waiting = []        # the dispatchers whose cache lookups wait for a helper
        self._tried = False       # start and stop each end all later starts

    def command(self, variant: str, ops) -> list[str]:
        """This interpreter, on this process's sys.path (not `-m`, which would put the current
        directory first: an albert_ref source tree there is not necessarily the one running)."""
        boot = ("import sys; sys.path[:] = sys.argv[3:]; from albert_ref.compile_helper import main; "
                "main(sys.argv[1], sys.argv[2].split(','))")
        return [sys.executable, "-c", boot, variant, ",".join(ops), *sys.path]

    def start(self) -> None:
        """Starts the helpers for the cpu backend's kernel variant, once; never raises."""
        from albert_ref.errors import IsaError
        from albert_ref.kernels import isa

        with self._lock:
            if self._tried:
                return
            self._tried = True            # one attempt only, whatever happens below
            if spare_cpus() < 1 or os.environ.get(ENV) == "0":
                return                    # on one CPU, other compilers only compete with this one
            try:
                kernels = isa.kernel_set(isa.select().name)
            except IsaError:
                return                    # the backend will report it
            for ops in SHARES:
                try:
                    proc = subprocess.Popen(self.command(kernels.variant.name, ops), stdin=subprocess.PIPE,
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                except (OSError, ValueError, subprocess.SubprocessError):
                    continue              # no helper for this share: the CLI compiles it, as it would anyway
                self._procs.append(proc)
                # reaped as soon as it exits, not when the command ends: `serve` runs for hours
                threading.Thread(target=proc.wait, name="albert-ref-helper-reaper", daemon=True).start()
                for dispatcher in (_dispatcher(kernels, op) for op in ops):
                    if hasattr(dispatcher, "_cache"):   # Numba's per-dispatcher cache (a private name)
                        dispatcher._cache = _WaitForHelper(dispatcher._cache, proc)
                        self._waiting.append(dispatcher)

    def stop(self) -> None:
        """Terminates the helpers still running, and reaps them."""
        with self._lock:
            self._tried = True
            procs, self._procs = self._procs, []
            for dispatcher in self._waiting:
                dispatcher._cache = dispatcher._cache.cache
            self._waiting = []
        for proc in procs:
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
            except subprocess.TimeoutExpired:   # stuck: killed, so that its other kernels wait no more
                self._proc.kill()
                self._proc.wait()
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


def main(variant: str, ops) -> None:
    """A helper process (started by CompileHelper.start): compiles (or loads) the kernels of
    `ops` for kernel variant `variant`, then exits."""
    from albert_ref.kernel_backend import KernelOps

    threading.Thread(target=_exit_with_parent, daemon=True).start()
    KernelOps(fast=True, threads=1, isa=variant).warm_up(ops)
    os._exit(0)  # the cache files are closed: the CLI may be waiting, skip the teardown (~0.2 s)
