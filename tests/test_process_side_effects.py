"""albert_ref is imported into other projects' processes: importing it, loading a model and
running it change nothing process-wide. The two process-wide tweaks it has are opt-ins: the
glibc heap setting (taken by the CLI) and the CUDA simulator's shared-array lock (taken by
the test suite and gpu_check.py). Each case runs in a fresh interpreter, without this suite's
conftest."""
import os
import subprocess
import sys
import textwrap


def run_fresh(code, **env):
    base = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}  # it would disable the opt-in
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env={**base, **env},
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return r.stdout


def test_importing_albert_ref_loads_nothing_heavy():
    """Every process that imports albert_ref (the CLI, its compile helpers, a Dask worker)
    would pay for these; each loads when first used."""
    run_fresh("""
        import sys
        import albert_ref
        heavy = {"h5py", "sentencepiece", "tqdm", "numba", "albert_ref.model", "albert_ref.encoder"} & set(sys.modules)
        assert not heavy, heavy
        from albert_ref import embed_job, tokenizer   # what every CLI command's parser imports
        assert not {"sentencepiece", "tqdm", "numba"} & set(sys.modules)
        assert albert_ref.load.__module__ == "albert_ref.model" and "h5py" in sys.modules
    """)


def test_the_heap_setting_is_the_cli_s_opt_in():
    run_fresh("""
        import numpy as np
        import albert_ref
        from albert_ref import memory
        from albert_ref.weights import DEMO_MODEL
        albert_ref.load(DEMO_MODEL)(np.array([[2, 10, 3]]))
        assert not memory._HEAP_LIMITED, "a library call changed malloc for the process"
        from albert_ref.cli import main
        assert main(["verify"]) == 0
        assert memory._HEAP_LIMITED
    """)


def test_the_simulator_patch_is_an_opt_in():
    run_fresh("""
        import warnings
        from numba.cuda.simulator import kernelapi
        original = kernelapi.FakeCUDAShared.array
        from albert_ref.cuda_backend import CudaOps
        from albert_ref.kernels import cuda_fmath
        assert kernelapi.FakeCUDAShared.array is original, "importing albert_ref patched numba-cuda"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            CudaOps()
        assert any("racily" in str(w.message) for w in caught), [str(w.message) for w in caught]
        cuda_fmath.lock_simulated_shared_arrays()
        assert kernelapi.FakeCUDAShared.array is not original
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            CudaOps()
    """, NUMBA_ENABLE_CUDASIM="1")


def test_the_simulator_patch_calls_the_simulator_as_it_is():
    """The lock wraps whichever FakeCUDAShared.array the process has: numba-cuda's takes an
    alignment, the simulator bundled with older numba does not. Dynamic shared memory
    (shape 0) goes to the original without one; a fixed-size array is made once per line,
    under the lock."""
    run_fresh("""
        import numpy as np
        from numba.cuda.simulator import kernelapi
        seen = []
        def without_alignment(self, shape, dtype):
            seen.append(shape)
            return np.zeros(3, dtype)
        kernelapi.FakeCUDAShared.array = without_alignment
        from albert_ref.kernels import cuda_fmath
        cuda_fmath.lock_simulated_shared_arrays()
        shared = kernelapi.FakeCUDAShared(12)
        assert shared.array(0, np.float32).shape == (3,) and seen == [0]
        same_line = [shared.array(5, np.float32) for _ in range(2)]
        assert same_line[0] is same_line[1] and same_line[0].shape == (5,) and seen == [0]
        assert shared.array(5, np.float32) is not same_line[0]
    """, NUMBA_ENABLE_CUDASIM="1")
