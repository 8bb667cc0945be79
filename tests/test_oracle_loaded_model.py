"""An Oracle over a loaded Model: the precision the Model computes is served by the Model
itself, the other one is read again from the file it was loaded from, or refused by name."""
import numpy as np
import pytest

import albert_ref
from albert_ref.model import Model
from albert_ref.testing import Oracle, make_golden, reference
from albert_ref.testing.oracle import OracleError
from albert_ref.weights.model_file import write_model
from albert_ref.weights.random_model import random_model_file
from model_util import random_inputs, tiny_config


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("oracle") / "tiny.h5"
    write_model(path, random_model_file(tiny_config(), seed=5, heads=("sop",)))
    return path


def _equal(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert np.array_equal(a[key], b[key]), key


def test_oracle_over_a_loaded_model_gives_both_precisions(model_path):
    ids, mask, segs = random_inputs(tiny_config(), [5, 3])
    loaded = albert_ref.load(model_path)
    oracle = Oracle(loaded)
    assert oracle.model("float32") is loaded  # reused, not loaded again
    assert oracle.digest == loaded.digest and oracle.config == loaded.config and oracle.heads == ("sop",)
    by_path = Oracle(model_path)
    for precision in ("float32", "float64"):
        _equal(oracle(ids, mask, segs, precision=precision, hidden_states=True),
               by_path(ids, mask, segs, precision=precision, hidden_states=True))
    assert make_golden(oracle, ids, mask, segs) == make_golden(by_path, ids, mask, segs)
    assert reference(albert_ref.load(model_path, "numpy"), ids, mask, precision="float64")["pooled_output"].dtype == np.float64


def test_oracle_over_a_model_without_a_file_refuses_the_other_precision(model_path):
    ids, mask, _ = random_inputs(tiny_config(), [4])
    model = Model(random_model_file(tiny_config(), seed=5, heads=("sop",)), "numpy", "float64")
    oracle = Oracle(model)
    _equal(oracle(ids, mask, precision="float64"), Oracle(model_path)(ids, mask, precision="float64"))
    with pytest.raises(OracleError, match="pass the model file's path"):
        oracle(ids, mask)  # float32 would need the tensors, which the Model no longer holds


def test_oracle_notices_a_file_changed_after_loading(tmp_path):
    path = tmp_path / "m.h5"
    write_model(path, random_model_file(tiny_config(), seed=1))
    oracle = Oracle(albert_ref.load(path))
    write_model(path, random_model_file(tiny_config(), seed=2))
    with pytest.raises(albert_ref.errors.ModelFileError, match="changed since the Model was loaded"):
        oracle.model("float64")
