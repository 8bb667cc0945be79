"""The contract's lane sum on the GPU (NUMERICS.md, "The lane sum"), the twin of reduce.py.

lane_sum(v[0..n)): lane l (0..15) is the ascending chain of v[i], i % 16 == l, from +0.0;
then lanes fold pairwise: for w = 8, 4, 2, 1: lane[l] = lane[l] + lane[l + w], l < w.

On the GPU, 16 threads of a CTA each run one lane's chain (the kernels below read the
element i = l, l + 16, l + 32, ... themselves) and store it in `part[base + l]`; after a
barrier, `fold16` folds the 16 lanes in the contract's order. Every thread that needs the
sum folds the same 16 values in the same order and gets the same bits, so no broadcast
step is needed. Plain shared memory and barriers only (no warp shuffles), so the kernels
also run under the CUDA simulator.
"""
from __future__ import annotations

import numpy as np

from .cuda_fmath import add32, device_function

_U = np.uint64


def _fold16(part, base):
    """The fold of the 16 lane sums part[base .. base+16), in the contract's order."""
    a0 = add32(part[_U(base + 0)], part[_U(base + 8)])
    a1 = add32(part[_U(base + 1)], part[_U(base + 9)])
    a2 = add32(part[_U(base + 2)], part[_U(base + 10)])
    a3 = add32(part[_U(base + 3)], part[_U(base + 11)])
    a4 = add32(part[_U(base + 4)], part[_U(base + 12)])
    a5 = add32(part[_U(base + 5)], part[_U(base + 13)])
    a6 = add32(part[_U(base + 6)], part[_U(base + 14)])
    a7 = add32(part[_U(base + 7)], part[_U(base + 15)])
    b0 = add32(a0, a4)
    b1 = add32(a1, a5)
    b2 = add32(a2, a6)
    b3 = add32(a3, a7)
    c0 = add32(b0, b2)
    c1 = add32(b1, b3)
    return add32(c0, c1)


fold16 = device_function(_fold16)
