"""The CLI's compile helpers (albert_ref/compile_helper.py): on a cold Numba cache helper
processes compile the kernels (LayerNorm and the dense GEMM; attention), the CLI loads them
from the cache, the vectors are the same bits as without helpers (or with helpers that
fail), and no helper outlives its command, whether it ends normally, fails, or is interrupted.

Each case is one CLI run in a fresh interpreter with its own empty NUMBA_CACHE_DIR (a cold
run compiles for ~5 s of CPU: four of them here, each asserting several things)."""
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from albert_ref import compile_helper
from albert_ref.testing import assert_equal_bits

NOTICE = "albert-ref: compiling the kernels for "

# argv: HELPER ("real" or Python code to run instead of the helper), then the CLI's arguments.
# The last line of stderr: the exit code, the functions compiled in this process, and whether
# a child process (running or unreaped) is left after the command.
_CLI = """
import json, os, sys
from numba.core import event
from albert_ref import cli, compile_helper
if sys.argv[1] != "real":
    compile_helper.CompileHelper.command = lambda self, variant, ops: [sys.executable, "-c", sys.argv[1]]
compiled = []
class Names(event.Listener):
    def on_start(self, ev):
        compiled.append(ev.data["dispatcher"].py_func.__qualname__)
    def on_end(self, ev):
        pass
with event.install_listener("numba:compile", Names()):
    code = cli.main(sys.argv[2:])
try:
    left = os.waitpid(-1, os.WNOHANG) and "a child process"
except ChildProcessError:
    left = None
print(json.dumps({"code": code, "compiled": compiled, "left": left}), file=sys.stderr)
"""

_FAILING = "import sys; print('helper junk'); sys.stderr.write('helper junk'); sys.exit(1)"
_STUCK = "import time; time.sleep(600)"   # ignores the CLI's pipe closing: must be terminated


def _start(tmp_path, helper, *argv):
    tmp_path.mkdir(exist_ok=True)
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba-cache"))
    env.pop("ALBERT_REF_ISA", None)
    return subprocess.Popen([sys.executable, "-c", _CLI, helper, *argv], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path)


def _finish(proc):
    out, err = proc.communicate(timeout=600)
    return out, err, json.loads(err.strip().splitlines()[-1])


def _embed(tmp_path, helper):
    out, err, result = _finish(_start(tmp_path, helper, "embed", "hello world"))
    assert result["code"] == 0 and err.count(NOTICE) == 1, err
    assert result["left"] is None, "the helper outlived the command"
    return np.array(json.loads(out), dtype=np.float32), result["compiled"]


@pytest.mark.skipif(compile_helper.spare_cpus() < 1, reason="on one CPU the CLI starts no helper")
def test_the_helpers_compile_the_kernels_and_the_bits_do_not_change(tmp_path):
    with_helper, compiled = _embed(tmp_path / "with", "real")
    assert compiled, "the cache was not cold"
    # what the helpers compiled, the CLI loaded from the cache (its stdout is JSON and nothing else)
    shares = ("layer_norm_part", "gemm_part.", "gemm_tile.", "_epilogue", "attention_part.", "softmax_rows",
              "real_key_index")
    assert not [n for n in compiled if n.startswith(shares)], compiled
    # helpers that fail (and write junk) change nothing: the CLI compiles their shares itself
    alone, compiled = _embed(tmp_path / "failing", _FAILING)
    assert {"layer_norm_part", "attention_part", "gemm_part"} <= {n.split(".")[0] for n in compiled}, compiled
    assert_equal_bits(with_helper, alone)


def test_a_failing_command_ends_its_helper(tmp_path):
    np.savez(tmp_path / "bad.npz", input_ids=np.array([[2, 99999]]))   # the model loads (compiles), then fails
    from albert_ref.weights import DEMO_MODEL
    _, err, result = _finish(_start(tmp_path, _STUCK, "run", str(DEMO_MODEL), "--inputs", "bad.npz",
                                    "--output", "out.npz"))
    assert result["code"] == 2 and NOTICE in err and "outside" in err, err
    assert result["left"] is None, "the helper outlived the failed command"
    assert not (tmp_path / "out.npz").exists()


def test_an_interrupted_command_ends_its_helper(tmp_path):
    proc = _start(tmp_path, _STUCK, "embed", "hello world")
    seen = ""
    while NOTICE not in seen:        # the helper has been started: interrupt the CLI (not the helper)
        line = proc.stderr.readline()
        assert line, f"the CLI ended before compiling: {seen}"
        seen += line
    proc.send_signal(signal.SIGINT)
    out, err, result = _finish(proc)
    assert result["code"] == 130 and "interrupted" in err, seen + err
    assert result["left"] is None, "the helper outlived the interrupted command"
    assert out == ""
