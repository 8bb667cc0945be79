"""Exceptions raised by albert-ref. Every error names the file, tensor or field at fault."""


class AlbertRefError(Exception):
    """Base class of every error albert-ref raises on bad input."""


class ConfigError(AlbertRefError, ValueError):
    """An ALBERT configuration is malformed or asks for something unsupported."""


class ModelFileError(AlbertRefError):
    """An albert-ref .h5 model file is malformed, corrupt or inconsistent."""


class ConversionError(AlbertRefError):
    """A source checkpoint (TF bundle, TF-Hub module, Hugging Face) cannot be converted."""


class InputError(AlbertRefError, ValueError):
    """Model inputs (ids, mask, segment ids) are out of range or malformed."""


class TokenizerError(AlbertRefError):
    """Text cannot be tokenized (no tokenizer in the model file, undecodable bytes, ...)."""


class OutputError(AlbertRefError):
    """An output cannot be written where asked (an existing directory, a missing parent)."""


class CheckFailed(AlbertRefError):
    """A check ran and found a difference (a golden digest, a checksum): the CLI exits 1,
    where every other error exits 2."""


class IsaError(AlbertRefError, ValueError):
    """A requested kernel variant (isa=, ALBERT_REF_ISA) is unknown or wider than the CPU's vectors."""
