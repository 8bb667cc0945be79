"""Model inputs for the golden and fixtures commands: read from an .npz, or a small
deterministic batch when none is given."""
from __future__ import annotations

import numpy as np

from albert_ref.config import AlbertConfig
from albert_ref.errors import AlbertRefError
from albert_ref.npz_inputs import read_npz

INPUT_NAMES = ("input_ids", "input_mask", "segment_ids")


def load_inputs(path) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(input_ids, input_mask, segment_ids) from an .npz; the last two may be absent."""
    arrays = read_npz(path)
    if "input_ids" not in arrays:
        raise AlbertRefError(f"{path}: has no input_ids array (found: {', '.join(arrays) or 'nothing'})")
    unknown = sorted(set(arrays) - set(INPUT_NAMES))
    if unknown:
        raise AlbertRefError(f"{path}: unexpected array(s) {', '.join(unknown)} (expected {', '.join(INPUT_NAMES)})")
    return tuple(arrays.get(name) for name in INPUT_NAMES)


def padded_batch(ids, lengths, splits=None, type_vocab_size: int = 2, zero_padding: bool = True):
    """(input_ids, input_mask, segment_ids) int32 for the rows of `ids` [batch, seq], row b
    holding lengths[b] real tokens then padding: segment 1 from splits[b] (default
    lengths[b] // 2) to the row's last real token, segment 0 elsewhere (everywhere when
    type_vocab_size is 1); ids at padded positions zeroed unless zero_padding is False."""
    ids = np.asarray(ids)
    lengths = np.asarray(lengths)
    positions = np.arange(ids.shape[1])
    mask = (positions < lengths[:, None]).astype(np.int32)
    splits = lengths // 2 if splits is None else np.asarray(splits)
    segs = ((positions >= splits[:, None]) & (mask == 1) & (type_vocab_size > 1)).astype(np.int32)
    return (ids * mask if zero_padding else ids).astype(np.int32), mask, segs


def example_inputs(config: AlbertConfig, seed: int = 0, seq_len: int = 16):
    """Two sequences from a seeded generator, the second padded to half length, both
    segment ids used: enough to exercise masking without being large."""
    seq_len = min(seq_len, config.max_position_embeddings)
    ids = np.random.default_rng(seed).integers(0, config.vocab_size, (2, seq_len))
    return padded_batch(ids, [seq_len, max(1, seq_len // 2)], type_vocab_size=config.type_vocab_size)
