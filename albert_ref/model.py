"""A loaded model: its file, a backend, and the TF-Hub `tokens` signature as a call."""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from albert_ref import forward as fwd
from albert_ref.errors import InputError, TokenizerError
from albert_ref.ops import check_ops_args, make_ops, prepare_params
from albert_ref.weights.model_file import ModelFile, read_model
from albert_ref.weights.names import num_parameters

def tokenizer_of(model_file: ModelFile):
    """The tokenizer a model file carries, with the preprocessing options it was stored with."""
    return _make_tokenizer(model_file.spm_model, model_file.tokenizer_options)


def check_tokenizer(model_file: ModelFile):
    """The model file's tokenizer, loaded by sentencepiece, after checking that its pieces
    are exactly the model's vocabulary (more would yield ids beyond the embedding table)."""
    tok = tokenizer_of(model_file)
    if tok.vocab_size != model_file.config.vocab_size:
        raise TokenizerError(f"the sentencepiece model has {tok.vocab_size} pieces, but the model's vocab_size is "
                             f"{model_file.config.vocab_size}: they do not belong together")
    return tok


def _make_tokenizer(spm_model, options):
    if spm_model is None:
        raise TokenizerError("this model file has no sentencepiece model; run it on token ids")
    from albert_ref.tokenizer import Tokenizer
    return Tokenizer(spm_model, **options)


def load(path, backend: str = "cpu", dtype: str | None = None, threads: int | None = None,
         verify: bool = True, isa: str | None = None) -> "Model":
    """Load a model file. backend: "cpu" (fast kernels, the default), "reference" (the
    kernels that define the bits), "cuda" (numba.cuda kernels, the same bits) or "numpy"
    (float64 by default, or dtype="float32"). isa: the cpu backend's kernel variant,
    "avx512", "avx2" or "sse" (default: $ALBERT_REF_ISA, else the widest this CPU runs);
    every variant gives the same bits."""
    check_ops_args(backend, dtype, threads, isa)   # before the file is read; make_ops comes later
    ops, warm_up = None, None

    def convert(name, array):
        # Reached once the file's layout, names, shapes and dtypes have been checked and
        # the hasher has started on its data (GIL-free): the backend is made now, so that
        # importing it overlaps with hashing, and its kernels then load on a second thread
        # while the data is checked and packed. Dense kernels are packed as they are read,
        # so that the file's arrays and their packed copies never all exist at once.
        nonlocal ops, warm_up
        if ops is None:
            ops = make_ops(backend, dtype, threads, isa)
            warm_up = _WarmUp(ops)
        return ops.prepare(name, array) if fwd.is_dense_kernel(name) else array
    model_file = read_model(path, verify=verify, convert=convert)
    warm_up.join()
    return Model(model_file, path=path, ops=ops,
                 prepared=frozenset(name for name in model_file.tensors if fwd.is_dense_kernel(name)))


class _WarmUp:
    """ops.warm_up() on a daemon thread, from now on. An error it meets is dropped: the
    forward pass makes the same calls and raises it where it can be handled. When the load
    fails, it is not waited for (a cold cache compiles for seconds) and finishes alone."""

    def __init__(self, ops):
        fn = getattr(ops, "warm_up", None)
        self._thread = None if fn is None else threading.Thread(target=self._run, args=(fn,),
                                                                name="albert-ref-warm-up", daemon=True)
        if self._thread is not None:
            self._thread.start()

    @staticmethod
    def _run(fn):
        try:
            fn()
        except Exception:  # noqa: BLE001 - see the class docstring
            pass

    def join(self):
        if self._thread is not None:
            self._thread.join()


