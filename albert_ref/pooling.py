"""Token vectors -> one vector per sequence, in the fixed orders of NUMERICS.md section 9.

Written once, over NumPy, for every backend: the backends hand back `sequence_output` as
an array and these functions reduce it with elementwise IEEE operations only (no NumPy
reduction, whose order is NumPy's), so float32 results are the same bits whichever
backend computed the tokens, and the float64 NumPy path gets the same formulas in
float64. Padding never enters: a sequence's result depends on its own real tokens alone.
"""
from __future__ import annotations

import numpy as np

LANES = 16  # NUMERICS.md section 2


def _real(lengths, seq_len: int) -> np.ndarray:
    """[B, S, 1] bool: which positions hold real tokens (the first `lengths[b]`)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.size and (lengths.min() < 1 or lengths.max() > seq_len):
        raise ValueError(f"sequence lengths must lie in [1, {seq_len}], got {lengths.min()}..{lengths.max()}")
    return (np.arange(seq_len)[None, :] < lengths[:, None])[:, :, None]


def lane_sum_tokens(x: np.ndarray, lengths) -> np.ndarray:
    """Section 2's lane sum over each sequence's real tokens, per column: [B, S, H] -> [B, H].

    A padded position adds +0.0, which leaves a lane unchanged: lanes start at +0.0 and a
    sum of them is never -0.0 under round-to-nearest, so this equals skipping it."""
    b, s, h = x.shape
    real = _real(lengths, s)
    lanes = np.zeros((b, LANES, h), x.dtype)
    for i in range(s):
        lanes[:, i % LANES] += np.where(real[:, i], x[:, i], x.dtype.type(0))
    for w in (8, 4, 2, 1):
        lanes[:, :w] += lanes[:, w:2 * w]
    return lanes[:, 0]


def mean_tokens(x, lengths):
    """lane_sum / n, one IEEE division."""
    n = np.asarray(lengths).astype(x.dtype)[:, None]
    return lane_sum_tokens(x, lengths) / n


def mean_sqrt_len_tokens(x, lengths):
    """lane_sum / sqrt(n), one IEEE square root and one division."""
    n = np.asarray(lengths).astype(x.dtype)[:, None]
    return lane_sum_tokens(x, lengths) / np.sqrt(n)


def max_tokens(x, lengths):
    """Ascending over the real tokens from the first: m = t if (t > m or t is NaN) else m.
    So a NaN anywhere gives NaN, and of equal zeros the first one's sign is kept."""
    real = _real(lengths, x.shape[1])
    m = x[:, 0].copy()
    for i in range(1, x.shape[1]):
        t = x[:, i]
        m = np.where(real[:, i] & ((t > m) | np.isnan(t)), t, m)
    return m


def cls_token(x, lengths):
    """The first token's vector ([CLS])."""
    return x[:, 0].copy()


TOKEN_POOLERS = {"cls": cls_token, "max": max_tokens, "mean": mean_tokens, "mean_sqrt_len_tokens": mean_sqrt_len_tokens}


def pool(modes, sequence_output, lengths) -> np.ndarray:
    """The modes' vectors concatenated in the order given: [B, S, H] -> [B, len(modes) * H]."""
    x = np.asarray(sequence_output)
    return np.concatenate([TOKEN_POOLERS[m](x, lengths) for m in modes], axis=1)
