"""Hugging Face transformers' AlbertModel checked with albert_ref.testing, the way an
outside project would check its own implementation: convert the model, run both on
padded ids, hand both outputs to assert_close. The correct model passes in float64 and
shows float32-level differences in float32; deliberately broken variants fail, and the
report points at the step that is wrong. Run with -s to see the reports."""
import pytest

from peers import require_peers
from albert_ref.testing import Oracle, assert_close, assert_equal_bits
from albert_ref.weights.convert import convert

require_peers()
import torch  # noqa: E402
import transformers  # noqa: E402
from test_hf_parity import CONFIGS, batch, hf_model, hf_outputs  # noqa: E402  (the parity test's random HF model)


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    model = hf_model("tiny")
    tmp = tmp_path_factory.mktemp("hf_oracle")
    model.save_pretrained(tmp / "hf")
    convert(tmp / "hf", tmp / "tiny.h5")
    # a full-length row, then two padded ones
    inputs = batch(CONFIGS["tiny"]["vocab_size"], [CONFIGS["tiny"]["max_position_embeddings"], 9, 30], 48)
    return model, Oracle(tmp / "tiny.h5"), inputs


def variant(model, **changes):
    """The same weights under a changed config: a plausible porting mistake."""
    broken = transformers.AlbertModel(transformers.AlbertConfig(**{**model.config.to_dict(), **changes})).eval()
    broken.load_state_dict(model.state_dict())
    return broken


def test_float64_huggingface_passes(case):
    model, oracle, (ids, mask, segs) = case
    report = assert_close(hf_outputs(model, ids, mask, segs),
                          oracle(ids, mask, segs, precision="float64", hidden_states=True), input_mask=mask)
    print(report)
    assert report["sequence_output"].tolerance.rtol == 1e-9
    assert max(r.max_abs for r in report.arrays) < 1e-13


def test_float32_huggingface_differs_at_float32_level(case):
    model, oracle, (ids, mask, segs) = case
    theirs = hf_outputs(model, ids, mask, segs, torch.float32)
    ours = oracle(ids, mask, segs, hidden_states=True)
    report = assert_close(theirs, ours, input_mask=mask)  # default float32 tolerances
    print(report)
    seq = report["sequence_output"]
    assert 0 < seq.max_abs < 1e-5 and seq.max_ulp > 0
    assert seq.ulps[0][0] == "0" and "ulp distance (float32): 0: " in str(report)
    with pytest.raises(AssertionError, match="bit-exact"):  # other summation orders: other bits
        assert_equal_bits(theirs, ours, input_mask=mask)


# name: (config changes, whether the mask is passed, what the report must say)
BROKEN = {
    # erf GELU where the model uses the tanh form: embeddings right, layer 1 (the first FFN) wrong
    "gelu_erf": (dict(hidden_act="gelu"), True, ["first at [layer=1, batch=0", "by layer: [0, "]),
    # LayerNorm epsilon 1e-5 instead of 1e-12: already the embedding LayerNorm is wrong. (It
    # moves outputs by ~eps / (2 var) ~ 2e-6 relative, near float32 rounding: the float64
    # reference is what makes it plain.)
    "epsilon_1e-5": (dict(layer_norm_eps=1e-5), True, ["first at [layer=0, batch=0"]),
    # padding not masked: the full-length row 0 and the embeddings stay right
    "missing_mask": ({}, False, ["first at [layer=1, batch=1", "beyond tolerance by batch: [0, "]),
}


@pytest.mark.parametrize("name", BROKEN)
def test_broken_implementation_is_caught_where_it_breaks(case, name):
    model, oracle, (ids, mask, segs) = case
    changes, use_mask, report_says = BROKEN[name]
    expected = oracle(ids, mask, segs, precision="float64", hidden_states=True)
    with pytest.raises(AssertionError) as error:
        assert_close(hf_outputs(variant(model, **changes), ids, mask, segs, use_mask=use_mask), expected,
                     input_mask=mask)
    print(error.value)
    for text in report_says:
        assert text in str(error.value)

