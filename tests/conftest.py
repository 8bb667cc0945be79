import os
import sys
from pathlib import Path

# Test helpers (model_util, spm_util, peers) are plain modules beside the tests.
sys.path.insert(0, str(Path(__file__).parent))

if os.environ.get("NUMBA_ENABLE_CUDASIM"):  # numba-cuda is told to simulate: exact shared arrays needed
    from albert_ref.kernels import cuda_fmath

    if cuda_fmath.SIM:
        cuda_fmath.lock_simulated_shared_arrays()

# `pytest tests/test_fuzz.py --hypothesis-profile=fuzz`: the long fuzzing run (tests/test_fuzz.py).
import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

settings.register_profile("fuzz", max_examples=int(os.environ.get("HYPOTHESIS_FUZZ_EXAMPLES", 1000)), deadline=None)


@pytest.fixture(scope="session")
def encoder():
    """An Encoder over the bundled demo model (shared: loading it once is enough)."""
    import albert_ref
    from albert_ref.weights import DEMO_MODEL
    return albert_ref.Encoder(DEMO_MODEL)
