"""albert_ref.Encoder: pooling against hand computation from sequence_output, batching
that changes no bit, input order, pairs, streams, normalization and truncation warnings."""
import itertools
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import albert_ref
from albert_ref.encoder import POOLINGS, TruncationWarning, plan_batches
from albert_ref.weights import DEMO_MODEL

TEXTS = ["hello world", "The quick brown fox jumps over the lazy dog, twice.", "a",
         "Numbers like 1,999, 2,000 and 12,500 are split the original way.", "",
         "Short.", "Another sentence of middling length for the batch.", "Zoë's café, naïve résumé!"]


def alone(encoder, text_a, text_b=None):
    """The model's outputs for one text run by itself, unpadded, and its real length."""
    enc = encoder.tokenizer.encode(text_a, text_b, max_seq_length=512)
    ids = np.array([enc.input_ids], np.int32)
    out = encoder.model(ids, np.ones_like(ids), np.array([enc.segment_ids], np.int32))
    return out, len(enc.input_ids)


def by_hand(out, n, pooling):
    seq = out["sequence_output"][0, :n]
    return {"pooled": out["pooled_output"][0], "cls": seq[0], "max": seq.max(axis=0),
            "mean": seq.sum(axis=0, dtype=np.float64) / n,
            "mean_sqrt_len_tokens": seq.sum(axis=0, dtype=np.float64) / np.sqrt(n)}[pooling].astype(np.float32)


@pytest.mark.parametrize("pooling", POOLINGS)
def test_pooling_matches_hand_computation(encoder, pooling):
    got = encoder.encode(TEXTS, pooling=pooling, batch_size=3)
    assert got.dtype == np.float32 and got.shape == (len(TEXTS), encoder.dim)
    want = np.stack([by_hand(*alone(encoder, t), pooling) for t in TEXTS])
    if pooling.startswith("mean"):  # the contract's float32 lane sum vs an exact-ish float64 sum
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    else:
        np.testing.assert_array_equal(got, want)


def test_batching_changes_no_bit_and_keeps_input_order(encoder):
    """The bit contract: whatever the batch and its padded length, a text gets the same vector."""
    one_by_one = np.concatenate([encoder.encode([t], pooling="mean") for t in TEXTS])
    for batch_size in (1, 3, 64):
        assert encoder.encode(TEXTS, pooling="mean", batch_size=batch_size).tobytes() == one_by_one.tobytes()
    reordered = encoder.encode(TEXTS[::-1], pooling="mean", batch_size=5)
    assert reordered[::-1].tobytes() == one_by_one.tobytes()


def test_pairs(encoder):
    pairs = [("Who wrote War and Peace?", "Tolstoy wrote it."), ("Short?", "Yes.")]
    got = encoder.encode(pairs + ["a single text"], pooling="cls")
    for row, (a, b) in zip(got, pairs):
        np.testing.assert_array_equal(row, by_hand(*alone(encoder, a, b), "cls"))
    assert not np.array_equal(got[0], encoder.encode(["Who wrote War and Peace?"], pooling="cls")[0])


