"""Compute kernels: plain reference kernels that define the bits (NUMERICS.md), fast Numba
kernels beside them, and the portable math (fmath) they share.

Numba's on-disk cache (`cache=True`) checks only the source file of the function it
compiled, not the modules inlined into it: after an edit to fmath.py, gemm.py's cached
machine code would still carry the old exp. So, on import, a digest of the modules that
hold `@njit` code (every kernels/*.py but cuda_*.py, which numba.cuda compiles without
the disk cache) and of Numba's version is compared with the one the cache was built
from, and a stale cache is dropped. The cache directory is the one Numba itself picks for kernels/ (NUMBA_CACHE_DIR
when set, else kernels/__pycache__, else the user-wide cache), and the digest is stamped
beside it, so each cache directory carries its own stamp. Where the cache cannot be
located (Numba's internals moved) or purged, a StaleCacheWarning says so and how to clear
it: the guard never goes quiet.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

CONTRACT_VERSION = 1  # NUMERICS.md's version: raise it (and regenerate goldens) with any change to its bits


class StaleCacheWarning(RuntimeWarning):
    """The kernels' Numba cache could not be checked against their sources or purged, so
    machine code built from older kernel sources might be served: a risk to the bit
    contract. The message says why and how to clear it."""


def _numba_cache_dir() -> Path | None:
    """The directory Numba caches kernels/'s functions in, found with Numba's own locator
    choice (numba.core.caching.CacheImpl: NUMBA_CACHE_LOCATOR_CLASSES, then
    UserProvidedCacheLocator for NUMBA_CACHE_DIR, InTreeCacheLocator, ...). Every locator
    derives the path from the source file's directory only, so any function in this
    package stands for all of them. None where no locator applies: Numba then caches
    nothing, so there is nothing stale to serve."""
    from numba.core.caching import CompileResultCacheImpl

    try:
        impl = CompileResultCacheImpl(_numba_cache_dir)
    except RuntimeError:  # "cannot cache function ...: no locator available": nowhere writable
        return None
    return Path(impl.locator.get_cache_path())


def source_stamp() -> str:
    """SHA-256 over the sources of every module that holds @njit code, and Numba's version:
    a new Numba ignores an older one's index but reuses its data file names, and a process
    reading while another writes could pair a new index entry with an old data file."""
    import numba

    here = Path(__file__).resolve().parent
    digest = hashlib.sha256(numba.__version__.encode() + b"\0")
    for path in sorted(here.glob("*.py")):
        if not path.name.startswith("cuda_"):
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def drop_stale_cache(cache_dir: Path | None) -> None:
    """Delete cached machine code in cache_dir unless it was built from today's sources."""
    if cache_dir is None:
        return
    stamp = source_stamp()
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
    except OSError as exc:
        warnings.warn(f"albert_ref.kernels: cannot purge Numba's cache of the kernels in {cache_dir} ({exc}); "
                      "machine code built from older kernel sources may be used: delete its .nbi/.nbc files, "
                      "or set NUMBA_CACHE_DIR to an empty writable directory", StaleCacheWarning, stacklevel=2)


def _guard() -> None:
    try:
        cache_dir = _numba_cache_dir()
    except Exception as exc:  # Numba's internals moved: the guard cannot find the cache
        warnings.warn(f"albert_ref.kernels: cannot locate Numba's cache of the kernels ({type(exc).__name__}: "
                      f"{exc}), so a cache built from older kernel sources cannot be detected; set "
                      "NUMBA_CACHE_DIR to an empty directory to be safe", StaleCacheWarning, stacklevel=2)
        return
    drop_stale_cache(cache_dir)


_guard()

# The CLI's notice of compilation (albert_ref.compile_notice), if it asked for one: nothing
# here has compiled yet.
from albert_ref.compile_notice import install_requested  # noqa: E402

install_requested()
