"""albert-ref: a framework-free, bit-reproducible ALBERT inference engine."""
from albert_ref.config import AlbertConfig
from albert_ref.errors import (AlbertRefError, ConfigError, ConversionError, InputError, ModelFileError,
                               TokenizerError)
from albert_ref.model import Model, load
from albert_ref.encoder import Encoder

__version__ = "0.1.0"

__all__ = ["AlbertConfig", "AlbertRefError", "ConfigError", "ConversionError", "Encoder", "InputError", "Model",
           "ModelFileError", "TokenizerError", "load", "__version__"]
