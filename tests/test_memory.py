"""albert_ref.memory: the arrays a model's weights are packed and copied into."""
import mmap

import numpy as np
import pytest

from albert_ref.memory import weight_array, weight_copy


@pytest.mark.parametrize("shape", [(0,), (3, 5), (2, 300, 700), (1 << 18,)])
def test_weight_arrays_are_writable_c_ordered_and_hold_what_is_copied(shape):
    a = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)
    out = weight_copy(a)
    assert out.shape == shape and out.dtype == np.float32 and out.flags.c_contiguous and out.flags.writeable
    assert np.array_equal(out, a) and not np.shares_memory(out, a)
    out.fill(-1.0)   # its own memory
    assert np.all(a >= 0)


@pytest.mark.skipif(not hasattr(mmap, "MAP_PRIVATE"), reason="no anonymous private mappings here")
def test_large_weight_arrays_live_in_a_private_mapping_of_their_own():
    """Not NumPy's allocation (which would advise huge pages): a mapping that ends with the array."""
    import weakref
    out = weight_array((1 << 20,))
    block = out.base
    while not isinstance(block, mmap.mmap):
        block = block.base if isinstance(block, np.ndarray) else block.obj
    ref = weakref.ref(block)
    del out, block
    assert ref() is None