class Model:
    def __init__(self, model_file: ModelFile, backend: str = "cpu", dtype: str | None = None,
                 threads: int | None = None, *, path=None, isa: str | None = None, ops=None,
                 prepared=frozenset()):
        # Only the file's description is kept: the backend's prepared copies replace the
        # tensors, so holding the originals too would double the memory. `path` names the
        # file the model was read from (None when built from a ModelFile in memory), so
        # that the tensors can be read again (albert_ref.testing.Oracle does). `ops`: a
        # backend already made (by `load`), instead of backend, dtype, threads and isa;
        # `prepared`: the names of the tensors it has prepared already (load packs the
        # dense kernels as it reads them); the rest are prepared here.
        self.path = None if path is None else Path(path)
        self.config = model_file.config
        self.digest = model_file.digest
        self.heads = model_file.heads
        self.provenance = model_file.provenance
        self.spm_model = model_file.spm_model
        self.tokenizer_options = model_file.tokenizer_options
        self.pipeline = model_file.pipeline
        self.ops = make_ops(backend, dtype, threads, isa) if ops is None else ops
        self.backend = self.ops.name
        self.dtype = np.dtype(self.ops.dtype)
        self.params = prepare_params(self.ops, model_file.tensors, prepared)
        self._tokenizer = None

    @property
    def num_parameters(self) -> int:
        return num_parameters(self.config)

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = _make_tokenizer(self.spm_model, self.tokenizer_options)
        return self._tokenizer

    def __call__(self, input_ids, input_mask=None, segment_ids=None, *, hidden_states=False, heads=()):
        """Run the TF-Hub `tokens` signature: int arrays [batch, seq] in, a dict of arrays out.

        hidden_states=True adds "hidden_states" [layers + 1, batch, seq, hidden] (index 0
        is the projected embedding output); heads=("mlm", "sop") adds the pretraining
        heads' logits when the file has them.
        """
        input_ids, input_mask, segment_ids = self.check_inputs(input_ids, input_mask, segment_ids)
        heads = tuple(heads)
        missing = [h for h in heads if h not in self.heads]
        if missing:
            raise InputError(f"the model file has no {', '.join(missing)} head (it has: {', '.join(self.heads) or 'none'})")
        out = fwd.forward(self.ops, self.params, self.config, input_ids, input_mask, segment_ids,
                          hidden_states=hidden_states, heads=heads)
        if hidden_states:
            out["hidden_states"] = np.stack(out["hidden_states"])
        return {k: np.asarray(v) for k, v in out.items()}

    def check_inputs(self, input_ids, input_mask=None, segment_ids=None):
        """Validate and normalise the three int arrays; every error names the array at fault."""
        ids = _int_array("input_ids", input_ids)
        batch, seq = ids.shape
        mask = np.ones_like(ids) if input_mask is None else _int_array("input_mask", input_mask, ids.shape)
        segs = np.zeros_like(ids) if segment_ids is None else _int_array("segment_ids", segment_ids, ids.shape)
        c = self.config
        if seq > c.max_position_embeddings:
            raise InputError(f"sequence length {seq} exceeds max_position_embeddings {c.max_position_embeddings}")
        _in_range("input_ids", ids, c.vocab_size, "vocab_size")
        _in_range("segment_ids", segs, c.type_vocab_size, "type_vocab_size")
        _in_range("input_mask", mask, 2, "2 (masks are 0/1)")
        return ids, mask, segs


def _int_array(name, value, shape=None):
    array = np.asarray(value)
    if array.dtype == bool and name == "input_mask":
        array = array.astype(np.int32)
    if not np.issubdtype(array.dtype, np.integer):
        raise InputError(f"{name} must be an integer array, got dtype {array.dtype}")
    if array.ndim != 2 or 0 in array.shape:
        raise InputError(f"{name} must be a non-empty [batch, seq] array, got shape {array.shape}")
    if shape is not None and array.shape != shape:
        raise InputError(f"{name} has shape {array.shape}, but input_ids has {shape}")
    return np.ascontiguousarray(array, dtype=np.int32) if np.all((array >= -2**31) & (array < 2**31)) else array


def _in_range(name, array, bound, bound_name):
    bad = (array < 0) | (array >= bound)
    if bad.any():
        where = tuple(np.argwhere(bad)[0].tolist())
        raise InputError(f"{name}[{where[0]}, {where[1]}] = {array[where]} is outside [0, {bound}) ({bound_name})")
