import os
import sys
from pathlib import Path

# Test helpers (model_util, spm_util, peers) are plain modules beside the tests.
sys.path.insert(0, str(Path(__file__).parent))

if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":  # the CUDA kernels' simulator runs need exact shared arrays
    from albert_ref.kernels import cuda_fmath

    cuda_fmath.lock_simulated_shared_arrays()
