"""Random-weight ALBERT models for tests: statistics far from trivial, so that GELU,
softmax and LayerNorm all do real work."""
from __future__ import annotations

import numpy as np

from albert_ref.config import AlbertConfig
from albert_ref.weights.model_file import ModelFile
from albert_ref.weights.names import head_shapes, encoder_shapes


def random_tensor(rng, name, shape):
    if name.endswith("gamma"):
        return (1.0 + 0.3 * rng.standard_normal(shape)).astype(np.float32)
    if name.endswith(("beta", "bias")):
        return (0.2 * rng.standard_normal(shape)).astype(np.float32)
    if name.endswith("embeddings"):
        return rng.standard_normal(shape).astype(np.float32)
    # Kernels: fan-in scaled, 1.5x wider than Xavier so activations leave the linear regime.
    return (1.5 / np.sqrt(shape[0]) * rng.standard_normal(shape)).astype(np.float32)


def random_params(config: AlbertConfig, seed: int = 0, heads=()) -> dict[str, np.ndarray]:
    """A float32 tensor for every name the config needs (plus the named pretraining heads)."""
    rng = np.random.default_rng(seed)
    shapes = encoder_shapes(config)
    for head in heads:
        shapes.update(head_shapes(config)[head])
    return {name: random_tensor(rng, name, shape) for name, shape in sorted(shapes.items())}


def random_model_file(config: AlbertConfig, seed: int = 0, heads=(), spm_model=None, **options) -> ModelFile:
    return ModelFile(config, random_params(config, seed, heads), spm_model, options,
                     {"source_format": "random", "seed": seed})


TINY = dict(vocab_size=64, embedding_size=8, hidden_size=16, num_hidden_layers=3, num_attention_heads=4,
            intermediate_size=32, max_position_embeddings=40)


def tiny_config(**overrides) -> AlbertConfig:
    return AlbertConfig(**{**TINY, **overrides})


def random_inputs(config: AlbertConfig, lengths, seq_len=None, seed=0):
    """A padded batch: sequence b has lengths[b] real tokens, both segment ids used."""
    rng = np.random.default_rng(seed)
    seq_len = seq_len or max(lengths)
    ids = rng.integers(0, config.vocab_size, (len(lengths), seq_len), dtype=np.int32)
    mask = (np.arange(seq_len)[None, :] < np.asarray(lengths)[:, None]).astype(np.int32)
    segs = np.zeros_like(ids)
    for b, n in enumerate(lengths):
        segs[b, n // 2:n] = 1 if config.type_vocab_size > 1 else 0
    ids = np.where(mask == 1, ids, 0).astype(np.int32)
    return ids, mask, segs
