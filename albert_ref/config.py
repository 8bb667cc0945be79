"""ALBERT configuration: one canonical form, read from original or Hugging Face JSON.

The activation is stored by an unambiguous name because the two sources disagree on
what "gelu" means: the original ALBERT code's "gelu" is the tanh approximation, while
Hugging Face's "gelu" is the exact erf form (its tanh form is "gelu_new").
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from .errors import ConfigError

# Every activation a model may use, by its canonical name: the one registry. Each backend
# maps these names to its own implementation (kernels/gemm.py ACT_CODES, numpy_backend,
# cuda_gemm); tests/test_conformance.py holds every table to this list.
ACTIVATIONS = ("linear", "gelu_tanh", "gelu_erf", "relu", "tanh")

_ORIGINAL_ACTIVATIONS = {"gelu": "gelu_tanh", "relu": "relu", "tanh": "tanh", "linear": "linear"}
_HF_ACTIVATIONS = {
    "gelu": "gelu_erf",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "relu": "relu",
    "tanh": "tanh",
    "linear": "linear",
}
# TF-Hub google/albert_xlarge/2's albert_config.json, as its module card gives it: the model
# this project targets (shared/spec; tests and benchmarks build its shape from here).
ALBERT_XLARGE_2 = {
    "attention_probs_dropout_prob": 0, "hidden_act": "gelu", "hidden_dropout_prob": 0, "embedding_size": 128,
    "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 8192, "max_position_embeddings": 512,
    "num_attention_heads": 32, "num_hidden_layers": 24, "num_hidden_groups": 1, "net_structure_type": 0,
    "gap_size": 0, "num_memory_blocks": 0, "inner_group_num": 1, "down_scale_factor": 1, "type_vocab_size": 2,
    "vocab_size": 30000,
}

# Plausible ranges of the integer fields: far beyond any released ALBERT (xxlarge: hidden
# 4096, intermediate 16384, 64 heads, 12 layers, vocab 30000), yet small enough that a
# damaged or hostile config (num_hidden_layers = 10**9) is refused at once instead of
# driving loops or allocations sized by it.
LIMITS = {
    "vocab_size": 1 << 22,
    "embedding_size": 1 << 16,
    "hidden_size": 1 << 16,
    "num_hidden_layers": 1024,
    "num_attention_heads": 1024,
    "intermediate_size": 1 << 18,
    "num_hidden_groups": 1024,
    "inner_group_num": 64,
    "max_position_embeddings": 1 << 17,
    "type_vocab_size": 1024,
}

# Fields of the original albert_config.json that select architectures this engine does
# not implement; anything but the default is refused rather than silently ignored.
_UNSUPPORTED_DEFAULTS = {"net_structure_type": 0, "gap_size": 0, "num_memory_blocks": 0, "down_scale_factor": 1}


@dataclasses.dataclass(frozen=True)
class AlbertConfig:
    vocab_size: int
    embedding_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    num_hidden_groups: int = 1
    inner_group_num: int = 1
    hidden_act: str = "gelu_tanh"
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    # embedding_hidden_mapping_in exists: always in Hugging Face models, only when
    # embedding_size != hidden_size in the original code.
    project_embeddings: bool | None = None

    def __post_init__(self):
        if self.project_embeddings is None:
            object.__setattr__(self, "project_embeddings", self.embedding_size != self.hidden_size)
        self.validate()

    # -- derived ---------------------------------------------------------------------
    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def group_of_layer(self, layer: int) -> int:
        """The group a layer uses, computed as the original does: int(i / L * G)."""
        return int(layer / self.num_hidden_layers * self.num_hidden_groups)

    @property
    def used_groups(self) -> list[int]:
        return sorted({self.group_of_layer(i) for i in range(self.num_hidden_layers)})

    # -- validation ------------------------------------------------------------------
    def validate(self) -> None:
        for name, limit in LIMITS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"config field {name!r} must be a positive integer, got {_short(value)}")
            if value > limit:
                raise ConfigError(f"config field {name!r} is {_short(value)}, beyond the plausible range 1..{limit}")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(f"hidden_size {self.hidden_size} is not a multiple of "
                              f"num_attention_heads {self.num_attention_heads}")
        if self.num_hidden_groups > self.num_hidden_layers:
            raise ConfigError(f"num_hidden_groups {self.num_hidden_groups} exceeds "
                              f"num_hidden_layers {self.num_hidden_layers}")
        if self.hidden_act not in ACTIVATIONS:
            raise ConfigError(f"hidden_act {self.hidden_act!r} is not one of {', '.join(ACTIVATIONS)}")
        if not _is_number(self.layer_norm_eps) or not 0 < self.layer_norm_eps < 1:
            raise ConfigError(f"config field 'layer_norm_eps' must be a finite number in (0, 1), "
                              f"got {_short(self.layer_norm_eps)}")
        if not _is_number(self.initializer_range) or not 0 <= self.initializer_range <= 10:
            raise ConfigError(f"config field 'initializer_range' must be a finite number in [0, 10], "
                              f"got {_short(self.initializer_range)}")
        if not isinstance(self.project_embeddings, bool):
            raise ConfigError(f"config field 'project_embeddings' must be true or false, "
                              f"got {_short(self.project_embeddings)}")
        if not self.project_embeddings and self.embedding_size != self.hidden_size:
            raise ConfigError("project_embeddings is false but embedding_size != hidden_size")

    # -- serialisation ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "AlbertConfig":
        """Read the canonical form written by to_dict (as stored in .h5 files)."""
        if not isinstance(data, dict):
            raise ConfigError(f"config must be a JSON object, got {type(data).__name__}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise ConfigError(f"unknown config field(s): {', '.join(unknown)}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise ConfigError(f"incomplete config: {exc}") from None

    @classmethod
    def from_original(cls, data: dict[str, Any]) -> "AlbertConfig":
        """Read google-research/albert's albert_config.json (as in the TF-Hub module card)."""
        data = _as_dict(data)
        for name, default in _UNSUPPORTED_DEFAULTS.items():
            if data.get(name, default) != default:
                raise ConfigError(f"{name}={data[name]!r} is not supported (only {default} is): "
                                  f"this engine implements the standard ALBERT architecture")
        act = data.get("hidden_act", "gelu")
        if not isinstance(act, str) or act not in _ORIGINAL_ACTIVATIONS:
            raise ConfigError(f"hidden_act {act!r} is not an activation of the original ALBERT code")
        return cls(**_shared_fields(data), hidden_act=_ORIGINAL_ACTIVATIONS[act])

    @classmethod
    def from_huggingface(cls, data: dict[str, Any]) -> "AlbertConfig":
        """Read a Hugging Face AlbertConfig config.json."""
        data = _as_dict(data)
        model_type = data.get("model_type", "albert")
        if model_type != "albert":
            raise ConfigError(f"model_type {model_type!r} is not an ALBERT model")
        act = data.get("hidden_act", "gelu_new")
        if not isinstance(act, str) or act not in _HF_ACTIVATIONS:
            raise ConfigError(f"hidden_act {act!r} is not supported (known: {', '.join(_HF_ACTIVATIONS)})")
        pos = data.get("position_embedding_type", "absolute")
        if pos != "absolute":
            raise ConfigError(f"position_embedding_type {pos!r} is not supported (only 'absolute')")
        return cls(**_shared_fields(data), hidden_act=_HF_ACTIVATIONS[act],
                   layer_norm_eps=data.get("layer_norm_eps", 1e-12), project_embeddings=True)

    @classmethod
    def from_json_file(cls, path: str | Path, flavour: str) -> "AlbertConfig":
        """Read `path` as an "original" or "huggingface" config file."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad UTF-8 or JSON, a 5,000-digit int
            raise ConfigError(f"cannot read config {path}: {exc}") from None
        reader = {"original": cls.from_original, "huggingface": cls.from_huggingface}[flavour]
        try:
            return reader(data)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _short(value) -> str:
    """A field's value for a message: repr, cut short (a config value may be anything)."""
    text = repr(value) if not isinstance(value, int) or abs(value) < 10**30 else f"an integer of {len(str(abs(value)))} digits"
    return text if len(text) <= 60 else text[:57] + "..."


def _as_dict(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ConfigError(f"config must be a JSON object, got {type(data).__name__}")
    return data


_REQUIRED = ("vocab_size", "embedding_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
             "intermediate_size")
# The optional fields both flavours spell alike, defaulting as AlbertConfig does.
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(AlbertConfig) if f.name in (
    "num_hidden_groups", "inner_group_num", "max_position_embeddings", "type_vocab_size", "initializer_range")}


def _shared_fields(data: dict[str, Any]) -> dict[str, Any]:
    """The fields both JSON flavours spell the same way."""
    missing = [n for n in _REQUIRED if n not in data]
    if missing:
        raise ConfigError(f"config is missing required field(s): {', '.join(missing)}")
    return {**{n: data[n] for n in _REQUIRED}, **{n: data.get(n, d) for n, d in _DEFAULTS.items()}}
