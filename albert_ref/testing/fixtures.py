"""Fixtures for ports in other languages: inputs, outputs and every intermediate
activation as .npy files, with a JSON manifest of shapes and digests.

A C++ or Rust port checks itself op by op against these. They are recorded while
forward.py's own composition runs over a wrapper of the backend's ops, so they are the
computation itself rather than a second copy of it; each activation is named after the
TF variable of the op that made it, under the layer that ran it
(`layer_03/group_0/inner_group_0/ffn_1/intermediate/dense`).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from albert_ref import forward as fwd
from albert_ref.atomic import atomic_directory
from albert_ref.errors import AlbertRefError
from albert_ref.testing.golden import CANONICAL, CONTRACT_VERSION, digest
from albert_ref.testing.inputs import INPUT_NAMES, example_inputs
from albert_ref.testing.oracle import Oracle, as_oracle

FORMAT = "albert-ref-fixtures"
FORMAT_VERSION = 1
_TRANSFORMER = "bert/encoder/transformer/"
# The first op of a layer: the query projection of its group's first block.
_LAYER_START = re.compile(re.escape(_TRANSFORMER) + r"group_\d+/inner_group_0/attention_1/self/query/kernel")


class FixturesError(AlbertRefError):
    """The output directory cannot be written."""


class _Recorder:
    """The backend's ops, keeping each op's output under the name of its parameters. It has
    no `ffn_rows`: forward.feed_forward then runs, and records, each dense layer whole."""

    def __init__(self, ops, params, num_layers: int):
        self._ops = ops
        self._param_names = {id(value): name for name, value in params.items()}
        self._layer, self._width = -1, len(str(num_layers - 1))
        self._name_of_output: dict[int, str] = {}
        self.records: list[dict] = []

    def _keep(self, array, op, name, param=None, **extra):
        self.records.append({"name": name, "op": op, "param": param, **extra, "array": array})
        self._name_of_output[id(array)] = name
        return array

    def _name(self, param: str) -> str:
        if _LAYER_START.fullmatch(param):
            self._layer += 1
        scope = param.rsplit("/", 1)[0]
        if scope.startswith(_TRANSFORMER):
            return f"layer_{self._layer:0{self._width}d}/{scope[len(_TRANSFORMER):]}"
        return scope.removeprefix("bert/")

    def workspace(self):
        return self._ops.workspace()

    def embed(self, input_ids, segment_ids, word, token_type, position):
        return self._keep(self._ops.embed(input_ids, segment_ids, word, token_type, position),
                          "embed", "embeddings/sum", "bert/embeddings")

    def layer_norm(self, x, residual, gamma, beta, eps):
        param = self._param_names[id(gamma)]
        return self._keep(self._ops.layer_norm(x, residual, gamma, beta, eps), "layer_norm", self._name(param), param)

    def dense(self, x, kernel, bias, activation=None):
        param = self._param_names[id(kernel)]
        return self._keep(self._ops.dense(x, kernel, bias, activation), "dense", self._name(param), param,
                          activation=activation)

    def attention(self, q, k, v, input_mask, num_heads):
        query = self._name_of_output[id(q)]  # .../attention_1/self/query
        return self._keep(self._ops.attention(q, k, v, input_mask, num_heads), "attention",
                          query.rsplit("/", 1)[0] + "/context")


def record_activations(oracle: Oracle, input_ids, input_mask, segment_ids, precision="float32"):
    """(records, outputs): every op's output in computation order, and the model outputs."""
    model = oracle.model(precision)
    recorder = _Recorder(model.ops, model.params, model.config.num_hidden_layers)
    outputs = fwd.forward(recorder, model.params, model.config, input_ids, input_mask, segment_ids,
                          heads=model.heads)
    return recorder.records, outputs


def _check_destination(path: Path) -> None:
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise FixturesError(f"{path} exists and is not an empty directory")
    if not path.parent.is_dir():
        raise FixturesError(f"{path.parent} is not a directory")


def _save(root: Path, relative: str, array: np.ndarray, mask) -> dict:
    path = root / f"{relative}.npy"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        np.save(fh, array, allow_pickle=False)
        fh.flush()
        os.fsync(fh.fileno())
    return {"file": f"{relative}.npy", "shape": list(array.shape), "dtype": str(array.dtype),
            "sha256": digest(array, mask)}


def write_fixtures(model, outdir, input_ids=None, input_mask=None, segment_ids=None, *,
                   precision: str = "float32") -> dict:
    """Write OUTDIR/{inputs,activations,outputs}/*.npy and OUTDIR/manifest.json (returned).

    model: a path, ModelFile, Model or Oracle. Without input_ids, a small deterministic
    batch (example_inputs). precision "float32" records the bit contract; "float64" the
    NumPy reference, for ports that compare with a tolerance.
    """
    outdir = Path(outdir)
    _check_destination(outdir)
    oracle = as_oracle(model)
    if input_ids is None:
        input_ids, input_mask, segment_ids = example_inputs(oracle.config)
    inputs = dict(zip(INPUT_NAMES, oracle.model(precision).check_inputs(input_ids, input_mask, segment_ids)))
    records, outputs = record_activations(oracle, *inputs.values(), precision=precision)
    mask = inputs["input_mask"]
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "contract_version": CONTRACT_VERSION,
                "precision": precision, "model": {"digest": oracle.digest, "config": oracle.config.to_dict()},
                "canonical": CANONICAL}
    with atomic_directory(outdir) as root:
        manifest["inputs"] = {name: _save(root, f"inputs/{name}", a, None) for name, a in inputs.items()}
        manifest["activations"] = [{**{k: v for k, v in r.items() if k != "array" and v is not None},
                                    **_save(root, f"activations/{r['name']}", r["array"], mask)} for r in records]
        manifest["outputs"] = {name: _save(root, f"outputs/{name}", a, mask) for name, a in outputs.items()}
        with open(root / "manifest.json", "w", encoding="utf-8") as fh:
            json.dump(manifest, fh, indent=1)
            fh.write("\n")
    return manifest
