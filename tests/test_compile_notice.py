"""Start-up: the CLI says, in one line, when it compiles the kernels (and only then); the
dense kernel compiles once per variant; the kernels' threads (albert_ref.parts) keep the bits."""
import io
import os
import subprocess
import sys
import threading

import numpy as np
from numba import njit

from albert_ref.compile_notice import notice_compilation
from albert_ref.kernel_backend import KernelOps
from albert_ref.testing import assert_equal_bits

NOTICE = "albert-ref: compiling the kernels for "


def _fresh(module):
    """A function never compiled before, as if defined in `module`."""
    def add_one(x):
        return x + 1
    add_one.__module__ = module
    return njit(add_one)


def test_one_line_for_albert_ref_code_only_and_only_inside_the_block():
    out = io.StringIO()
    with notice_compilation(out):
        _fresh("someone_else")(1)
        assert out.getvalue() == ""
        threads = [threading.Thread(target=_fresh("albert_ref.kernels.probe"), args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert out.getvalue().count(NOTICE) == 1 and out.getvalue().endswith("...\n")
    _fresh("albert_ref.kernels.probe")(1.5)  # the block is over: silent again
    assert out.getvalue().count(NOTICE) == 1


def test_the_block_imports_no_numba_and_the_kernels_install_its_listener_on_import():
    """The CLI enters the block before it knows whether the command runs kernels: Numba is
    imported only with albert_ref.kernels (inside albert_ref.load, overlapping the hashing),
    which then installs the listener of every block still open before anything of it
    compiles, however the blocks were entered and left (threads may overlap them)."""
    code = """if True:
        import io, sys
        from albert_ref.compile_notice import notice_compilation
        def fresh(name):
            from numba import njit
            def add_one(x):
                return x + 1
            add_one.__module__ = "albert_ref.kernels." + name
            return njit(add_one)
        outs = {name: io.StringIO() for name in "abc"}
        a, b, c = (notice_compilation(outs[name]) for name in "abc")
        a.__enter__(); b.__enter__(); c.__enter__()
        assert "numba" not in sys.modules, "entering a block imported Numba"
        c.__exit__(None, None, None)   # ended before the kernels load
        a.__exit__(None, None, None)   # ended while b, entered after it, is still open
        import albert_ref.kernels
        fresh("one")(1)
        b.__exit__(None, None, None)
        fresh("two")(1)                 # no block open: silent
        said = {name: out.getvalue() for name, out in outs.items()}
        assert said["b"].startswith("albert-ref: compiling the kernels for ") and said["b"].count("albert-ref") == 1, said
        assert said["a"] == said["c"] == "", said
    """
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]


def test_parsing_a_command_line_imports_no_numba():
    """Numba's import (0.15 s) belongs inside albert_ref.load, where it overlaps the hashing."""
    code = """if True:
        import sys
        from albert_ref.cli import build_parser
        build_parser().parse_args(["run", "m.h5", "--inputs", "i.npz", "--output", "o.npz"])
        assert "numba" not in sys.modules, [m for m in sys.modules if m.startswith("albert_ref")]
    """
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]


# The CLI on the demo model without its compile helpers (so that it compiles every kernel),
# then how many types gemm_tile was compiled for in this process.
_EMBED = ("import sys; from albert_ref.cli import main; from albert_ref.kernels import isa; code = main(['embed', "
          "'hello world']); tile = isa.kernel_set(isa.select().name).gemm_part.py_func.__globals__['gemm_tile']; "
          "print('gemm_tile types:', len(tile.signatures), file=sys.stderr); sys.exit(code)")


def test_cli_notice_on_a_cold_cache_only_and_gemm_tile_compiled_once(tmp_path):
    """A literal 0 among gemm_tile's offsets would be typed Literal[int](0), and each mix
    of literal and int64 offsets would compile it again (kernels/gemm.py, ORIGIN)."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path), ALBERT_REF_COMPILE_HELPERS="0")
    env.pop("ALBERT_REF_ISA", None)
    runs = [subprocess.run([sys.executable, "-c", _EMBED], env=env, capture_output=True, text=True, timeout=600)
            for _ in range(2)]
    for r in runs:
        assert r.returncode == 0, r.stderr
    assert runs[0].stdout == runs[1].stdout
    assert runs[0].stderr.count(NOTICE) == 1 and "gemm_tile types: 1" in runs[0].stderr, runs[0].stderr
    # loaded from the cache: nothing compiled, nothing announced
    assert NOTICE not in runs[1].stderr and "gemm_tile types: 0" in runs[1].stderr, runs[1].stderr


def test_threads_keep_the_bits():
    rng = np.random.default_rng(3)
    one, two = KernelOps(True, threads=1), KernelOps(True, threads=2)
    q, k, v = (rng.standard_normal((3, 9, 128)).astype(np.float32) for _ in range(3))
    mask = np.ones((3, 9), np.int32)
    mask[1, 5:] = 0
    x = rng.standard_normal((27, 128)).astype(np.float32)
    w = one.prepare("k/kernel", rng.standard_normal((128, 70)).astype(np.float32))
    b = rng.standard_normal(70).astype(np.float32)
    assert_equal_bits(two.attention(q, k, v, mask, 2), one.attention(q, k, v, mask, 2))
    assert_equal_bits(two.dense(x, w, b, "gelu_tanh"), one.dense(x, w, b, "gelu_tanh"))
    g, r = rng.standard_normal(128).astype(np.float32), rng.standard_normal(128).astype(np.float32)
    assert_equal_bits(two.layer_norm(x, x[::-1], g, r, 1e-12), one.layer_norm(x, x[::-1], g, r, 1e-12))
