"""Random-weight ALBERT models with statistics far from trivial, so that GELU, softmax
and LayerNorm all do real work: for tests, benchmarks and the bundled demo model."""
from __future__ import annotations

import numpy as np

from albert_ref.config import AlbertConfig
from albert_ref.weights.model_file import ModelFile
from albert_ref.weights.names import encoder_shapes, head_shapes


def random_tensor(rng: np.random.Generator, name: str, shape) -> np.ndarray:
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


def random_model_file(config: AlbertConfig, seed: int = 0, heads=(), spm_model=None, **tokenizer_options) -> ModelFile:
    return ModelFile(config, random_params(config, seed, heads), spm_model, tokenizer_options,
                     {"source_format": "random", "seed": seed})
