"""`albert-ref fixtures`: every activation on disk, named by layer and TF variable, equal
to what the model computes, with digests in the manifest; written whole or not at all."""
import json

import numpy as np
import pytest

from albert_ref.cli import main
from albert_ref.config import AlbertConfig
from albert_ref.testing import Oracle, reference, write_fixtures
from albert_ref.testing.golden import digest
from albert_ref.testing.inputs import example_inputs
from albert_ref.weights.model_file import write_model
from albert_ref.weights.random_model import random_model_file

# 5 layers over 2 groups of 2 blocks, both pretraining heads
CONFIG = AlbertConfig(vocab_size=50, embedding_size=8, hidden_size=12, num_hidden_layers=5, num_attention_heads=3,
                      intermediate_size=20, num_hidden_groups=2, inner_group_num=2, max_position_embeddings=16)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("fixtures") / "groups.h5"
    write_model(path, random_model_file(CONFIG, seed=3, heads=("mlm", "sop")))
    return path


def test_fixtures_hold_every_activation(model_path, tmp_path):
    ids, mask, segs = example_inputs(CONFIG, seed=1, seq_len=7)
    np.savez(tmp_path / "in.npz", input_ids=ids, input_mask=mask, segment_ids=segs)
    out = tmp_path / "fx"
    assert main(["fixtures", str(model_path), str(out), "--inputs", str(tmp_path / "in.npz")]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    names = [a["name"] for a in manifest["activations"]]
    assert names[:3] == ["embeddings/sum", "embeddings/LayerNorm", "encoder/embedding_hidden_mapping_in"]
    assert names[3:10] == [f"layer_0/group_0/inner_group_0/attention_1/{n}" for n in
                           ("self/query", "self/key", "self/value", "self/context", "output/dense")] + [
        "layer_0/group_0/inner_group_0/LayerNorm", "layer_0/group_0/inner_group_0/ffn_1/intermediate/dense"]
    assert names[-5:] == ["pooler/dense", "cls/predictions/transform/dense", "cls/predictions/transform/LayerNorm",
                          "cls/predictions/decoder", "cls/seq_relationship"]
    assert len(names) == 3 + 5 * 2 * 9 + 5

    def load(entry):
        array = np.load(out / entry["file"])
        assert entry["sha256"] == digest(array, mask) and entry["shape"] == list(array.shape)
        return array

    acts = {a["name"]: load(a) for a in manifest["activations"]}
    expected = reference(model_path, ids, mask, segs, hidden_states=True, heads=("mlm", "sop"))
    layer_outputs = [acts["encoder/embedding_hidden_mapping_in"]] + [
        acts[f"layer_{i}/group_{CONFIG.group_of_layer(i)}/inner_group_1/LayerNorm_1"] for i in range(5)]
    assert np.array_equal(np.stack(layer_outputs), expected["hidden_states"])
    assert np.array_equal(acts["cls/seq_relationship"], expected["sop_logits"])
    for name, entry in manifest["outputs"].items():
        assert np.array_equal(load(entry), expected[name])
    assert all(np.array_equal(load(manifest["inputs"][n]), a) for n, a in
               (("input_ids", ids), ("input_mask", mask), ("segment_ids", segs)))
    dense = next(a for a in manifest["activations"] if a["name"].endswith("intermediate/dense"))
    assert (dense["op"], dense["activation"], dense["param"]) == (
        "dense", "gelu_tanh", "bert/encoder/transformer/group_0/inner_group_0/ffn_1/intermediate/dense/kernel")


def test_float64_fixtures_without_inputs(model_path, tmp_path):
    manifest = write_fixtures(Oracle(model_path), tmp_path / "fx", precision="float64")
    assert manifest["precision"] == "float64" and manifest["inputs"]["input_ids"]["shape"] == [2, 16]
    assert {a["dtype"] for a in manifest["activations"]} == {"float64"}


def test_fixtures_write_nothing_on_failure(model_path, tmp_path, capsys, monkeypatch):
    np.savez(tmp_path / "bad.npz", input_ids=np.full((1, 3), 50))  # outside the vocab
    assert main(["fixtures", str(model_path), str(tmp_path / "fx"), "--inputs", str(tmp_path / "bad.npz")]) == 2
    assert "input_ids[0, 0] = 50 is outside [0, 50)" in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    assert main(["fixtures", str(model_path), str(tmp_path / "full")]) == 2
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]
    saved, real_save = [], np.save

    def save_then_fail(fh, array, allow_pickle):  # the disk fills up after 5 files
        saved.append(real_save(fh, array, allow_pickle=allow_pickle))
        if len(saved) == 5:
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "save", save_then_fail)
    with pytest.raises(OSError):
        write_fixtures(model_path, tmp_path / "fx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.npz", "full"]
