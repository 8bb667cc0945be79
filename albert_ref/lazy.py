"""Names a package exports without importing their modules until first use (PEP 562)."""
from __future__ import annotations

import importlib


def lazy_exports(namespace: dict, exports: dict[str, str]):
    """(__getattr__, __dir__) for a package whose `namespace` (its globals()) should offer
    each name in `exports` from the module it maps to, imported on first access."""

    def __getattr__(name):
        if name in exports:
            value = getattr(importlib.import_module(exports[name]), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {namespace['__name__']!r} has no attribute {name!r}")

    def __dir__():
        return sorted(set(namespace) | set(exports))
    return __getattr__, __dir__
