"""The cpu backend's activation pool (kernel_backend.Workspace): a buffer is handed out
again only once no array can see it, and nothing outlives a forward pass."""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import albert_ref
from albert_ref.ops import size_class
from albert_ref.kernel_backend import Workspace
from albert_ref.weights.model_file import write_model

from model_util import random_model_file, tiny_config


def address(a):
    return a.__array_interface__["data"][0]


def test_dead_buffer_is_reused_and_live_views_are_not():
    ws = Workspace()
    with ws.scope():
        a = ws.empty((64, 32))
        where = address(a)
        del a
        b = ws.empty((32, 64))                  # same size class: the freed buffer
        assert address(b) == where
        view = b.reshape(-1)[10:]               # a view keeps the buffer alive
        del b
        c = ws.empty((64, 32))
        assert address(c) != where
        c[:] = 1.0
        view[:] = 2.0
        assert (c == 1.0).all()


def test_nothing_is_pooled_outside_a_pass():
    ws = Workspace()
    assert ws.empty((8, 8)).flags.owndata       # outside a scope: a plain np.empty array
    with ws.scope():
        kept = ws.empty((1000,))
        kept[:] = 7.0
        dead = ws.empty((1000,))
        del dead
        assert ws.pooled_bytes == size_class(4000)
    assert ws.pooled_bytes == 0                 # the pass is over: nothing retained
    with ws.scope():
        fresh = ws.empty((1000,))
        fresh[:] = 0.0
        assert (kept == 7.0).all()
        del kept                                # freed during a later pass: not pooled into it
        assert ws.pooled_bytes == 0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["new", "drop", "view"]), st.integers(0, 7), st.sampled_from([1, 63, 64, 500, 4096])),
                min_size=1, max_size=40))
def test_live_arrays_never_share_memory(steps):
    ws = Workspace()
    live = []                                   # (array, fill value)
    with ws.scope():
        for i, (what, pick, size) in enumerate(steps):
            if what == "new" or not live:
                a = ws.empty((size,))
                a[:] = i
                live.append((a, i))
            elif what == "drop":
                live.pop(pick % len(live))
            else:                               # replace an array by a view of it
                a, fill = live.pop(pick % len(live))
                live.append((a[1:] if a.size > 1 else a.reshape(1), fill))
            for a, fill in live:
                assert (a == fill).all(), "a live array was handed out again and overwritten"


def test_outputs_survive_later_passes(tmp_path):
    write_model(tmp_path / "m.h5", random_model_file(tiny_config()))
    model = albert_ref.load(tmp_path / "m.h5", backend="cpu")
    rng = np.random.default_rng(0)
    ids = rng.integers(0, model.config.vocab_size, (3, 9))
    first = model(ids, hidden_states=True)
    saved = {k: np.copy(v) for k, v in first.items()}
    model(rng.integers(0, model.config.vocab_size, (3, 9)), hidden_states=True)
    model(rng.integers(0, model.config.vocab_size, (5, 17)))
    for k, v in first.items():
        assert np.array_equal(v.view(np.uint32), saved[k].view(np.uint32)), k
