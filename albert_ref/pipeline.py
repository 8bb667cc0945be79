"""A sentence-embedding pipeline stored with a model: pooling, Dense layers, normalization.

sentence-transformers checkpoints turn the encoder's token vectors into one sentence vector
by pooling (one or several modes, concatenated), optional Dense layers with an activation,
and an optional L2 normalization, at a fixed maximum sequence length. `Pipeline` is that
description as the model file stores it (root attribute `pipeline`, weights/FORMAT.md);
the Dense weights are ordinary tensors named by `dense_names`.
"""
from __future__ import annotations

import dataclasses
import json

from albert_ref.errors import ModelFileError
from albert_ref.pooling import TOKEN_POOLERS

# sentence-transformers' names, in the order its legacy boolean flags list them.
POOLING_MODES = tuple(TOKEN_POOLERS)  # the modes pooling.py implements
# A Dense layer's activation_function as sentence-transformers saves it (a torch module's
# class path) -> the contract's activation (config.ACTIVATIONS): the one list of the
# activations a pipeline's Dense layers may use (weights/FORMAT.md).
ST_DENSE_ACTIVATIONS = {"torch.nn.modules.activation.Tanh": "tanh", "torch.nn.modules.linear.Identity": "linear",
                        "torch.nn.modules.activation.ReLU": "relu", "torch.nn.modules.activation.GELU": "gelu_erf"}
DENSE_ACTIVATIONS = tuple(ST_DENSE_ACTIVATIONS.values())
DENSE_PREFIX = "pipeline/dense_"


def dense_names(i: int) -> tuple[str, str]:
    """Tensor names of Dense layer i: its [in, out] kernel and its bias."""
    return f"{DENSE_PREFIX}{i}/kernel", f"{DENSE_PREFIX}{i}/bias"


@dataclasses.dataclass(frozen=True)
class Dense:
    in_features: int
    out_features: int
    bias: bool
    activation: str  # one of DENSE_ACTIVATIONS


@dataclasses.dataclass(frozen=True)
class Pipeline:
    pooling: tuple[str, ...]  # modes, concatenated in this order
    max_seq_length: int | None  # None: the model's max_position_embeddings
    dense: tuple[Dense, ...] = ()
    normalize: bool = False

    def __post_init__(self):
        _check(isinstance(self.pooling, tuple) and self.pooling, "pooling must be a non-empty list of modes")
        for mode in self.pooling:
            _check(mode in POOLING_MODES, f"pooling mode {mode!r} is not one of {', '.join(POOLING_MODES)}")
        _check(len(set(self.pooling)) == len(self.pooling), f"pooling lists a mode twice: {list(self.pooling)}")
        _check(self.max_seq_length is None or _positive(self.max_seq_length),
               f"max_seq_length must be a positive integer or null, not {self.max_seq_length!r}")
        _check(isinstance(self.normalize, bool), f"normalize must be true or false, not {self.normalize!r}")
        for i, d in enumerate(self.dense):
            _check(_positive(d.in_features) and _positive(d.out_features),
                   f"dense[{i}]: in_features and out_features must be positive integers")
            _check(isinstance(d.bias, bool), f"dense[{i}]: bias must be true or false")
            _check(d.activation in DENSE_ACTIVATIONS,
                   f"dense[{i}]: activation {d.activation!r} is not one of {', '.join(DENSE_ACTIVATIONS)}")

    def check_against(self, hidden_size: int, max_position_embeddings: int) -> None:
        """The pipeline fits the encoder: layer widths chain, the length fits the positions."""
        width = len(self.pooling) * hidden_size
        for i, d in enumerate(self.dense):
            _check(d.in_features == width, f"dense[{i}] takes {d.in_features} features, but its input has {width}")
            width = d.out_features
        _check(self.max_seq_length is None or self.max_seq_length <= max_position_embeddings,
               f"max_seq_length {self.max_seq_length} exceeds max_position_embeddings {max_position_embeddings}")

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        shapes = {}
        for i, d in enumerate(self.dense):
            kernel, bias = dense_names(i)
            shapes[kernel] = (d.in_features, d.out_features)
            if d.bias:
                shapes[bias] = (d.out_features,)
        return shapes

    def to_dict(self) -> dict:
        return {"pooling": list(self.pooling), "max_seq_length": self.max_seq_length,
                "dense": [dataclasses.asdict(d) for d in self.dense], "normalize": self.normalize}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data) -> "Pipeline":
        """Validate the stored JSON object; ModelFileError names the field at fault."""
        _check(isinstance(data, dict), "pipeline must be a JSON object")
        fields = {"pooling", "max_seq_length", "dense", "normalize"}
        _check(set(data) == fields, f"pipeline must have exactly the fields {sorted(fields)}, has {sorted(data)}")
        _check(isinstance(data["pooling"], list), "pooling must be a list of modes")
        _check(isinstance(data["dense"], list), "dense must be a list of layers")
        layers = []
        for i, layer in enumerate(data["dense"]):
            keys = {f.name for f in dataclasses.fields(Dense)}
            _check(isinstance(layer, dict) and set(layer) == keys,
                   f"dense[{i}] must be an object with exactly the fields {sorted(keys)}")
            layers.append(Dense(**layer))
        return cls(tuple(data["pooling"]), data["max_seq_length"], tuple(layers), data["normalize"])

    def describe(self) -> str:
        """One line for `albert-ref info` and `convert`."""
        parts = [f"pooling {'+'.join(self.pooling)}"]
        parts += [f"dense {d.in_features}->{d.out_features} {d.activation}{'' if d.bias else ' (no bias)'}"
                  for d in self.dense]
        if self.normalize:
            parts.append("normalize")
        parts.append(f"max_seq_length {self.max_seq_length or 'the maximum'}")
        return ", ".join(parts)


def _positive(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _check(ok, message: str) -> None:
    if not ok:
        raise ModelFileError(f"pipeline: {message}")
