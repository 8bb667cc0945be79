"""Bad inputs to a model call get an InputError naming the array and position at fault."""
import numpy as np
import pytest

from albert_ref.errors import InputError
from albert_ref.model import Model
from model_util import random_model_file, random_inputs, tiny_config


@pytest.fixture(scope="module")
def model():
    return Model(random_model_file(tiny_config(), heads=("sop",)), backend="numpy")


def test_defaults_are_full_mask_and_segment_zero(model):
    ids, _, _ = random_inputs(model.config, [5, 5])
    a = model(ids)
    b = model(ids, np.ones_like(ids), np.zeros_like(ids))
    assert np.array_equal(a["sequence_output"], b["sequence_output"])


@pytest.mark.parametrize("change, match", [
    (lambda i, m, s: (np.where(i == i[0, 0], 64, i), m, s), r"input_ids\[0, 0\] = 64 is outside \[0, 64\)"),
    (lambda i, m, s: (i - 100, m, s), r"input_ids\[0, 0\] = -\d+ is outside"),
    (lambda i, m, s: (i, m, s + 2), r"segment_ids\[0, 0\] = 2 is outside \[0, 2\)"),
    (lambda i, m, s: (i, m * 2, s), r"input_mask\[0, 0\] = 2 .*masks are 0/1"),
    (lambda i, m, s: (i.astype(np.float32), m, s), "input_ids must be an integer array"),
    (lambda i, m, s: (i[0], m[0], s[0]), r"input_ids must be a non-empty \[batch, seq\] array"),
    (lambda i, m, s: (i, m[:, :3], s), r"input_mask has shape \(2, 3\), but input_ids has \(2, 6\)"),
    (lambda i, m, s: (i[:, :0], m[:, :0], s[:, :0]), "non-empty"),
    (lambda i, m, s: (np.tile(i, 8), np.tile(m, 8), np.tile(s, 8)), "sequence length 48 exceeds max_position_embeddings 40"),
    (lambda i, m, s: (i.astype(np.int64) + 2**40, m, s), "outside"),
])
def test_bad_inputs(model, change, match):
    ids, mask, segs = random_inputs(model.config, [6, 4])
    with pytest.raises(InputError, match=match):
        model(*change(ids, mask, segs))


def test_missing_head(model):
    ids, mask, segs = random_inputs(model.config, [3])
    with pytest.raises(InputError, match="no mlm head"):
        model(ids, mask, segs, heads=("mlm",))
    assert model(ids, mask, segs, heads=("sop",))["sop_logits"].shape == (1, 2)


def test_hidden_states_shape(model):
    ids, mask, segs = random_inputs(model.config, [3, 2])
    out = model(ids, mask, segs, hidden_states=True)
    assert out["hidden_states"].shape == (4, 2, 3, 16)
    assert np.array_equal(out["hidden_states"][-1], out["sequence_output"])


def test_all_padding_sequence_attends_to_every_key(model):
    """A sequence with no real token: TF's -10000 bias shifts every score alike, so it
    attends to all keys; the numpy path does the same rather than dividing by zero."""
    ids, mask, segs = random_inputs(model.config, [4, 4])
    mask[1] = 0
    out = model(ids, mask, segs)
    full = model(ids[1:], np.ones_like(mask[1:]), segs[1:])
    assert np.isfinite(out["sequence_output"]).all()
    np.testing.assert_allclose(out["sequence_output"][1], full["sequence_output"][0], rtol=0, atol=1e-12)
