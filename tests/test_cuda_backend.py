"""The "cuda" backend's errors when it cannot run (these need neither numba-cuda nor a GPU)."""
from __future__ import annotations

import importlib.util

import pytest

from albert_ref import AlbertRefError
from albert_ref import cuda_backend


def test_missing_numba_cuda_is_a_clear_albert_ref_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "numba_cuda" else real(name, *a))
    with pytest.raises(cuda_backend.CudaUnavailableError, match=r"numba-cuda.*pip install 'albert-ref\[cuda\]'") as e:
        cuda_backend.CudaOps()
    assert isinstance(e.value, AlbertRefError)


@pytest.mark.skipif(importlib.util.find_spec("numba_cuda") is None, reason="numba-cuda is not installed")
def test_no_gpu_is_a_clear_albert_ref_error():
    from numba import cuda
    if cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(cuda_backend.CudaUnavailableError, match="no usable NVIDIA GPU/driver") as e:
        cuda_backend.CudaOps()
    assert isinstance(e.value, AlbertRefError)


def test_load_backend_cuda_error(tmp_path):
    """albert_ref.load(path, backend="cuda") without a GPU: the same error, not a traceback
    from deep inside numba."""
    if importlib.util.find_spec("numba_cuda") is not None:
        from numba import cuda
        if cuda.is_available():
            pytest.skip("a GPU is present")
    import albert_ref
    from albert_ref.weights.model_file import write_model
    from albert_ref.weights.random_model import random_model_file
    from model_util import tiny_config
    path = tmp_path / "tiny.h5"
    write_model(path, random_model_file(tiny_config(), seed=0))
    with pytest.raises(cuda_backend.CudaUnavailableError):
        albert_ref.load(path, backend="cuda")
