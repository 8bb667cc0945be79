"""Reference outputs: the float32 bit contract or the float64 mathematical reference.

"float32" runs the contract's kernels (NUMERICS.md): the same bits on every machine,
thread count, batch composition and padding, so it can be compared exactly. "float64"
runs the plain NumPy forward in double precision: the yardstick for tolerance
comparisons of implementations that follow other summation orders (PyTorch, TF, ONNX).
"""
from __future__ import annotations

from pathlib import Path

from albert_ref.model import Model
from albert_ref.weights.model_file import ModelFile, read_model

PRECISIONS = ("float32", "float64")
CONTRACT_BACKENDS = ("cpu", "reference")  # equal bit for bit; "cpu" is the fast one


class Oracle:
    """A model file and its reference computations, each built once on first use.

    model: a path to an .h5 model file, a ModelFile or a loaded Model (reused when its
    backend already computes the precision asked for). backend: which contract kernels
    give the float32 outputs.
    """

    def __init__(self, model, backend: str = "cpu", threads: int | None = None):
        if backend not in CONTRACT_BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(CONTRACT_BACKENDS)}, got {backend!r}")
        self.backend, self.threads = backend, threads
        self._models: dict[str, Model] = {}
        if isinstance(model, Model):
            self.file = model.file
            precision = {backend: "float32", "numpy": "float64"}.get(model.backend)
            if precision and str(model.dtype) == precision:
                self._models[precision] = model
        elif isinstance(model, ModelFile):
            self.file = model
        else:
            self.file = read_model(Path(model))

    @property
    def config(self):
        return self.file.config

    @property
    def digest(self) -> str:
        return self.file.digest

    def model(self, precision: str = "float32") -> Model:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if precision not in self._models:
            self._models[precision] = (Model(self.file, self.backend, threads=self.threads) if precision == "float32"
                                       else Model(self.file, "numpy", "float64"))
        return self._models[precision]

    def __call__(self, input_ids, input_mask=None, segment_ids=None, *, precision: str = "float32",
                 hidden_states: bool = False, heads=()) -> dict:
        """The model's outputs (see Model.__call__) in the precision asked for."""
        return self.model(precision)(input_ids, input_mask, segment_ids, hidden_states=hidden_states, heads=heads)


def as_oracle(model) -> Oracle:
    return model if isinstance(model, Oracle) else Oracle(model)


def reference(model, input_ids, input_mask=None, segment_ids=None, *, precision: str = "float32",
              hidden_states: bool = False, heads=()) -> dict:
    """Reference outputs for one batch. model: a path, ModelFile, Model or Oracle (make an
    Oracle once when calling repeatedly: a path is read and verified on every call)."""
    return as_oracle(model)(input_ids, input_mask, segment_ids, precision=precision,
                            hidden_states=hidden_states, heads=heads)
