"""Text -> one float32 vector per text: the embedding API behind `albert-ref embed`.

Texts are tokenized, sorted by length, cut into batches that waste the least compute on
padding (plan_batches), each batch trimmed to its longest sequence, run, pooled, and put
back in input order. On the kernel backends the bit contract makes a sequence's outputs
independent of the batch it shares and of the padded length, so this gives exactly the
vectors of running every text alone.
"""
from __future__ import annotations

import itertools
import warnings
from typing import Callable, Iterable, Iterator

import numpy as np

from albert_ref.errors import AlbertRefError, InputError


class TruncationWarning(UserWarning):
    """Some texts were longer than max_seq_length and lost word pieces."""


def _each(reduce):
    """Reduce each sequence alone over its own real tokens, so that padding cannot matter."""
    return lambda out, lengths: np.stack([reduce(out["sequence_output"][i, :n]) for i, n in enumerate(lengths)])


# One vector per sequence from the model's outputs. pooled: TF-Hub's pooled_output,
# tanh(dense([CLS])); cls: sequence_output at [CLS]; mean / max: over the real tokens
# ([CLS] and [SEP] included, padding excluded), the mean accumulated in float64.
POOLERS = {
    "pooled": lambda out, lengths: out["pooled_output"],
    "cls": lambda out, lengths: out["sequence_output"][:, 0],
    "mean": _each(lambda tokens: tokens.mean(axis=0, dtype=np.float64)),
    "max": _each(lambda tokens: tokens.max(axis=0)),
}
POOLINGS = tuple(POOLERS)

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


def batches(lengths, batch_size: int, max_tokens: int | None = None):
    """The forward passes for texts of these token lengths: (row indices, width) per batch,
    longest first (peak memory shows at once), as plan_batches cuts them."""
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    for start, stop in plan_batches(lengths[order], batch_size, max_tokens=max_tokens):
        rows = order[start:stop]
        yield rows, int(lengths[rows[0]])


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows divided by their L2 norm in float64, rounded to float32; zero rows stay zero."""
    v = vectors.astype(np.float64)
    norms = np.sqrt(np.square(v).sum(axis=1, keepdims=True))
    return np.divide(v, norms, out=np.zeros_like(v), where=norms > 0).astype(np.float32)


class Encoder:
    """Sentence embeddings from an ALBERT model file.

    model: a path to an albert-ref .h5 file, or a loaded `albert_ref.Model` (then the
    backend options belong to `albert_ref.load`). backend "cpu" is the default: fast
    kernels with the bit contract, so vectors do not depend on batching.
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

    @property
    def dim(self) -> int:
        return self.model.config.hidden_size

    def encode(self, texts, *, pooling: str = "pooled", normalize: bool = False, batch_size: int = 32,
               max_seq_length: int | None = None) -> np.ndarray:
        """float32 [len(texts), dim] in input order. A text is a str, or a (text_a, text_b)
        pair. Texts longer than max_seq_length (default: the model's maximum) are truncated
        as run_classifier truncates them, with a TruncationWarning saying how many."""
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

    def encode_counted(self, texts, *, pooling: str = "pooled", normalize: bool = False, batch_size: int = 32,
                       max_seq_length: int | None = None,
                       on_progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """encode() without the warning: (vectors, word pieces dropped per text).
        batch_size is the most texts one forward pass holds (plan_batches may choose
        fewer); on_progress(n) is called after each batch with the number of texts it held."""
        if isinstance(texts, (str, bytes)):
            raise InputError("texts must be a list of texts or pairs; to embed one text, pass [text]")
        if pooling not in POOLERS:
            raise InputError(f"pooling must be one of {', '.join(POOLINGS)}, not {pooling!r}")
        _check_count("batch_size", batch_size)
        max_len = self.max_seq_length(max_seq_length)
        items = list(texts)
        vectors = np.empty((len(items), self.dim), np.float32)
        truncated = np.empty(len(items), np.int32)
        for start in range(0, len(items), SORT_WINDOW):
            window = slice(start, start + SORT_WINDOW)
            truncated[window] = self._encode_window(items[window], start, vectors[window], pooling, batch_size,
                                                    max_len, on_progress)
        return (l2_normalize(vectors) if normalize else vectors), truncated

    def _encode_window(self, items, start, vectors, pooling, batch_size, max_len, on_progress):
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
                                                batch.segment_ids[rows, :width], lengths[rows], pooling)
            if on_progress:
                on_progress(len(rows))
        return batch.truncated

    def forward_pooled(self, input_ids, input_mask, segment_ids, lengths, pooling: str) -> np.ndarray:
        """One forward pass over padded rows with `lengths` real tokens each: their pooled,
        unnormalized float32 vectors. By the bit contract each row's vector is the one it
        gets alone, so callers (encode, the server's batcher) may batch rows as they like."""
        out = self.model(input_ids, input_mask, segment_ids)
        return np.asarray(POOLERS[pooling](out, lengths), dtype=np.float32)

    def max_seq_length(self, requested: int | None) -> int:
        """The sequence length to truncate to: `requested`, checked, or the model's maximum."""
        return max_seq_length(self.model.config, requested)


def max_seq_length(config, requested: int | None) -> int:
    """`requested`, checked against the model's config, or the model's maximum."""
    limit = config.max_position_embeddings
    if requested is None:
        return limit
    _check_count("max_seq_length", requested)
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
