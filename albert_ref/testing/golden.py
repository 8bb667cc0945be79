"""Golden digests: SHA-256 of the float32 contract outputs' canonical bytes.

The contract promises the same bits on every machine, thread count and backend, so a
digest made once and committed must come out again wherever the tests run. A golden
file carries its inputs and the model's digest as well, so checking it needs nothing
but the model file; it also has one digest per layer, so a mismatch says where the
computation first went another way.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path

import numpy as np

from albert_ref.errors import AlbertRefError, CheckFailed
from albert_ref.kernels import CONTRACT_VERSION
from albert_ref.testing.inputs import INPUT_NAMES
from albert_ref.testing.layout import real_positions
from albert_ref.testing.oracle import Oracle, as_oracle
from albert_ref.weights import DEMO_MODEL

FORMAT = "albert-ref-golden"
FORMAT_VERSION = 1
CANONICAL = ("each array's values as little-endian IEEE floats (float32 for goldens) in C order, "
             "with every padded token position (input_mask == 0) of [batch, token, dim] and "
             "[layer, batch, token, dim] arrays set to +0.0; sha256 of those bytes")
# Computation order, so the first mismatching entry is where things first went wrong.
_ORDER = ("hidden_states", "sequence_output", "pooled_output", "mlm_logits", "sop_logits")


class GoldenError(AlbertRefError):
    """A golden file is malformed, or made for another model or contract version."""


class GoldenMismatch(CheckFailed):
    """Digests differ from the golden file's (the CLI prints the report and exits 1)."""


def canonical_bytes(array, input_mask=None) -> bytes:
    """The bytes a digest is taken of (see CANONICAL); ints are hashed as they are."""
    array = np.asarray(array)
    real = real_positions(array.shape, input_mask)
    if real is not None:
        array = np.where(real, array, array.dtype.type(0))
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def digest(array, input_mask=None) -> str:
    return hashlib.sha256(canonical_bytes(array, input_mask)).hexdigest()


def flat_outputs(outputs) -> dict[str, np.ndarray]:
    """Outputs in computation order, a hidden-states stack split into hidden_states[i]."""
    flat = {}
    for name in sorted(outputs, key=lambda n: _ORDER.index(n) if n in _ORDER else len(_ORDER)):
        value = np.asarray(outputs[name])
        if name == "hidden_states":
            flat.update((f"hidden_states[{i}]", layer) for i, layer in enumerate(value))
        else:
            flat[name] = value
    return flat


def make_golden(model, input_ids, input_mask=None, segment_ids=None, *, heads=None) -> dict:
    """The golden document (JSON-ready) of the model's float32 contract outputs, every
    layer's hidden states and the named pretraining heads (default: all the file has)."""
    oracle = as_oracle(model)
    inputs = oracle.model("float32").check_inputs(input_ids, input_mask, segment_ids)
    heads = oracle.heads if heads is None else tuple(heads)
    outputs = flat_outputs(oracle(*inputs, hidden_states=True, heads=heads))
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "contract_version": CONTRACT_VERSION,
        "model": {"digest": oracle.digest},
        "canonical": CANONICAL,
        "inputs": {name: array.tolist() for name, array in zip(INPUT_NAMES, inputs)},
        "outputs": {name: {"shape": list(a.shape), "sha256": digest(a, inputs[1])} for name, a in outputs.items()},
    }


def dumps(golden: dict) -> str:
    """JSON text with each innermost list of integers (an input row, a shape) on one line,
    so that a committed golden file stays short and diffs readably."""
    text = json.dumps(golden, indent=1)
    return re.sub(r"\[\n\s+(-?\d+(?:,\n\s+-?\d+)*)\n\s+\]",
                  lambda m: "[" + re.sub(r",\n\s+", ", ", m.group(1)) + "]", text) + "\n"


