"""albert_ref.memory: the arrays a model's weights are packed and copied into."""
import os

import numpy as np
import pytest

from albert_ref.memory import weight_array, weight_copy
from model_util import smaps


@pytest.mark.parametrize("shape", [(0,), (3, 5), (2, 300, 700), (1 << 18,)])
def test_weight_arrays_are_writable_c_ordered_and_hold_what_is_copied(shape):
    a = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)
    out = weight_copy(a)
    assert out.shape == shape and out.dtype == np.float32 and out.flags.c_contiguous and out.flags.writeable
    assert np.array_equal(out, a) and not np.shares_memory(out, a)
    out.fill(-1.0)   # its own memory
    assert np.all(a >= 0)


def _vm_flags(address: int) -> list[str]:
    """The VmFlags of the mapping that holds `address`."""
    for start, end, _, fields in smaps():
        if start <= address < end:
            return fields["VmFlags:"]
    raise AssertionError(f"no mapping holds {address:#x}")


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="reads Linux's /proc/self/smaps")
def test_large_weight_arrays_carry_no_huge_page_advice_and_are_private():
    """NumPy's own allocation of 4 MiB advises huge pages (VmFlags hg), which can stall the
    first touch; a weight array's mapping carries no advice and is not shared (sh)."""
    out = weight_array((1 << 20,))
    flags = _vm_flags(out.ctypes.data + out.nbytes // 2)   # NumPy advises from the second page on
    assert "hg" not in flags and "sh" not in flags and {"rd", "wr"} <= set(flags), flags
