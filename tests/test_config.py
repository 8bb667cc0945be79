import json
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from albert_ref.config import LIMITS, AlbertConfig
from albert_ref.config import ALBERT_XLARGE_2
from albert_ref.errors import ConfigError

MODULE_CARD = ALBERT_XLARGE_2  # the module card's albert_config.json


def test_module_card_config():
    c = AlbertConfig.from_original(MODULE_CARD)
    assert (c.embedding_size, c.hidden_size, c.intermediate_size) == (128, 2048, 8192)
    assert (c.num_attention_heads, c.head_size, c.num_hidden_layers, c.vocab_size) == (32, 64, 24, 30000)
    assert c.hidden_act == "gelu_tanh"  # the original "gelu" is the tanh approximation
    assert c.project_embeddings
    assert c.used_groups == [0]


@pytest.mark.parametrize("hf_act, canonical", [("gelu", "gelu_erf"), ("gelu_new", "gelu_tanh"),
                                                ("gelu_pytorch_tanh", "gelu_tanh"), ("relu", "relu")])
def test_huggingface_activation_names(hf_act, canonical):
    hf = {k: MODULE_CARD[k] for k in ("vocab_size", "embedding_size", "hidden_size", "num_hidden_layers",
                                       "num_attention_heads", "intermediate_size")}
    c = AlbertConfig.from_huggingface({**hf, "hidden_act": hf_act, "model_type": "albert", "num_attention_heads": 16})
    assert c.hidden_act == canonical
    assert c.project_embeddings  # Hugging Face always has embedding_hidden_mapping_in


@pytest.mark.parametrize("field, value", [("net_structure_type", 1), ("gap_size", 4), ("num_memory_blocks", 2),
                                          ("down_scale_factor", 2)])
def test_unsupported_architecture_fields_refused(field, value):
    with pytest.raises(ConfigError, match=field):
        AlbertConfig.from_original({**MODULE_CARD, field: value})


@pytest.mark.parametrize("change, match", [
    ({"num_attention_heads": 30}, "not a multiple"),
    ({"hidden_size": 0}, "hidden_size"),
    ({"num_hidden_groups": 25}, "num_hidden_groups"),
    ({"hidden_act": "swish"}, "hidden_act"),
    ({"vocab_size": "30000"}, "vocab_size"),
])
def test_invalid_configs_refused(change, match):
    with pytest.raises(ConfigError, match=match):
        AlbertConfig.from_original({**MODULE_CARD, **change})


def test_missing_field_named():
    data = dict(MODULE_CARD)
    del data["hidden_size"]
    with pytest.raises(ConfigError, match="hidden_size"):
        AlbertConfig.from_original(data)


def test_unreadable_config_file(tmp_path: Path):
    p = tmp_path / "albert_config.json"
    p.write_text("{not json")
    with pytest.raises(ConfigError, match="albert_config.json"):
        AlbertConfig.from_json_file(p, "original")


@given(layers=st.integers(1, 40), groups=st.integers(1, 40))
def test_group_assignment_matches_original_formula(layers, groups):
    """int(i / L * G) as modeling.py computes it, in float64 like Python."""
    groups = min(groups, layers)
    c = AlbertConfig(vocab_size=5, embedding_size=4, hidden_size=4, num_hidden_layers=layers,
                     num_attention_heads=1, intermediate_size=4, num_hidden_groups=groups)
    got = [c.group_of_layer(i) for i in range(layers)]
    assert got == [int(i / layers * groups) for i in range(layers)]
    assert got == sorted(got) and got[0] == 0 and got[-1] < groups


def test_canonical_round_trip():
    c = AlbertConfig.from_original(MODULE_CARD)
    assert AlbertConfig.from_dict(json.loads(c.to_json())) == c
    with pytest.raises(ConfigError, match="unknown config field"):
        AlbertConfig.from_dict({**c.to_dict(), "gap_size": 0})


@pytest.mark.parametrize("field", sorted(LIMITS))
def test_every_integer_field_has_a_plausible_range(field):
    base = AlbertConfig.from_original(MODULE_CARD).to_dict()
    for value in (LIMITS[field] + 1, 10**9, 10**400):
        for reader in (AlbertConfig.from_dict, AlbertConfig.from_original, AlbertConfig.from_huggingface):
            data = {**base, field: value}
            if reader is not AlbertConfig.from_dict:
                data["hidden_act"] = "gelu"
                del data["project_embeddings"]
            with pytest.raises(ConfigError, match=f"'{field}' is .*beyond the plausible range 1..{LIMITS[field]}"):
                reader(data)


@pytest.mark.parametrize("field, value", [
    ("layer_norm_eps", float("nan")), ("layer_norm_eps", float("inf")), ("layer_norm_eps", 0.0),
    ("layer_norm_eps", True), ("layer_norm_eps", "1e-12"), ("initializer_range", float("nan")),
    ("initializer_range", -1.0), ("project_embeddings", "yes"),
])
def test_float_and_flag_fields_are_checked(field, value):
    with pytest.raises(ConfigError, match=f"'{field}' must be"):
        AlbertConfig.from_dict({**AlbertConfig.from_original(MODULE_CARD).to_dict(), field: value})


@pytest.mark.parametrize("text", ["[" * 100_000 + "]" * 100_000, '{"vocab_size": ' + "9" * 5000 + "}"])
def test_hostile_config_json_is_a_config_error(tmp_path, text):
    path = tmp_path / "config.json"
    path.write_text(text)
    for flavour in ("original", "huggingface"):
        with pytest.raises(ConfigError, match="cannot read config"):
            AlbertConfig.from_json_file(path, flavour)
