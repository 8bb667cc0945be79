"""Peer libraries (torch, transformers) for the tests that check albert-ref against them,
and the optional extras' libraries for the tests of those capabilities.

Without them those tests skip, except where ALBERT_REF_REQUIRE_PEERS=1 (CI, which
installs the `peers` extra): there a missing peer fails the run, so the comparisons can
never be skipped unnoticed. Import it as `from peers import require_peers` (tests/conftest.py
puts tests/ on sys.path).
"""
from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest

PEERS = ("torch", "transformers")


def require_peers(*names: str, extra: str = "peers") -> tuple[ModuleType, ...]:
    """Import the named peers (default: torch and transformers), or skip/fail the module;
    `extra` names the albert-ref extra that installs them."""
    modules, missing = [], []
    for name in names or PEERS:
        try:
            modules.append(importlib.import_module(name))
        except ImportError as exc:
            missing.append(f"{name} ({exc})")
    if missing:
        message = f"test libraries missing: {', '.join(missing)}; install albert-ref[{extra}]"
        if os.environ.get("ALBERT_REF_REQUIRE_PEERS") == "1":
            pytest.fail(f"ALBERT_REF_REQUIRE_PEERS=1 but {message}", pytrace=False)
        pytest.skip(message, allow_module_level=True)
    return tuple(modules)
