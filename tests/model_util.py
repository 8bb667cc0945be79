"""Small models and padded input batches for tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from albert_ref.config import AlbertConfig
from albert_ref.weights.random_model import random_model_file, random_params  # noqa: F401 (re-exported)


TINY = dict(vocab_size=64, embedding_size=8, hidden_size=16, num_hidden_layers=3, num_attention_heads=4,
            intermediate_size=32, max_position_embeddings=40)


# Variants of TINY that exercise each structural option; every backend is checked on them.
TINY_VARIANTS = {
    "projected": dict(),
    "groups2_inner2": dict(num_hidden_groups=2, inner_group_num=2, num_hidden_layers=4),
    "e_eq_h": dict(embedding_size=16),
    "gelu_erf_heads1": dict(hidden_act="gelu_erf", num_attention_heads=1),
    "relu_d3": dict(hidden_act="relu", hidden_size=12, num_attention_heads=4),
}


def tiny_config(**overrides) -> AlbertConfig:
    return AlbertConfig(**{**TINY, **overrides})


def random_inputs(config: AlbertConfig, lengths, seq_len=None, seed=0):
    """A padded batch: sequence b has lengths[b] real tokens, both segment ids used."""
    from albert_ref.testing.inputs import padded_batch
    ids = np.random.default_rng(seed).integers(0, config.vocab_size, (len(lengths), seq_len or max(lengths)),
                                               dtype=np.int32)
    return padded_batch(ids, lengths, type_vocab_size=config.type_vocab_size)


def bits(a):
    """float32 bit patterns, for exact comparisons (-0.0 != +0.0, NaN payloads compared)."""
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def randn(rng, *shape, scale=1.0):
    return (scale * rng.standard_normal(shape)).astype(np.float32)


def as_format_version_1(path) -> None:
    """Turn a model file into what the format-1 writer made: the same objects and
    per-dataset checksums, without the manifest and its digest."""
    import h5py
    with h5py.File(path, "r+") as f:
        del f.attrs["manifest"], f.attrs["digest"]
        f.attrs["format_version"] = 1


def with_pipeline(model_file, pipeline, seed=3):
    """model_file given a sentence-embedding pipeline and random weights for its Dense layers."""
    from albert_ref.weights.random_model import random_tensor
    rng = np.random.default_rng(seed)
    model_file.tensors.update({n: random_tensor(rng, n, s) for n, s in pipeline.tensor_shapes().items()})
    model_file.pipeline = pipeline
    return model_file


def write_pipeline_model(path):
    """The demo model (it has a tokenizer) with a pipeline (cls + mean pooling, a tanh Dense
    layer to 8 dimensions, normalized, max_seq_length 24) written to `path`: a stand-in for
    a converted sentence-transformers model, for the paths that must follow its pipeline."""
    from albert_ref.pipeline import Dense, Pipeline
    from albert_ref.weights import DEMO_MODEL
    from albert_ref.weights.model_file import read_model, write_model
    m = read_model(DEMO_MODEL)
    m.checksums = None
    hidden = m.config.hidden_size
    write_model(path, with_pipeline(m, Pipeline(("cls", "mean"), 24, (Dense(2 * hidden, 8, True, "tanh"),), True)))
    return path


HEADS = ("mlm", "sop")


def run_forward(ops, tensors, config, ids, mask, segs, heads=HEADS, hidden_states=False):
    """forward() on `ops` over raw tensors, prepared as albert_ref.load prepares them."""
    from albert_ref import forward
    from albert_ref.ops import prepare_params
    return forward.forward(ops, prepare_params(ops, tensors), config, ids, mask, segs, heads=heads,
                           hidden_states=hidden_states)


def flip_byte(path, offset: int, mask: int) -> None:
    """XOR one byte of a file with `mask` (corruption tests)."""
    data = bytearray(Path(path).read_bytes())
    data[offset] ^= mask
    Path(path).write_bytes(bytes(data))


def smaps():
    """This process's mappings, from Linux's /proc/self/smaps: (start, end, path ("" for
    anonymous memory), {field: its values}) each, fields such as "Rss:" and "VmFlags:"."""
    mappings = []
    with open("/proc/self/smaps") as fh:
        for line in fh:
            head = line.split()
            if "-" in head[0] and len(head) >= 5:   # a mapping's first line
                start, end = (int(x, 16) for x in head[0].split("-"))
                mappings.append((start, end, " ".join(head[5:]), {}))
            elif mappings:
                mappings[-1][3][head[0]] = head[1:]
    return mappings
