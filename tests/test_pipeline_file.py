"""The model file's optional `pipeline` attribute and Dense tensors (weights/FORMAT.md):
round trip, validation on load by name, and files without one unchanged."""
import dataclasses
import json

import h5py
import pytest

from albert_ref.config import ACTIVATIONS
from albert_ref.errors import ModelFileError
from albert_ref.pipeline import DENSE_ACTIVATIONS, Dense, Pipeline, dense_names
from albert_ref.weights.model_file import read_header, read_model, write_model
from model_util import random_model_file, tiny_config, with_pipeline as add_pipeline

CONFIG = tiny_config()  # hidden 16, max positions 40
PIPELINE = Pipeline(("cls", "mean"), 20, (Dense(32, 8, True, "tanh"), Dense(8, 4, False, "linear")), True)


def with_pipeline(pipeline=PIPELINE):
    return add_pipeline(random_model_file(CONFIG), pipeline)


def test_round_trip(tmp_path):
    m = with_pipeline()
    write_model(tmp_path / "m.h5", m)
    back, header = read_model(tmp_path / "m.h5"), read_header(tmp_path / "m.h5")
    assert back.pipeline == header.pipeline == PIPELINE and back.digest == header.digest == m.digest
    kernel, bias = dense_names(0)
    assert back.tensors[kernel].tobytes() == m.tensors[kernel].tobytes() and back.tensors[bias].shape == (8,)
    assert dense_names(1)[1] not in back.tensors  # bias=False: nothing stored
    with h5py.File(tmp_path / "m.h5") as f:
        assert json.loads(f.attrs["pipeline"])["pooling"] == ["cls", "mean"]
        assert "sha256" in f["weights"][kernel].attrs


def test_files_without_a_pipeline_are_unchanged(tmp_path):
    m = random_model_file(CONFIG)
    write_model(tmp_path / "m.h5", m)
    with h5py.File(tmp_path / "m.h5") as f:
        assert "pipeline" not in f.attrs
    assert read_model(tmp_path / "m.h5").pipeline is None


@pytest.mark.parametrize("edit, match", [
    (lambda p: {**p, "pooling": ["median"]}, "pooling mode 'median'"),
    (lambda p: {**p, "pooling": []}, "non-empty"),
    (lambda p: {**p, "pooling": ["cls", "cls"]}, "twice"),
    (lambda p: {**p, "max_seq_length": 41}, "exceeds max_position_embeddings 40"),
    (lambda p: {**p, "max_seq_length": 0}, "positive integer"),
    (lambda p: {**p, "normalize": "yes"}, "normalize must be true or false"),
    (lambda p: {**p, "extra": 1}, "exactly the fields"),
    (lambda p: {**p, "dense": [{**p["dense"][0], "activation": "swish"}, p["dense"][1]]}, "activation 'swish'"),
    (lambda p: {**p, "dense": [{**p["dense"][0], "in_features": 16}, p["dense"][1]]}, "takes 16 features"),
    (lambda p: {**p, "dense": [p["dense"][0]]}, "unexpected tensor"),  # layer 1's weights left over
    (lambda p: [], "must be a JSON object"),
])
def test_bad_pipelines_are_refused_by_name(tmp_path, edit, match):
    path = tmp_path / "m.h5"
    write_model(path, with_pipeline())
    with h5py.File(path, "a") as f:
        f.attrs["pipeline"] = json.dumps(edit(PIPELINE.to_dict()))
    with pytest.raises(ModelFileError, match=match):
        read_model(path)


def test_dense_tensors_need_their_pipeline(tmp_path):
    m = with_pipeline()
    m.pipeline = None
    with pytest.raises(ModelFileError, match="unexpected tensor.*pipeline/dense_0/bias"):
        write_model(tmp_path / "m.h5", m)
    m.pipeline = dataclasses.replace(PIPELINE, dense=(PIPELINE.dense[0], Dense(8, 4, True, "linear")))
    with pytest.raises(ModelFileError, match="missing tensor.*pipeline/dense_1/bias"):
        write_model(tmp_path / "m.h5", m)
    assert not list(tmp_path.iterdir())


def test_every_dense_activation_is_one_the_kernels_run():
    """The activations a pipeline's Dense layers may name (pipeline.DENSE_ACTIVATIONS, the
    values of the converter's sentence-transformers map) are each in config.ACTIVATIONS,
    which every backend runs."""
    assert set(DENSE_ACTIVATIONS) <= set(ACTIVATIONS), set(DENSE_ACTIVATIONS) - set(ACTIVATIONS)
