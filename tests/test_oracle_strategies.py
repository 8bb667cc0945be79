"""The hypothesis strategies: what they draw is valid, and, used as a project would use
them, they drive the contract's promises (cpu == reference bits, batch composition
invisible at the real positions) through assert_equal_bits."""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from albert_ref.config import AlbertConfig
from albert_ref.model import Model
from albert_ref.testing import Oracle, assert_equal_bits
from albert_ref.testing.strategies import configs, input_batches, model_cases
from albert_ref.weights.random_model import random_model_file


@settings(max_examples=40, deadline=None)
@given(data=st.data(), padding=st.sampled_from(["end", "anywhere"]))
def test_configs_and_batches_are_valid(data, padding):
    config = data.draw(configs())
    assert AlbertConfig.from_dict(config.to_dict()) == config
    ids, mask, segs = data.draw(input_batches(config, padding=(padding,)))
    Model(random_model_file(config), "numpy").check_inputs(ids, mask, segs)  # raises if out of range
    assert mask.any(axis=1).all()
    if padding == "end":
        lengths = mask.sum(axis=1)
        assert (mask == (np.arange(ids.shape[1]) < lengths[:, None])).all()
        assert (segs[mask == 0] == 0).all()


@settings(max_examples=15, deadline=None)
@given(model_cases(configs(max_hidden=24, max_layers=3, max_positions=24), heads=("mlm", "sop"), min_batch=2))
def test_contract_promises_on_drawn_models(case):
    model_file, (ids, mask, segs) = case
    cpu = Oracle(model_file, backend="cpu")
    reference = Oracle(model_file, backend="reference")
    expected = reference(ids, mask, segs, hidden_states=True, heads=("mlm", "sop"))
    assert_equal_bits(cpu(ids, mask, segs, hidden_states=True, heads=("mlm", "sop")), expected, input_mask=mask)
    last = slice(len(ids) - 1, None)  # the last row on its own (min_batch=2: never the whole batch)
    alone = cpu(ids[last], mask[last], segs[last], hidden_states=True, heads=("mlm", "sop"))
    assert_equal_bits(alone, {k: v[:, last] if k == "hidden_states" else v[last] for k, v in expected.items()},
                      input_mask=mask[last])
