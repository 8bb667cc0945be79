"""Text -> one float32 vector per text: the embedding API behind `albert-ref embed`.

Texts are tokenized, sorted by length, cut into batches that waste the least compute on
padding (plan_batches), each batch trimmed to its longest sequence, run, pooled, and put
back in input order. On the kernel backends the bit contract makes a sequence's outputs
independent of the batch it shares and of the padded length, so this gives exactly the
vectors of running every text alone.
"""
from __future__ import annotations

import itertools
import math
import warnings
from typing import Callable, Iterable, Iterator

import numpy as np

from albert_ref.errors import AlbertRefError, InputError
from albert_ref.pipeline import POOLING_MODES, dense_names
from albert_ref.pooling import pool


class TruncationWarning(UserWarning):
    """Some texts were longer than max_seq_length and lost word pieces."""


# One vector per sequence from the model's outputs. pooled: TF-Hub's pooled_output,
# tanh(dense([CLS])); the others are albert_ref.pooling's, over the real tokens of
# sequence_output ([CLS] and [SEP] included, padding excluded), in NUMERICS.md section 9's
# orders. Several token modes may be given together ("cls,mean"): their vectors are
# concatenated, as sentence-transformers concatenates them.
POOLINGS = ("pooled", *POOLING_MODES)

# Texts tokenized and length-sorted together: bounds the memory of their padded id arrays
# while leaving batches nearly as uniform in length as one global sort would.
SORT_WINDOW = 4096

# What one more batch costs beyond its padded tokens, in token rows: a dense layer runs
# like one on ~20 more rows, plus each forward pass's fixed cost (GEMMs on fewer rows
# run slower: `benchmarks/bench_gemm.py --M 96`, `--M 320`, `--M 1024`, "reused" column).
# 64 keeps every batch at a few hundred rows unless it holds the whole job.
BATCH_OVERHEAD_ROWS = 64


def plan_batches(lengths, batch_size: int, overhead: int = BATCH_OVERHEAD_ROWS,
                 max_tokens: int | None = None) -> list[tuple[int, int]]:
    """Cut texts sorted longest first (`lengths`, non-increasing) into consecutive batches
    of at most batch_size texts and, given max_tokens (at least lengths[0]), at most
    max_tokens padded tokens: the [start, stop) ranges that minimise the total padded
    tokens (a batch of n texts costs n * its longest length) plus `overhead` per batch.

    Fixed runs of batch_size pad every text to the longest of its run; where lengths fall
    steeply (the long tail of a corpus), shorter batches waste far less: on the 300-text
    benchmark (`benchmarks/bench_embed.py --n 300` prints these), 9,067 token rows in 14
    batches instead of 11,084 for 8,504 real tokens.
    An exact dynamic program over the sorted order, O(len * batch_size)."""
    w = np.asarray(lengths, dtype=np.float64)
    n = len(w)
    best = np.zeros(n + 1)
    cut = np.zeros(n + 1, dtype=np.int64)
    for stop in range(1, n + 1):
        starts = np.arange(max(0, stop - batch_size), stop)
        padded = (stop - starts) * w[starts]
        cost = best[starts] + padded + overhead
        if max_tokens is not None:
            cost[padded > max_tokens] = np.inf  # a text alone always fits: starts[-1] stays
        k = int(np.argmin(cost))
        best[stop], cut[stop] = cost[k], starts[k]
    plan, stop = [], n
    while stop:
        plan.append((int(cut[stop]), stop))
        stop = plan[-1][0]
    return plan[::-1]


def batches(lengths, batch_size: int, max_tokens: int | None = None, overhead: int = BATCH_OVERHEAD_ROWS):
    """The forward passes for texts of these token lengths: (row indices, width) per batch,
    longest first (peak memory shows at once), as plan_batches cuts them."""
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    for start, stop in plan_batches(lengths[order], batch_size, overhead, max_tokens):
        rows = order[start:stop]
        yield rows, int(lengths[rows[0]])


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows divided by their L2 norm, NUMERICS.md section 9: the sum of squares exact
    (math.fsum of float64 squares, each exact for float32 inputs), then sqrt and division
    in float64, rounded once to float32; zero rows stay zero."""
    v = vectors.astype(np.float64)
    norms = np.sqrt(np.array([math.fsum(row) for row in np.square(v)]).reshape(-1, 1))
    return np.divide(v, norms, out=np.zeros_like(v), where=norms > 0).astype(np.float32)


def pooling_modes(pooling) -> tuple[str, ...]:
    """A pooling given as a name, "mode,mode" or a sequence of names, checked."""
    modes = tuple(pooling.split(",")) if isinstance(pooling, str) else tuple(pooling)
    bad = [m for m in modes if m not in POOLINGS]
    if not modes or bad or len(set(modes)) != len(modes) or ("pooled" in modes and len(modes) > 1):
        raise InputError(f"pooling must be one of {', '.join(POOLINGS)}, or several of "
                         f"{', '.join(POOLING_MODES)} joined by commas; not {pooling!r}")
    return modes


def resolve_pooling(pipeline, pooling=None) -> tuple[str, ...]:
    """The pooling modes `pooling` names, checked; None: the pipeline's (a sentence-embedding
    model's own), or TF-Hub's pooled_output."""
    if pooling is None:
        return pipeline.pooling if pipeline else ("pooled",)
    return pooling_modes(pooling)


def resolve_normalize(pipeline, normalize: bool | None = None) -> bool:
    """`normalize`, or the pipeline's choice when None (no normalization without one)."""
    return bool(pipeline and pipeline.normalize) if normalize is None else bool(normalize)


