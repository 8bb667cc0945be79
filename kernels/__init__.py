"""Compute kernels: plain reference kernels that define the bits (NUMERICS.md), fast Numba
kernels beside them, and the portable math (fmath) they share.

Numba's on-disk cache (`cache=True`) checks only the source file of the function it
compiled, not the modules inlined into it: after an edit to fmath.py, gemm.py's cached
machine code would still carry the old exp. So, on import, a digest of the modules that
hold `@njit` code (every kernels/*.py but cuda_*.py, which numba.cuda compiles without
the disk cache) is compared with the one the cache was built from, and a stale cache is
dropped. The cache directory is the one Numba itself picks for kernels/ (NUMBA_CACHE_DIR
when set, else kernels/__pycache__, else the user-wide cache), and the digest is stamped
beside it, so each cache directory carries its own stamp.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

CONTRACT_VERSION = 1  # NUMERICS.md's version: raise it (and regenerate goldens) with any change to its bits


def _numba_cache_dir() -> Path | None:
    """The directory Numba caches kernels/'s functions in, found with Numba's own locator
    choice (numba.core.caching.CacheImpl: NUMBA_CACHE_LOCATOR_CLASSES, then
    UserProvidedCacheLocator for NUMBA_CACHE_DIR, InTreeCacheLocator, ...). Every locator
    derives the path from the source file's directory only, so any function in this
    package stands for all of them. None where Numba has no usable cache location."""
    try:
        from numba.core.caching import CompileResultCacheImpl

        return Path(CompileResultCacheImpl(_numba_cache_dir).locator.get_cache_path())
    except Exception:  # no locator available (e.g. nowhere writable): Numba will not cache
        return None


def _drop_stale_cache() -> None:
    here = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(here.glob("*.py")):
        if not path.name.startswith("cuda_"):
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    stamp = digest.hexdigest()
    cache_dir = _numba_cache_dir()
    if cache_dir is None:
        return
    stamp_file = cache_dir / "kernels-source.sha256"
    try:
        if stamp_file.read_text() == stamp:
            return
    except OSError:
        pass
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        for path in cache_dir.iterdir():
            if path.suffix in (".nbi", ".nbc"):
                path.unlink(missing_ok=True)
        tmp = stamp_file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(stamp)
        tmp.replace(stamp_file)
    except OSError:  # read-only cache directory: Numba then cannot write there either
        pass


_drop_stale_cache()
