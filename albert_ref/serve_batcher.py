"""Dynamic batching for `albert-ref serve`: the texts of concurrent requests gathered
into least-padding forward passes, run one at a time on one compute thread.

Each text waits as its token ids. When work arrives at an idle batcher it lets a short
collection window pass (so that requests sent together share a pass), unless a full
batch is already waiting or the texts are left over from the last plan; then it plans
the oldest waiting texts with the Encoder's planner (plan_batches, at most
max_batch_requests texts and max_batch_tokens padded tokens a pass, charging each pass
PASS_OVERHEAD_ROWS) and runs the planned batch that holds the oldest text, so that no
text waits behind a stream of better-fitting ones. Planning runs outside the lock, so
that requests arriving meanwhile are queued at once. By the bit contract a text's vector
does not depend on its company or padding, so the batcher may choose freely.

All model work (loading, warm-up, forward passes) happens on the compute thread: one pass
at a time has every kernel thread to itself (two at once would only share the cores and
hold two passes' activations), and the event loop stays free to answer /health and /metrics.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from albert_ref.encoder import Encoder, batches

log = logging.getLogger("albert_ref.serve")

# The most waiting texts one plan considers, in multiples of max_batch_requests: enough
# for nearly uniform batches, few enough that planning (O(pool * batch)) stays ~ms.
POOL_BATCHES = 8

# What the planner charges a forward pass beyond its padded tokens, in token rows: less
# than offline embed's BATCH_OVERHEAD_ROWS (64), because a text the server leaves out of
# a pass is not padded into a worse batch later but joins the next plan, with the texts
# that arrived meanwhile. benchmarks/bench_serve_plan.py replays bench_serve's saturating
# load through this planner: with a pass costing ~0.9 ms a padded row plus ~10 rows
# (base shape, 2 cores of a Zen 4), 24 gives 9.4 texts a pass and 6% padding where 64
# gave 12.8 and 12% (the server measured 12.9 and 12%), and stays within a few percent
# of the best charge for fixed costs from 4 to 48 rows.
PASS_OVERHEAD_ROWS = 24


def next_pass(lengths, max_batch_requests: int, max_batch_tokens: int,
              overhead: int = PASS_OVERHEAD_ROWS) -> np.ndarray:
    """Which of the waiting texts of these token lengths (oldest first) to run next: the
    least-padding batch, as plan_batches cuts them all charging `overhead` a pass, that
    holds the oldest."""
    return next(rows for rows, _ in batches(lengths, max_batch_requests, max_batch_tokens, overhead) if 0 in rows)


@dataclass(eq=False)
class _Ticket:
    """One request's texts: their vectors fill in as the batches holding them finish."""

    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    vectors: np.ndarray
    remaining: int
    inference: float = 0.0  # seconds of the forward passes that held its texts

    def fill(self, rows, vectors, seconds) -> None:  # on the event loop
        if self.future.done():  # cancelled: the client went away
            return
        self.vectors[rows] = vectors
        self.remaining -= len(rows)
        self.inference += seconds
        if not self.remaining:
            self.future.set_result(Embedded(self.vectors, self.inference))

    def fail(self, exc) -> None:  # on the event loop
        if not self.future.done():
            self.future.set_exception(exc)


@dataclass(eq=False)
class _Text:
    ids: np.ndarray  # int32 token ids, [CLS] ... [SEP]
    ticket: _Ticket
    row: int
    queued_at: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class Embedded:
    """A request's vectors, and the time its forward passes took (its share of the wait)."""

    vectors: np.ndarray  # float32 [texts, dim], unnormalized
    inference_s: float


@dataclass(frozen=True)
class BatchStats:
    """What one forward pass ran, for the metrics."""

    texts: int
    tokens: int  # real tokens
    padded_tokens: int  # texts * width: the token rows computed
    seconds: float


