"""albert_ref.pooling and l2_normalize against NUMERICS.md section 9, written out here as
plain scalar loops: bit equality, padding that cannot matter, NaN and signed zeros."""
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from albert_ref import pooling
from albert_ref.pipeline import POOLING_MODES
from albert_ref.encoder import l2_normalize
from albert_ref.testing import assert_equal_bits

f32 = np.float32
FLOATS = st.floats(-1e4, 1e4, width=32, allow_subnormal=True)


def lane_sum_by_hand(values):
    """NUMERICS.md section 2, one scalar at a time."""
    lane = [f32(0.0)] * 16
    for i, v in enumerate(values):
        lane[i % 16] = f32(lane[i % 16] + v)
    for w in (8, 4, 2, 1):
        for k in range(w):
            lane[k] = f32(lane[k] + lane[k + w])
    return lane[0]


def by_hand(mode, tokens):
    """One sequence's real tokens [n, H] -> [H], per section 9."""
    n, h = tokens.shape
    out = []
    for c in range(h):
        col = tokens[:, c]
        if mode == "cls":
            out.append(col[0])
        elif mode == "max":
            m = col[0]
            for t in col[1:]:
                m = t if (t > m or np.isnan(t)) else m
            out.append(m)
        elif mode == "mean":
            out.append(f32(lane_sum_by_hand(col) / f32(n)))
        else:
            out.append(f32(lane_sum_by_hand(col) / np.sqrt(f32(n))))
    return np.array(out, f32)


@st.composite
def batches(draw):
    """Token vectors [B, S, H] with real lengths, and garbage (NaN, inf, huge) at the padding."""
    h = draw(st.integers(1, 5))
    lengths = draw(st.lists(st.integers(1, 40), min_size=1, max_size=3))
    width = max(lengths) + draw(st.integers(0, 5))
    x = draw(hnp.arrays(f32, (len(lengths), width, h), elements=FLOATS))
    for b, n in enumerate(lengths):
        x[b, n:] = draw(st.sampled_from([np.nan, np.inf, 3e38, -0.0]))
    return x, np.array(lengths)


@settings(max_examples=60, deadline=None)
@given(batches(), st.sampled_from(POOLING_MODES))
def test_each_mode_is_section_9_bit_for_bit(batch, mode):
    x, lengths = batch
    got = pooling.pool([mode], x, lengths)
    for b, n in enumerate(lengths):
        assert_equal_bits(got[b], by_hand(mode, x[b, :n]), name=f"{mode} row {b}")
        alone = pooling.pool([mode], x[b:b + 1, :n], [n])[0]  # no padding, no batch
        assert_equal_bits(got[b], alone, name=f"{mode} row {b} alone")


def test_modes_concatenate_in_the_order_given():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 7, 3)).astype(f32)
    got = pooling.pool(["max", "cls", "mean"], x, [7, 4])
    want = np.concatenate([pooling.max_tokens(x, [7, 4]), x[:, 0], pooling.mean_tokens(x, [7, 4])], axis=1)
    assert_equal_bits(got, want)


def test_max_nan_and_signed_zero():
    x = np.array([[[-0.0, 1.0], [0.0, np.nan], [np.nan, 2.0]]], f32)
    got = pooling.max_tokens(x, [2])[0]
    assert np.signbit(got[0]) and got[0] == 0  # equal zeros: the first one's sign
    assert np.isnan(got[1])  # a NaN among the real tokens gives NaN
    assert np.isnan(pooling.max_tokens(x, [3])[0, 1])  # ... wherever it is, even before a larger value


def test_float64_stays_float64():
    x = np.random.default_rng(1).standard_normal((1, 5, 4))
    got = pooling.pool(["mean", "mean_sqrt_len_tokens"], x, [5])
    assert got.dtype == np.float64
    np.testing.assert_allclose(got[0, :4], x[0].mean(axis=0), rtol=1e-14)
    np.testing.assert_allclose(got[0, 4:], x[0].sum(axis=0) / np.sqrt(5), rtol=1e-14)


@pytest.mark.parametrize("lengths", [[0, 3], [4]])
def test_lengths_out_of_range(lengths):
    with pytest.raises(ValueError, match="sequence lengths"):
        pooling.pool(["mean"], np.zeros((len(lengths), 3, 2), f32), lengths)


@settings(max_examples=40, deadline=None)
@given(hnp.arrays(f32, st.tuples(st.integers(1, 6), st.integers(1, 50)), elements=FLOATS))
def test_l2_normalize_is_exact_per_row(v):
    got = l2_normalize(v)
    for i, row in enumerate(v):
        assert_equal_bits(got[i], l2_normalize(row[None])[0], name=f"row {i} alone")
        exact = sum(Fraction(float(a)) ** 2 for a in row)  # the sum of squares, exactly
        norm = np.sqrt(np.float64(float(exact)))  # correctly rounded to float64, as math.fsum
        if norm == 0:
            assert not got[i].any()
        else:
            assert_equal_bits(got[i], (row.astype(np.float64) / norm).astype(f32), name=f"row {i}")