def read_golden(golden) -> dict:
    """A golden document from a path or a dict, checked for format and contract version."""
    if not isinstance(golden, dict):
        try:
            golden = json.loads(Path(golden).read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad UTF-8 or JSON
            raise GoldenError(f"cannot read golden file {golden}: {exc}") from None
    if not isinstance(golden, dict) or golden.get("format") != FORMAT:
        raise GoldenError(f"not an {FORMAT} document")
    if golden.get("format_version") != FORMAT_VERSION:
        raise GoldenError(f"golden format version {golden.get('format_version')!r} is not {FORMAT_VERSION}")
    if golden.get("contract_version") != CONTRACT_VERSION:
        raise GoldenError(f"made under contract version {golden.get('contract_version')!r}; this albert-ref "
                          f"implements version {CONTRACT_VERSION}: regenerate it")
    missing = [k for k in ("model", "inputs", "outputs") if not isinstance(golden.get(k), dict)]
    if missing or "input_ids" not in golden["inputs"]:
        raise GoldenError(f"golden document lacks {', '.join(missing) or 'inputs.input_ids'}")
    malformed = [name for name, entry in golden["outputs"].items() if not isinstance(entry, dict)]
    if malformed:
        raise GoldenError(f"golden outputs {', '.join(malformed)} are not objects with a shape and a sha256")
    return golden


@dataclasses.dataclass
class GoldenReport:
    """Which digests matched; `bool(report)` is True when none differ."""
    model_digest: str
    matched: list[str]
    mismatched: dict[str, str]  # name -> what differs
    unchecked: list[str]

    @property
    def ok(self) -> bool:
        return not self.mismatched

    def __bool__(self):
        return self.ok

    def __str__(self):
        total = len(self.matched) + len(self.mismatched)
        lines = [f"golden (contract v{CONTRACT_VERSION}, model {self.model_digest[:16]}): "
                 + (f"OK: {total} digests match" if self.ok else
                    f"FAIL: {len(self.mismatched)} of {total} digests differ, the first in computation order "
                    f"being {next(iter(self.mismatched))}")]
        lines += [f"  {name} {detail}" for name, detail in self.mismatched.items()]
        if self.unchecked:
            lines.append(f"  not checked (not given): {', '.join(self.unchecked)}")
        return "\n".join(lines)


def check_golden(golden, model=None, *, outputs=None, backend: str = "cpu") -> GoldenReport:
    """Check outputs against a golden document (a path or dict).

    Without `outputs`, run `model` (a path, ModelFile, Model or Oracle; default: the
    bundled demo model) on the golden's inputs with the contract backend named, which
    must reproduce every digest. With `outputs` (a dict of float32 arrays, e.g. from
    your own implementation of the contract), check those: only the ones given.
    """
    golden = read_golden(golden)
    try:
        inputs = [None if golden["inputs"].get(n) is None else np.asarray(golden["inputs"][n], dtype=np.int32)
                  for n in INPUT_NAMES]
    except (ValueError, TypeError, OverflowError) as exc:
        raise GoldenError(f"the golden's inputs are not int32 arrays: {exc}") from None
    if outputs is None:
        oracle = model if isinstance(model, Oracle) else Oracle(DEMO_MODEL if model is None else model, backend)
        if oracle.digest != golden["model"].get("digest"):
            raise GoldenError(f"the golden was made for model {golden['model'].get('digest')}, "
                              f"but this model's digest is {oracle.digest}")
        heads = tuple(h for h in ("mlm", "sop") if f"{h}_logits" in golden["outputs"])
        outputs = oracle(*inputs, hidden_states=True, heads=heads)
    elif model is not None:
        raise ValueError("give either the model to run or the outputs to check, not both")
    actual = flat_outputs(outputs)
    unknown = [n for n in actual if n not in golden["outputs"]]
    if unknown:
        raise GoldenError(f"the golden has no digest for {', '.join(unknown)}")
    report = GoldenReport(golden["model"].get("digest", "?"), [], {},
                          [n for n in golden["outputs"] if n not in actual])
    mask = inputs[1]
    for name, array in actual.items():
        if array.dtype != np.float32:
            raise GoldenError(f"{name} is {array.dtype}; golden digests are of float32 outputs")
        want = golden["outputs"][name]
        got = digest(array, mask)
        if got == want.get("sha256") and list(array.shape) == want.get("shape"):
            report.matched.append(name)
        else:
            report.mismatched[name] = (f"{list(array.shape)}: sha256 {got}, golden has {want.get('sha256')} "
                                       f"for shape {want.get('shape')}")
    return report