def test_normalize(encoder):
    raw = encoder.encode(TEXTS, pooling="max")
    unit = encoder.encode(TEXTS, pooling="max", normalize=True)
    assert unit.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(unit.astype(np.float64), axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(unit, raw / np.linalg.norm(raw.astype(np.float64), axis=1, keepdims=True), rtol=1e-6)


def test_stream_is_lazy_and_matches_encode(encoder):
    pulled = []

    def source():
        for t in TEXTS:
            pulled.append(t)
            yield t

    stream = encoder.encode_stream(source(), chunk_size=3, pooling="mean")
    first = next(stream)
    assert len(pulled) == 3  # one chunk read, not the whole source
    rest = list(stream)
    assert np.stack([first, *rest]).tobytes() == encoder.encode(TEXTS, pooling="mean").tobytes()


def test_truncation_is_counted_and_warned(encoder):
    texts = ["one two three four five six seven eight nine ten eleven twelve", "short", "a b c d e f g h i j k l"]
    with pytest.warns(TruncationWarning, match=r"2 of 3 texts were longer than max_seq_length 6 tokens") as caught:
        vectors = encoder.encode(texts, max_seq_length=6)
    assert "word pieces dropped" in str(caught[0].message)
    _, truncated = encoder.encode_counted(texts, max_seq_length=6)
    assert truncated[1] == 0 and truncated[0] > 0 and truncated[2] > 0
    np.testing.assert_array_equal(vectors[1], encoder.encode(["short"])[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        encoder.encode(texts)  # nothing truncated at the model's own maximum: no warning


def test_encoder_over_a_loaded_model():
    model = albert_ref.load(DEMO_MODEL, backend="numpy", dtype="float64")
    enc = albert_ref.Encoder(model)
    assert enc.model is model and enc.encode(["x"]).dtype == np.float32
    with pytest.raises(albert_ref.InputError, match="pass backend"):
        albert_ref.Encoder(model, backend="cpu")


@pytest.mark.parametrize("call, match", [
    (lambda e: e.encode("one text"), "pass \\[text\\]"),
    (lambda e: e.encode(["x"], pooling="median"), "pooling must be one of pooled, cls, max, mean, mean_sqrt_len_tokens"),
    (lambda e: e.encode(["x"], batch_size=0), "batch_size must be a positive int"),
    (lambda e: e.encode(["x"], max_seq_length=513), "exceeds the model's max_position_embeddings 512"),
    (lambda e: e.encode(["x", 3]), "texts\\[1\\] must be str or bytes"),
    (lambda e: e.encode([b"\xff"]), "not valid UTF-8"),
])
def test_bad_calls(encoder, call, match):
    with pytest.raises(albert_ref.AlbertRefError, match=match):
        call(encoder)


def test_empty_list(encoder):
    assert encoder.encode([]).shape == (0, encoder.dim)


def _cost(lengths, plan, overhead):
    return sum((stop - start) * lengths[start] + overhead for start, stop in plan)


@settings(max_examples=200, deadline=None)
@given(lengths=st.lists(st.integers(1, 512), min_size=1, max_size=9), batch_size=st.integers(1, 5),
       overhead=st.sampled_from([0, 3, 64]))
def test_plan_batches_is_an_optimal_partition(lengths, batch_size, overhead):
    lengths = sorted(lengths, reverse=True)
    plan = plan_batches(lengths, batch_size, overhead)
    # consecutive ranges covering every text once, none larger than batch_size
    assert [r for start, stop in plan for r in range(start, stop)] == list(range(len(lengths)))
    assert all(0 < stop - start <= batch_size for start, stop in plan)
    # no cut into batches of at most batch_size costs less (every composition tried)
    n = len(lengths)
    best = min(_cost(lengths, list(zip((0,) + cuts, cuts + (n,))), overhead)
               for k in range(n) for cuts in itertools.combinations(range(1, n), k)
               if all(b - a <= batch_size for a, b in zip((0,) + cuts, cuts + (n,))))
    assert _cost(lengths, plan, overhead) == best


def test_plan_batches_splits_a_steep_tail():
    # 32 texts: one long, the rest short; fixed batches would pad all 32 to 400 tokens
    lengths = [400] + [20] * 31
    plan = plan_batches(lengths, 32)
    assert plan == [(0, 1), (1, 32)]
    assert plan_batches([20] * 64, 32) == [(0, 32), (32, 64)]   # uniform lengths: full batches


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 64), min_size=1, max_size=80), st.integers(1, 16), st.integers(64, 400),
       st.sampled_from([0, 24, 64]))
def test_plan_batches_respects_max_tokens(lengths, batch_size, max_tokens, overhead):
    """The server's bound: no pass over max_tokens padded tokens, whatever a pass costs."""
    lengths = sorted(lengths, reverse=True)
    plan = plan_batches(lengths, batch_size, overhead, max_tokens)
    assert [a for a, _ in plan] == [0] + [b for _, b in plan[:-1]] and plan[-1][1] == len(lengths)
    for start, stop in plan:
        assert stop - start <= batch_size and (stop - start) * lengths[start] <= max_tokens


def test_max_seq_length_below_two_is_refused(encoder):
    """[CLS] and [SEP] alone take two positions: a shorter limit is a named error, for the
    Encoder and everything built on it (the server's truncation included)."""
    with pytest.raises(albert_ref.InputError, match="at least 2"):
        encoder.max_seq_length(1)
    assert encoder.max_seq_length(2) == 2
