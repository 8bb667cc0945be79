"""Hypothesis strategies for ALBERT: valid configs, input batches and random models.

Needs hypothesis (the `test` extra: pip install albert-ref[test]); the rest of
albert_ref.testing does not. Every config drawn passes AlbertConfig.validate by
construction (heads divide the hidden size, groups <= layers), so a property test spends
its examples on the model rather than on rejected configs.
"""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from albert_ref.config import ACTIVATIONS, AlbertConfig
from albert_ref.testing.inputs import padded_batch
from albert_ref.weights.model_file import ModelFile
from albert_ref.weights.random_model import random_model_file

PADDING = ("end", "anywhere")


@st.composite
def configs(draw, max_hidden: int = 64, max_heads: int = 8, max_layers: int = 4, max_inner_groups: int = 2,
            max_vocab: int = 128, max_positions: int = 64, activations=ACTIVATIONS) -> AlbertConfig:
    """Small valid configs covering what ALBERT varies: head count and size, shared
    groups (layer count not a multiple of them included), inner groups, activations,
    embedding size equal to or apart from the hidden size, 1-3 token types."""
    heads = draw(st.integers(1, min(max_heads, max_hidden)))
    hidden = heads * draw(st.integers(1, max_hidden // heads))
    layers = draw(st.integers(1, max_layers))
    embedding = draw(st.one_of(st.just(hidden), st.integers(1, max_hidden)))
    return AlbertConfig(
        vocab_size=draw(st.integers(1, max_vocab)),
        embedding_size=embedding,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=draw(st.integers(1, 2 * max_hidden)),
        num_hidden_groups=draw(st.integers(1, layers)),
        inner_group_num=draw(st.integers(1, max_inner_groups)),
        hidden_act=draw(st.sampled_from(activations)),
        max_position_embeddings=draw(st.integers(1, max_positions)),
        type_vocab_size=draw(st.integers(1, 3)),
        project_embeddings=True if embedding != hidden else draw(st.booleans()),
    )


@st.composite
def input_batches(draw, config: AlbertConfig, max_batch: int = 4, max_seq_len: int | None = None,
                  padding=PADDING, empty_rows: bool = False, min_batch: int = 1):
    """(input_ids, input_mask, segment_ids) int32 [batch, seq] with seq up to
    max_position_embeddings (or max_seq_len). padding "end": each row real then padded;
    "anywhere": any mask. Ids anywhere in the vocab, padded positions included (a
    correct model ignores them). Segments: 0 then 1 at a drawn split of the real
    tokens ("end"), or any token type ("anywhere"). empty_rows: allow rows with no real
    token (the contract defines them; TF attends to every position there). min_batch:
    the fewest rows (2 for properties that compare a row alone with its batch)."""
    seq = draw(st.integers(1, min(max_seq_len or config.max_position_embeddings, config.max_position_embeddings)))
    batch = draw(st.integers(min_batch, max(min_batch, max_batch)))
    ids = draw(arrays(np.int32, (batch, seq), elements=st.integers(0, config.vocab_size - 1)))
    mode = draw(st.sampled_from(padding))
    if mode == "end":
        lengths = np.array(draw(st.lists(st.integers(0 if empty_rows else 1, seq), min_size=batch, max_size=batch)))
        splits = [draw(st.integers(0, n)) for n in lengths]
        ids, mask, segs = padded_batch(ids, lengths, splits, config.type_vocab_size, zero_padding=False)
    else:
        mask = draw(arrays(np.int32, (batch, seq), elements=st.integers(0, 1)))
        if not empty_rows:
            mask[np.arange(batch), draw(arrays(np.int64, batch, elements=st.integers(0, seq - 1)))] = 1
        segs = draw(arrays(np.int32, (batch, seq), elements=st.integers(0, config.type_vocab_size - 1)))
    return ids, mask, segs


def model_files(config: AlbertConfig, heads=()) -> st.SearchStrategy[ModelFile]:
    """Random-weight models (weights.random_model: LayerNorm gains 1 +- 0.3, biases 0.2,
    kernels 1.5x wider than Xavier, so GELU, softmax and LayerNorm all do real work)."""
    return st.integers(0, 2 ** 32 - 1).map(lambda seed: random_model_file(config, seed, heads))


@st.composite
def model_cases(draw, config_strategy=None, heads=(), **batch_options):
    """(ModelFile, (input_ids, input_mask, segment_ids)): a model and a batch for it."""
    config = draw(config_strategy if config_strategy is not None else configs())
    return draw(model_files(config, heads)), draw(input_batches(config, **batch_options))
