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


def example_inputs(config: AlbertConfig, seed: int = 0, seq_len: int = 16):
    """Two sequences from a seeded generator, the second padded to half length, both
    segment ids used: enough to exercise masking without being large."""
    seq_len = min(seq_len, config.max_position_embeddings)
    lengths = np.array([seq_len, max(1, seq_len // 2)])
    positions = np.arange(seq_len)
    mask = (positions < lengths[:, None]).astype(np.int32)
    ids = np.random.default_rng(seed).integers(0, config.vocab_size, mask.shape).astype(np.int32) * mask
    segs = ((positions >= lengths[:, None] // 2) & (mask == 1) & (config.type_vocab_size > 1)).astype(np.int32)
    return ids, mask, segs
