"""The stale-cache guard of albert_ref.kernels: it purges Numba cache files built from other
kernel sources, finds the directory Numba really writes to, and warns, never goes quiet,
when it cannot do its job."""
import warnings

import numpy as np
import pytest

from albert_ref import kernels
from albert_ref.kernels import StaleCacheWarning, drop_stale_cache, gemm


def _cache_files(d):
    return sorted(p.name for p in d.iterdir() if p.suffix in (".nbi", ".nbc"))


def test_a_stale_cache_is_purged_and_a_current_one_kept(tmp_path):
    (tmp_path / "gemm.pack_b-1.py311.nbi").write_bytes(b"old")
    (tmp_path / "gemm.pack_b-1.py311.1.nbc").write_bytes(b"old")
    (tmp_path / "kernels-source.sha256").write_text("0" * 64)  # built from other sources
    drop_stale_cache(tmp_path)
    assert _cache_files(tmp_path) == []
    assert (tmp_path / "kernels-source.sha256").read_text() == kernels.source_stamp()
    (tmp_path / "gemm.pack_b-1.py311.nbi").write_bytes(b"new")  # built from today's sources
    drop_stale_cache(tmp_path)
    assert _cache_files(tmp_path) == ["gemm.pack_b-1.py311.nbi"]


def test_a_cache_that_cannot_be_purged_warns(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.warns(StaleCacheWarning, match="cannot purge"):
        drop_stale_cache(blocker / "cache")  # its parent is a file: mkdir fails


def test_a_guard_that_cannot_locate_the_cache_warns(monkeypatch):
    import numba.core.caching

    class Moved:
        def __init__(self, *args):
            raise AttributeError("'CompileResultCacheImpl' has no attribute 'locator'")

    monkeypatch.setattr(numba.core.caching, "CompileResultCacheImpl", Moved)
    with pytest.warns(StaleCacheWarning, match="cannot locate"):
        kernels._guard()


def test_no_cache_location_means_nothing_to_guard(monkeypatch):
    import numba.core.caching

    class Nowhere:
        def __init__(self, *args):
            raise RuntimeError("cannot cache function: no locator available")

    monkeypatch.setattr(numba.core.caching, "CompileResultCacheImpl", Nowhere)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kernels._guard()


def test_the_guard_looks_where_numba_writes():
    ones = np.ones(3, np.float32)
    assert gemm.dot_ref(ones, 1, ones, 1, 3) == 3  # compiled (or loaded) with cache=True
    cache_dir = kernels._numba_cache_dir()
    assert cache_dir is not None and list(cache_dir.glob("gemm.dot_ref-*.nbi")), cache_dir
    assert (cache_dir / "kernels-source.sha256").read_text() == kernels.source_stamp()
