"""How model outputs are laid out: which axis is the batch, the token, the layer.

Shared by comparisons (to exclude padded positions and to name the worst position) and
by digests (whose canonical form zeroes padded positions), so both read an array alike:
[dim], [batch, dim], [batch, token, dim] or [layer, batch, token, dim] by its rank.
"""
from __future__ import annotations

import numpy as np

_LABELS = {1: ("dim",), 2: ("batch", "dim"), 3: ("batch", "token", "dim"), 4: ("layer", "batch", "token", "dim")}


def axis_labels(ndim: int) -> tuple[str, ...]:
    return _LABELS.get(ndim, tuple(f"axis{i}" for i in range(ndim)))


def format_index(index, ndim: int) -> str:
    """`[batch=1, token=5, dim=17]`."""
    return "[" + ", ".join(f"{label}={int(i)}" for label, i in zip(axis_labels(ndim), index)) + "]"


def real_positions(shape: tuple[int, ...], input_mask) -> np.ndarray | None:
    """A boolean array broadcastable to `shape`, true at real (unpadded) tokens; None when
    the array has no token axis (pooled output) or no mask is given."""
    if input_mask is None or len(shape) not in (3, 4):
        return None
    mask = np.asarray(input_mask)
    batch_token = shape[-3:-1]
    if mask.shape != batch_token:
        raise ValueError(f"input_mask has shape {mask.shape}, but the array's [batch, token] axes are {batch_token}")
    real = (mask != 0)[:, :, None]
    return real[None] if len(shape) == 4 else real
