"""albert_ref.parts, the cpu kernels' threads: every slice runs once, on `parts` threads at
once, an error in any slice reaches the caller, and a forked child has a working pool."""
import os
import signal
import threading
import time

import pytest

from albert_ref.parts import run_parts


def test_every_slice_runs_once_on_its_own_thread():
    seen, lock = [], threading.Lock()
    both_running = threading.Barrier(3, timeout=30)  # all 3 slices at once, or this breaks

    def kernel(tag, part, parts):
        both_running.wait()
        with lock:
            seen.append((tag, part, parts, threading.get_ident()))

    run_parts(kernel, 3, "a")
    assert sorted(s[:3] for s in seen) == [("a", p, 3) for p in range(3)]
    assert len({s[3] for s in seen}) == 3
    run_parts(lambda part, parts: seen.append((part, parts)), 1)
    assert seen[-1] == (0, 1)


def test_an_error_in_any_slice_reaches_the_caller_after_every_slice_ends():
    finished = []

    def kernel(part, parts):
        if part == 1:
            raise ValueError("slice 1 failed")
        if part == 2:   # still running when the caller's own slice and slice 1 are done
            time.sleep(0.3)
        finished.append(part)

    with pytest.raises(ValueError, match="slice 1 failed"):
        run_parts(kernel, 3)
    assert sorted(finished) == [0, 2]


def test_a_forked_child_runs_slices():
    run_parts(lambda part, parts: None, 2)  # the parent's pool exists
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            out = []
            run_parts(lambda part, parts: out.append(part), 2)
            code = 0 if sorted(out) == [0, 1] else 1
        finally:
            os._exit(code)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail("the forked child hung running slices")
