"""The server's batcher and command line, which need no `serve` extra: concurrent texts
batched within the limits get their solo vectors bit for bit, texts withdrawn while a
plan is made are never run, and `albert-ref serve` offers only the bit-contract backends."""
from __future__ import annotations

import asyncio
import logging
import threading
import time

import numpy as np
import pytest

from albert_ref.cli import main
from albert_ref.ops import CONTRACT_BACKENDS
from albert_ref.serve_batcher import Batcher
from albert_ref.testing import assert_equal_bits

WORDS = "the quick brown fox jumps over the lazy dog while seven wizards quietly hex a jovial boxer".split()
TEXTS = [" ".join(WORDS[i % 5:i % 5 + n]) for i, n in enumerate([1, 2, 3, 5, 8, 13, 4, 9, 16, 6, 11, 15] * 2)]


def started(encoder, **limits):
    """A running Batcher over the demo model, and the BatchStats of its passes."""
    passes = []
    batcher = Batcher(lambda: encoder, pooling="mean", on_batch=passes.append,
                      **{"max_batch_tokens": 64, "max_batch_requests": 4, "window_s": 0.005, **limits})
    batcher.start()
    assert batcher.ready.wait(120) and batcher.error is None
    return batcher, passes


def ids(encoder, text):
    return np.asarray(encoder.tokenizer.encode(text).input_ids, np.int32)


def test_concurrent_texts_get_their_solo_vectors_within_the_limits(encoder):
    batcher, passes = started(encoder)
    try:
        async def send_all():
            requests = [TEXTS[i:i + 3] for i in range(0, len(TEXTS), 3)]
            done = await asyncio.gather(*(batcher.embed([ids(encoder, t) for t in r]) for r in requests))
            return [(t, v) for r, d in zip(requests, done) for t, v in zip(r, d.vectors)]
        for text, vector in asyncio.run(send_all()):
            assert_equal_bits(vector, encoder.encode([text], pooling="mean")[0], name=text)
    finally:
        batcher.close(60)
    assert sum(p.texts for p in passes) == len(TEXTS)
    assert all(p.texts <= 4 and p.padded_tokens <= 64 for p in passes), passes
    # requests shared passes: fewer passes than requests (of 3 texts each), or a pass of 4
    assert len(passes) < len(TEXTS) // 3 or any(p.texts > 3 for p in passes), passes


def test_texts_withdrawn_while_planning_are_not_run(encoder, caplog):
    """A client that goes away while the compute thread plans (outside the lock) takes its
    texts with it: the plan is dropped and made again from what is still waiting."""
    batcher, passes = started(encoder, window_s=0.0)
    plan, withdrawn = batcher._plan, threading.Event()

    async def scenario():
        loop = asyncio.get_running_loop()
        gone = asyncio.ensure_future(batcher.embed([ids(encoder, TEXTS[4])]))

        def plan_while_the_client_leaves(pool):
            if not withdrawn.is_set():
                loop.call_soon_threadsafe(gone.cancel)
                deadline = time.monotonic() + 60
                while batcher.queued_texts and time.monotonic() < deadline:
                    time.sleep(0.01)
                withdrawn.set()
            return plan(pool)
        batcher._plan = plan_while_the_client_leaves
        with pytest.raises(asyncio.CancelledError):
            await gone
        await asyncio.to_thread(withdrawn.wait, 60)
        return await batcher.embed([ids(encoder, TEXTS[5])])

    try:
        done = asyncio.run(scenario())
    finally:
        batcher.close(60)
    assert withdrawn.is_set()
    assert_equal_bits(done.vectors[0], encoder.encode([TEXTS[5]], pooling="mean")[0], name="after the withdrawal")
    assert [p.texts for p in passes] == [1] and passes[0].tokens == len(ids(encoder, TEXTS[5]))
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]  # no empty pass tried


def test_serve_offers_only_the_contract_backends(capsys):
    with pytest.raises(SystemExit) as done:
        main(["serve", "--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0
    assert f"--backend {{{','.join(CONTRACT_BACKENDS)}}}" in out and "numpy" not in out and "--dtype" not in out


@pytest.mark.parametrize("argv, message", [
    (["--backend", "numpy"], "argument --backend: invalid choice: 'numpy'"),
    (["--dtype", "float32"], "unrecognized arguments: --dtype float32"),
])
def test_serve_refuses_what_it_does_not_offer(capsys, argv, message):
    with pytest.raises(SystemExit) as done:
        main(["serve", *argv])
    assert done.value.code == 2 and message in capsys.readouterr().err
