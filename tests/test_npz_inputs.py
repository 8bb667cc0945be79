"""albert_ref.npz_inputs: every single-bit flip of an .npz input is refused with an
InputError or leaves the arrays read unchanged (exhaustively, on a small archive)."""
import numpy as np

from albert_ref.errors import InputError
from albert_ref.npz_inputs import read_npz


def test_every_bit_flip_is_refused_or_harmless(tmp_path):
    path = tmp_path / "in.npz"
    np.savez(path, input_ids=np.array([[2, 40, 41, 3], [2, 50, 3, 0]], np.int32),
             input_mask=np.array([[1, 1, 1, 1], [1, 1, 1, 0]], np.int32))
    original, data = read_npz(path), path.read_bytes()
    flipped, refused = tmp_path / "flipped.npz", 0
    for i in range(len(data)):
        for bit in range(8):
            flipped.write_bytes(data[:i] + bytes([data[i] ^ (1 << bit)]) + data[i + 1:])
            try:
                arrays = read_npz(flipped)
            except InputError:
                refused += 1
                continue
            assert arrays.keys() == original.keys(), (i, bit)
            for name, array in original.items():
                assert arrays[name].dtype == array.dtype and np.array_equal(arrays[name], array), (i, bit, name)
    assert refused > len(data)  # most flips are damage that must be caught
