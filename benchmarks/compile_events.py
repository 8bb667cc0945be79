"""Where a cold start's compilation goes: runs an albert-ref command in this process with
an empty Numba cache (a fresh temporary NUMBA_CACHE_DIR unless one is set) and lists the
CPU seconds of each compiled function, exclusive of the functions it compiled in turn, from
Numba's "numba:compile" events (a function loaded from the cache fires none). The CLI's
compile helpers (albert_ref/compile_helper.py) are off, so that every kernel is compiled and
listed here; with --helper they run, and the list is what the CLI process still compiles.

    python benchmarks/compile_events.py                       # embed "hello world", demo model
    python benchmarks/compile_events.py embed --model M.h5 "some text"
    python benchmarks/compile_events.py --helper
"""
from __future__ import annotations

import collections
import os
import shutil
import sys
import tempfile
import time


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    helper = "--helper" in argv
    argv = [a for a in argv if a != "--helper"] or ["embed", "hello world"]
    if not helper:
        os.environ["ALBERT_REF_COMPILE_HELPERS"] = "0"
    own_cache = "NUMBA_CACHE_DIR" not in os.environ
    if own_cache:
        os.environ["NUMBA_CACHE_DIR"] = tempfile.mkdtemp(prefix="albert-ref-cold-")
    from numba.core import event

    from albert_ref.cli import main as cli_main

    exclusive = collections.Counter()
    counts = collections.Counter()
    stack = []   # [name, start CPU time, CPU time of the compilations inside it]

    class Recorder(event.Listener):
        def on_start(self, ev):
            stack.append([ev.data["dispatcher"].py_func.__qualname__, time.process_time(), 0.0])

        def on_end(self, ev):
            name, start, inner = stack.pop()
            spent = time.process_time() - start
            exclusive[name] += spent - inner
            counts[name] += 1
            if stack:
                stack[-1][2] += spent

    wall, cpu = time.perf_counter(), time.process_time()
    with event.install_listener("numba:compile", Recorder()):
        code = cli_main(argv)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(f"albert-ref {' '.join(argv)}: exit {code}, {wall:.2f} s wall, {cpu:.2f} s CPU in the command; "
          f"compilation {sum(exclusive.values()):.2f} s CPU (NUMBA_CACHE_DIR={os.environ['NUMBA_CACHE_DIR']})",
          file=sys.stderr)
    for name, seconds in exclusive.most_common():
        print(f"  {seconds:6.2f} s  {name}" + (f"  (compiled {counts[name]} times)" if counts[name] > 1 else ""),
              file=sys.stderr)
    if own_cache:
        shutil.rmtree(os.environ["NUMBA_CACHE_DIR"], ignore_errors=True)


if __name__ == "__main__":
    main()