def output_dim(config, pipeline, modes: tuple[str, ...]) -> int:
    """The width of the vectors of pooling `modes`, after the pipeline's Dense layers."""
    width = len(modes) * config.hidden_size
    if pipeline and pipeline.dense:
        first = pipeline.dense[0].in_features
        if width != first:
            raise InputError(f"pooling {','.join(modes)} gives {width} features, but the model's Dense layer "
                             f"takes {first}: choose a pooling of that width")
        width = pipeline.dense[-1].out_features
    return width


class Encoder:
    """Sentence embeddings from an ALBERT model file.

    model: a path to an albert-ref .h5 file, or a loaded `albert_ref.Model` (then the
    backend options belong to `albert_ref.load`). backend "cpu" is the default: fast
    kernels with the bit contract, so vectors do not depend on batching.

    A model with a sentence-embedding pipeline (converted from sentence-transformers)
    uses it by default: its pooling, its Dense layers (the backend's dense op, so they
    follow the bit contract), its normalization and its max_seq_length. Without one the
    defaults are TF-Hub's pooled_output, no normalization, the model's maximum length.
    """

    def __init__(self, model, *, backend: str | None = None, dtype: str | None = None, threads: int | None = None):
        from albert_ref.model import Model, load
        if isinstance(model, Model):
            if (backend, dtype, threads) != (None, None, None):
                raise InputError("pass backend, dtype and threads to albert_ref.load, not with a loaded Model")
            self.model = model
        else:
            self.model = load(model, backend=backend or "cpu", dtype=dtype, threads=threads)
        self.tokenizer = self.model.tokenizer
        self.pipeline = self.model.pipeline
        self._dense = []  # (kernel, bias, activation), prepared by the backend
        for i, layer in enumerate(self.pipeline.dense if self.pipeline else ()):
            kernel, bias = dense_names(i)
            params = self.model.params
            self._dense.append((params[kernel], params[bias] if layer.bias else
                                self.model.ops.prepare(bias, np.zeros(layer.out_features, np.float32)),
                                layer.activation))

    @property
    def dim(self) -> int:
        """The width of the vectors of the default pooling."""
        return self.output_dim(None)

    def pooling_modes(self, pooling=None) -> tuple[str, ...]:
        """The pooling modes `pooling` names; None: the pipeline's, or TF-Hub's pooled_output."""
        return resolve_pooling(self.pipeline, pooling)

    def output_dim(self, pooling=None) -> int:
        """The width of the vectors of `pooling` (after the pipeline's Dense layers)."""
        return output_dim(self.model.config, self.pipeline, self.pooling_modes(pooling))

    def normalizes(self, normalize: bool | None = None) -> bool:
        """`normalize`, or the pipeline's choice when None."""
        return resolve_normalize(self.pipeline, normalize)

    def encode(self, texts, *, pooling=None, normalize: bool | None = None, batch_size: int = 32,
               max_seq_length: int | None = None) -> np.ndarray:
        """float32 [len(texts), dim] in input order. A text is a str, or a (text_a, text_b)
        pair. Texts longer than max_seq_length (default: the pipeline's, else the model's
        maximum) are truncated as run_classifier truncates them, with a TruncationWarning
        saying how many. pooling and normalize default to the model's pipeline."""
        vectors, truncated = self.encode_counted(texts, pooling=pooling, normalize=normalize,
                                                 batch_size=batch_size, max_seq_length=max_seq_length)
        _warn_truncated(truncated, self.max_seq_length(max_seq_length))
        return vectors

    def encode_stream(self, texts: Iterable, *, chunk_size: int = 1024, **options) -> Iterator[np.ndarray]:
        """Yield one vector per text, in order, reading `texts` lazily `chunk_size` at a time
        (each chunk is length-sorted on its own); options as for encode()."""
        _check_count("chunk_size", chunk_size)
        texts = iter(texts)
        while chunk := list(itertools.islice(texts, chunk_size)):
            yield from self.encode(chunk, **options)

    def encode_counted(self, texts, *, pooling=None, normalize: bool | None = None, batch_size: int = 32,
                       max_seq_length: int | None = None,
                       on_progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """encode() without the warning: (vectors, word pieces dropped per text).
        batch_size is the most texts one forward pass holds (plan_batches may choose
        fewer); on_progress(n) is called after each batch with the number of texts it held."""
        if isinstance(texts, (str, bytes)):
            raise InputError("texts must be a list of texts or pairs; to embed one text, pass [text]")
        modes = self.pooling_modes(pooling)
        dim = self.output_dim(modes)
        _check_count("batch_size", batch_size)
        max_len = self.max_seq_length(max_seq_length)
        items = list(texts)
        vectors = np.empty((len(items), dim), np.float32)
        truncated = np.empty(len(items), np.int32)
        for start in range(0, len(items), SORT_WINDOW):
            window = slice(start, start + SORT_WINDOW)
            truncated[window] = self._encode_window(items[window], start, vectors[window], modes, batch_size,
                                                    max_len, on_progress)
        return (l2_normalize(vectors) if self.normalizes(normalize) else vectors), truncated

    def _encode_window(self, items, start, vectors, modes, batch_size, max_len, on_progress):
        """Tokenize `items` (texts[start:...]) together, run them longest first, and write
        their vectors into `vectors`; returns the word pieces dropped per text."""
        try:
            batch = self.tokenizer.encode_batch(items, max_seq_length=max_len)
        except AlbertRefError as exc:
            if not start:
                raise
            raise type(exc)(f"{exc} (counting from texts[{start}])") from None
        lengths = np.asarray(batch.lengths, dtype=np.int64)
        for rows, width in batches(lengths, batch_size):
            vectors[rows] = self.forward_pooled(batch.input_ids[rows, :width], batch.input_mask[rows, :width],
                                                batch.segment_ids[rows, :width], lengths[rows], modes)
            if on_progress:
                on_progress(len(rows))
        return batch.truncated

    def forward_pooled(self, input_ids, input_mask, segment_ids, lengths, pooling=None) -> np.ndarray:
        """One forward pass over padded rows with `lengths` real tokens each: their pooled
        vectors, through the pipeline's Dense layers, not normalized (float32). By the bit
        contract each row's vector is the one it gets alone, so callers (encode, the
        server's batcher) may batch rows as they like. pooling as for encode()."""
        out = self.model(input_ids, input_mask, segment_ids)
        modes = self.pooling_modes(pooling)
        x = out["pooled_output"] if modes == ("pooled",) else pool(modes, out["sequence_output"], lengths)
        for kernel, bias, activation in self._dense:
            x = self.model.ops.dense(x, kernel, bias, activation)
        return np.asarray(x, dtype=np.float32)

    def max_seq_length(self, requested: int | None) -> int:
        """The sequence length to truncate to: `requested`, checked, or the pipeline's, or
        the model's maximum."""
        return max_seq_length(self.model.config, requested, self.pipeline)


def max_seq_length(config, requested: int | None, pipeline=None) -> int:
    """`requested`, checked against the model's config; else the pipeline's max_seq_length
    (a sentence-embedding model's own), else the model's maximum."""
    limit = config.max_position_embeddings
    if requested is None:
        return (pipeline and pipeline.max_seq_length) or limit
    _check_count("max_seq_length", requested)
    if requested < 2:
        raise InputError(f"max_seq_length must be at least 2 ([CLS] and [SEP]), not {requested}")
    if requested > limit:
        raise InputError(f"max_seq_length {requested} exceeds the model's max_position_embeddings {limit}")
    return requested


def truncation_summary(truncated, max_seq_length: int) -> str | None:
    """A sentence saying how many texts were truncated, or None when none were."""
    truncated = np.asarray(truncated)
    cut = int(np.count_nonzero(truncated))
    if not cut:
        return None
    return (f"{cut} of {truncated.size} texts were longer than max_seq_length {max_seq_length} tokens and were "
            f"truncated ({int(truncated.sum())} word pieces dropped)")


def _warn_truncated(truncated, max_seq_length: int) -> None:
    summary = truncation_summary(truncated, max_seq_length)
    if summary:
        warnings.warn(summary, TruncationWarning, stacklevel=3)


def _check_count(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"{name} must be a positive int, not {value!r}")