class Batcher:
    """Queue texts from any number of requests; one compute thread runs them in batches.

    load() is called on the compute thread and returns the Encoder; then a warm-up pass
    runs and `ready` is set. A failure to load is kept in `error` and passed to on_fatal.
    """

    def __init__(self, load: Callable[[], Encoder], *, pooling: str | None, max_batch_tokens: int, max_batch_requests: int,
                 window_s: float, on_batch: Callable[[BatchStats], None] | None = None,
                 on_fatal: Callable[[BaseException], None] | None = None):
        self._load = load
        self.pooling = pooling
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_requests = max_batch_requests
        self.window_s = window_s
        self._on_batch = on_batch or (lambda stats: None)
        self._on_fatal = on_fatal or (lambda exc: None)
        self.encoder: Encoder | None = None
        self.dim: int | None = None  # the vectors' width, known once the model is loaded
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self._cond = threading.Condition()
        self._pending: list[_Text] = []
        self._pending_tokens = 0
        self._planned_at = -np.inf  # when the last batch was taken
        self._draining = False
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="albert-ref-compute", daemon=True)

    @property
    def queued_texts(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        self._thread.start()

    async def embed(self, sequences: list[np.ndarray]) -> Embedded:
        """The vectors of token id sequences ([CLS] ... [SEP], each at most the server's
        max_seq_length, which max_batch_tokens covers), in order.
        Cancelling the awaiting task (a client that went away) withdraws its waiting texts."""
        loop = asyncio.get_running_loop()
        ticket = _Ticket(loop, loop.create_future(), np.empty((len(sequences), self.dim), np.float32),
                         len(sequences))
        texts = [_Text(ids, ticket, row) for row, ids in enumerate(sequences)]
        with self._cond:
            if self._closing:
                raise RuntimeError("the batcher is shut down")
            self._pending += texts
            self._pending_tokens += sum(len(t.ids) for t in texts)
            self._cond.notify()
        try:
            return await ticket.future
        except asyncio.CancelledError:
            with self._cond:
                self._remove(lambda t: t.ticket is ticket)
            raise

    def drain(self) -> None:
        """Stop waiting for company: run what is queued at once (the server is stopping)."""
        with self._cond:
            self._draining = True
            self._cond.notify()

    def close(self, timeout: float | None = None) -> None:
        """Finish the queued texts, then stop the compute thread."""
        with self._cond:
            self._draining = self._closing = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # -- the compute thread -------------------------------------------------------------
    def _run(self) -> None:
        try:
            self.encoder = self._load()
            self.dim = self.encoder.output_dim(self.pooling)  # also checks the pooling against a Dense pipeline
            self._warm_up()
        except BaseException as exc:  # noqa: BLE001 - reported to the server, which stops
            log.error("albert-ref serve: cannot load the model: %s", exc)
            self.error = exc
            self._on_fatal(exc)
            return
        self.ready.set()
        while (batch := self._take()) is not None:
            self._compute(batch)

    def _warm_up(self) -> None:
        """One pass of two rows of different lengths, so that the first request does not
        pay for loading compiled kernels and starting thread pools."""
        tok = self.encoder.tokenizer
        self._forward([np.array([tok.cls_id, tok.sep_id], np.int32),
                       np.array([tok.cls_id, tok.cls_id, tok.sep_id], np.int32)])

    def _take(self) -> list[_Text] | None:
        """The next batch to run, waiting for work and for the collection window; None
        once closing with nothing left."""
        while True:
            with self._cond:
                while not self._pending and not self._closing:
                    self._cond.wait()
                if not self._pending:
                    return None
                # Texts left over from the last plan had their window: they run at once.
                while self._pending and not self._draining and not self._full() \
                        and self._pending[0].queued_at > self._planned_at:
                    left = self._pending[0].queued_at + self.window_s - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                if not self._pending:
                    continue
                self._planned_at = time.monotonic()
                pool = self._pending[:POOL_BATCHES * self.max_batch_requests]
            chosen = {id(t) for t in self._plan(pool)}
            with self._cond:  # less the texts withdrawn while planning; all of them: plan again
                if batch := self._remove(lambda t: id(t) in chosen):
                    return batch

    def _full(self) -> bool:
        return len(self._pending) >= self.max_batch_requests or self._pending_tokens >= self.max_batch_tokens

    def _plan(self, pool: list[_Text]) -> list[_Text]:
        return [pool[i] for i in next_pass([len(t.ids) for t in pool], self.max_batch_requests,
                                           self.max_batch_tokens)]

    def _remove(self, which) -> list[_Text]:
        """Take the waiting texts `which` selects out of the queue (under the lock)."""
        taken, kept = [], []
        for t in self._pending:
            (taken if which(t) else kept).append(t)
        self._pending = kept
        self._pending_tokens -= sum(len(t.ids) for t in taken)
        return taken

    def _forward(self, sequences: list[np.ndarray]) -> np.ndarray:
        lengths = np.array([len(s) for s in sequences], np.int64)
        ids = np.zeros((len(sequences), int(lengths.max())), np.int32)
        for row, seq in enumerate(sequences):
            ids[row, :len(seq)] = seq
        mask = (np.arange(ids.shape[1]) < lengths[:, None]).astype(np.int32)
        return self.encoder.forward_pooled(ids, mask, np.zeros_like(ids), lengths, self.pooling)

    def _compute(self, batch: list[_Text]) -> None:
        start = time.perf_counter()
        try:
            vectors = self._forward([t.ids for t in batch])
        except Exception as exc:  # noqa: BLE001 - each request of the batch gets the error
            log.exception("albert-ref serve: a forward pass failed")
            for ticket in {id(t.ticket): t.ticket for t in batch}.values():
                ticket.loop.call_soon_threadsafe(ticket.fail, exc)
            return
        seconds = time.perf_counter() - start
        width = max(len(t.ids) for t in batch)
        self._on_batch(BatchStats(len(batch), sum(len(t.ids) for t in batch), len(batch) * width, seconds))
        by_ticket: dict[int, tuple[_Ticket, list[int], list[int]]] = {}
        for i, t in enumerate(batch):
            entry = by_ticket.setdefault(id(t.ticket), (t.ticket, [], []))
            entry[1].append(t.row)
            entry[2].append(i)
        for ticket, rows, picks in by_ticket.values():
            ticket.loop.call_soon_threadsafe(ticket.fill, rows, vectors[picks], seconds)
