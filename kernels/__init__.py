"""Compute kernels: plain reference kernels that define the bits (NUMERICS.md), fast Numba
kernels beside them, and the portable math (fmath) they share.

Numba's on-disk cache (`cache=True`) checks only the source file of the function it
compiled, not the modules inlined into it: after an edit to fmath.py, gemm.py's cached
machine code would still carry the old exp. So, on import, a digest of every kernels/*.py
is compared with the one the cache was built from, and a stale cache is dropped.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

CONTRACT_VERSION = 1  # NUMERICS.md's version: raise it (and regenerate goldens) with any change to its bits


def _drop_stale_cache() -> None:
    here = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(here.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    stamp = digest.hexdigest()
    cache_dir = here / "__pycache__"
    stamp_file = cache_dir / "kernels-source.sha256"
    try:
        if stamp_file.read_text() == stamp:
            return
    except OSError:
        pass
    try:
        cache_dir.mkdir(exist_ok=True)
        for path in cache_dir.iterdir():
            if path.suffix in (".nbi", ".nbc"):
                path.unlink(missing_ok=True)
        tmp = stamp_file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(stamp)
        tmp.replace(stamp_file)
    except OSError:  # read-only install: Numba then caches elsewhere or not at all
        pass


_drop_stale_cache()
