"""The original TensorFlow ALBERT as the oracle: checkpoints written by TF (see
fixtures/make_tf_fixtures.py), converted here without TensorFlow, outputs compared with
what TF computed in float64 and float32."""
import tarfile
from pathlib import Path

import numpy as np
import pytest

from albert_ref.model import load
from albert_ref.weights.convert import convert, detect
from albert_ref.weights.model_file import read_model

FIXTURES = Path(__file__).parent / "fixtures" / "tf"
CASES = sorted(p.name for p in FIXTURES.iterdir() if (p / "expected.npz").is_file())
FLOAT32_BACKENDS = ["numpy", "cpu", "reference"]


def source_of(case_dir: Path) -> Path:
    return case_dir if (case_dir / "variables").is_dir() else case_dir / "model.ckpt"


@pytest.fixture(scope="module", params=CASES)
def case(request, tmp_path_factory):
    case_dir = FIXTURES / request.param
    out = tmp_path_factory.mktemp(request.param) / "model.h5"
    convert(source_of(case_dir), out)
    with np.load(case_dir / "inputs.npz") as f:
        inputs = (f["input_ids"], f["input_mask"], f["segment_ids"])
    with np.load(case_dir / "expected.npz") as f:
        expected = {k: f[k] for k in f.files}
    return request.param, out, inputs, expected


def test_fixture_set_has_every_checkpoint_kind():
    assert {"tiny", "groups", "no_projection", "sharded", "hub_module"} <= set(CASES)


def _heads(model):
    return tuple(h for h in ("mlm", "sop") if h in model.heads)


def test_float64_matches_tensorflow_float64(case):
    name, path, (ids, mask, segs), expected = case
    model = load(path, backend="numpy", dtype="float64")
    out = model(ids, mask, segs, hidden_states=True, heads=_heads(model))
    assert ids.shape[1] == model.config.max_position_embeddings  # a sequence at max length
    assert len(set(mask.sum(1))) > 1 and set(np.unique(segs)) == {0, 1}
    real = mask.astype(bool)
    np.testing.assert_allclose(out["sequence_output"][real], expected["sequence_output_f64"][real], rtol=0, atol=1e-9)
    np.testing.assert_allclose(out["pooled_output"], expected["pooled_output_f64"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(out["hidden_states"][1:][:, real], expected["layer_outputs_f64"][:, real], rtol=0, atol=1e-9)
    for head in _heads(model):
        key = f"{head}_logits"
        np.testing.assert_allclose(out[key], expected[key + "_f64"], rtol=0, atol=1e-9)


@pytest.mark.parametrize("backend", FLOAT32_BACKENDS)
def test_float32_within_2e5_of_tensorflow_float32(case, backend):
    name, path, (ids, mask, segs), expected = case
    model = load(path, backend=backend, dtype="float32")
    out = model(ids, mask, segs, heads=_heads(model))
    real = mask.astype(bool)
    assert out["sequence_output"].dtype == np.float32
    np.testing.assert_allclose(out["sequence_output"][real], expected["sequence_output_f32"][real], rtol=0, atol=2e-5)
    np.testing.assert_allclose(out["pooled_output"], expected["pooled_output_f32"], rtol=0, atol=2e-5)


def test_heads_and_training_state(case):
    name, path, _, _ = case
    m = read_model(path)
    assert "global_step" not in m.tensors
    if name in ("tiny", "sharded"):
        assert m.heads == ("mlm", "sop")
    if name == "no_projection":
        assert not m.config.project_embeddings and m.heads == ()


def test_hub_module_archive_converts_like_the_directory(tmp_path):
    module = FIXTURES / "hub_module"
    archive = tmp_path / "albert_xlarge_2.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for sub in ("variables", "assets"):
            tar.add(module / sub, arcname=f"./{sub}")
    assert detect(archive) == "tf_hub_archive" and detect(module) == "tf_hub_module"
    a, b = convert(module, tmp_path / "dir.h5"), convert(archive, tmp_path / "tar.h5")
    assert a.digest == b.digest
    assert a.spm_model is not None and a.tokenizer_options["flavour"] == "original"
    assert read_model(tmp_path / "tar.h5").provenance["sources"][archive.name]


def test_module_tokenizer_reproduces_the_fixture_ids(tmp_path):
    """The fixture's ids were made from its texts by sentencepiece and run_classifier's
    [CLS] A [SEP] B [SEP] layout with longest-first truncation; the tokenizer carried in
    the converted file gives the same ids."""
    out = tmp_path / "hub.h5"
    convert(FIXTURES / "hub_module", out)
    model = load(out, backend="numpy")
    with np.load(FIXTURES / "hub_module" / "inputs.npz") as f:
        pairs = list(zip(f["text_a"].tolist(), f["text_b"].tolist()))
        expected = (f["input_ids"], f["input_mask"], f["segment_ids"])
    seq = expected[0].shape[1]
    batch = model.tokenizer.encode_batch(pairs, max_seq_length=seq, pad_to=seq)
    for got, want in zip((batch.input_ids, batch.input_mask, batch.segment_ids), expected):
        assert np.array_equal(got, want)
