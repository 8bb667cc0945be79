"""Reference outputs: the float32 bit contract or the float64 mathematical reference.

"float32" runs the contract's kernels (NUMERICS.md): the same bits on every machine,
thread count, batch composition and padding, so it can be compared exactly. "float64"
runs the plain NumPy forward in double precision: the yardstick for tolerance
comparisons of implementations that follow other summation orders (PyTorch, TF, ONNX).
"""
from __future__ import annotations

from pathlib import Path

from albert_ref.errors import AlbertRefError, ModelFileError
from albert_ref.model import Model
from albert_ref import ops
from albert_ref.weights.model_file import ModelFile, read_model

PRECISIONS = ("float32", "float64")
# The oracle computes on the CPU backends of the bit contract (albert_ref.ops.CONTRACT_BACKENDS
# without "cuda": a reference must run where the tests run); "cpu" is the fast one.
CONTRACT_BACKENDS = tuple(b for b in ops.CONTRACT_BACKENDS if b != "cuda")


class OracleError(AlbertRefError, ValueError):
    """An Oracle cannot give what was asked for: it was built from a loaded Model that
    computes another precision and has no file to read the weights from again."""


class Oracle:
    """A model file and its reference computations, each built once on first use.

    model: a path to an .h5 model file, a ModelFile or a loaded Model. A Model is reused
    for the precision its backend computes (float32 when its backend is this Oracle's,
    float64 for backend "numpy" in float64); the other precision is read again from the
    file the Model was loaded from, and when it has none (built from a ModelFile in
    memory) asking for it raises OracleError: pass a path instead. backend: which
    contract kernels give the float32 outputs.
    """

    def __init__(self, model, backend: str = "cpu", threads: int | None = None):
        if backend not in CONTRACT_BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(CONTRACT_BACKENDS)}, got {backend!r}")
        self.backend, self.threads = backend, threads
        self._models: dict[str, Model] = {}
        self._file: ModelFile | None = None
        self._loaded: Model | None = None
        if isinstance(model, Model):
            # A Model keeps no tensors; its file is read again only if another precision is asked for.
            self._loaded = model
            precision = {backend: "float32", "numpy": "float64"}.get(model.backend)
            if precision and str(model.dtype) == precision:
                self._models[precision] = model
        elif isinstance(model, ModelFile):
            self._file = model
        else:
            self._file = read_model(Path(model))

    @property
    def file(self) -> ModelFile:
        """The model file, read (and verified) from a loaded Model's path on first use."""
        if self._file is None:
            loaded = self._loaded
            if loaded.path is None:
                have = ", ".join(self._models) or "neither precision"
                raise OracleError(f"this Oracle was built from a loaded Model (backend {loaded.backend!r}, "
                                  f"{loaded.dtype}) that was not read from a file, so it serves {have} only; "
                                  f"pass the model file's path to Oracle for the other outputs")
            model_file = read_model(loaded.path)
            if model_file.digest != loaded.digest:
                raise ModelFileError(f"{loaded.path}: the file has changed since the Model was loaded from it "
                                     f"(digest {model_file.digest[:16]}..., loaded {loaded.digest[:16]}...)")
            self._file = model_file
        return self._file

    @property
    def _description(self):
        return self._file if self._file is not None else self._loaded

    @property
    def config(self):
        return self._description.config

    @property
    def digest(self) -> str:
        return self._description.digest

    @property
    def heads(self) -> tuple[str, ...]:
        return self._description.heads

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
