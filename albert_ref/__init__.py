"""albert-ref: a framework-free, bit-reproducible ALBERT inference engine."""
from albert_ref.errors import (AlbertRefError, ConfigError, ConversionError, InputError, ModelFileError,
                               TokenizerError)
from albert_ref.lazy import lazy_exports

__version__ = "0.1.0"

__all__ = ["AlbertConfig", "AlbertRefError", "ConfigError", "ConversionError", "Encoder", "InputError", "Model",
           "ModelFileError", "TokenizerError", "load", "__version__"]

# Imported on first use: a process that imports a submodule alone (a compile helper, a
# Dask worker) would otherwise pay for h5py, the model and the rest; the CLI's parser
# imports most of them anyway (through its embed and testing commands).
__getattr__, __dir__ = lazy_exports(globals(), {"AlbertConfig": "albert_ref.config", "Encoder": "albert_ref.encoder",
                                                "Model": "albert_ref.model", "load": "albert_ref.model"})
