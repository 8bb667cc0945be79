"""albert-ref: a framework-free, bit-reproducible ALBERT inference engine."""
from albert_ref.errors import (AlbertRefError, ConfigError, ConversionError, InputError, ModelFileError,
                               TokenizerError)

__version__ = "0.1.0"

__all__ = ["AlbertConfig", "AlbertRefError", "ConfigError", "ConversionError", "Encoder", "InputError", "Model",
           "ModelFileError", "TokenizerError", "load", "__version__"]

# Imported on first use (PEP 562): every process that imports a submodule (the CLI, its
# compile helpers, a Dask worker) would otherwise pay for h5py, sentencepiece and the rest.
_LAZY = {"AlbertConfig": "albert_ref.config", "Encoder": "albert_ref.encoder", "Model": "albert_ref.model",
         "load": "albert_ref.model"}


def __getattr__(name):
    if name in _LAZY:
        import importlib
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'albert_ref' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
