"""The TF variable names of an ALBERT model and the shape each must have.

Names follow google-research/albert modeling.py (and the TF-Hub modules): kernels are
stored [in, out] as TF keeps them.
"""
from __future__ import annotations

import math

from albert_ref.config import AlbertConfig

EMB = "bert/embeddings/"
MAPPING = "bert/encoder/embedding_hidden_mapping_in/"
POOLER = "bert/pooler/dense/"
MLM = "cls/predictions/"
SOP = "cls/seq_relationship/"


def block_prefix(group: int, inner: int) -> str:
    return f"bert/encoder/transformer/group_{group}/inner_group_{inner}/"


def encoder_shapes(config: AlbertConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor the encoder (embeddings, shared layers, pooler) needs."""
    E, H, I = config.embedding_size, config.hidden_size, config.intermediate_size
    shapes = {
        EMB + "word_embeddings": (config.vocab_size, E),
        EMB + "token_type_embeddings": (config.type_vocab_size, E),
        EMB + "position_embeddings": (config.max_position_embeddings, E),
        EMB + "LayerNorm/gamma": (E,),
        EMB + "LayerNorm/beta": (E,),
        POOLER + "kernel": (H, H),
        POOLER + "bias": (H,),
    }
    if config.project_embeddings:
        shapes[MAPPING + "kernel"] = (E, H)
        shapes[MAPPING + "bias"] = (H,)
    for g in config.used_groups:
        for i in range(config.inner_group_num):
            p = block_prefix(g, i)
            for proj in ("query", "key", "value"):
                shapes[f"{p}attention_1/self/{proj}/kernel"] = (H, H)
                shapes[f"{p}attention_1/self/{proj}/bias"] = (H,)
            shapes[p + "attention_1/output/dense/kernel"] = (H, H)
            shapes[p + "attention_1/output/dense/bias"] = (H,)
            shapes[p + "LayerNorm/gamma"] = (H,)
            shapes[p + "LayerNorm/beta"] = (H,)
            shapes[p + "ffn_1/intermediate/dense/kernel"] = (H, I)
            shapes[p + "ffn_1/intermediate/dense/bias"] = (I,)
            shapes[p + "ffn_1/intermediate/output/dense/kernel"] = (I, H)
            shapes[p + "ffn_1/intermediate/output/dense/bias"] = (H,)
            shapes[p + "LayerNorm_1/gamma"] = (H,)
            shapes[p + "LayerNorm_1/beta"] = (H,)
    return shapes


def num_parameters(config: AlbertConfig) -> int:
    """The encoder's parameter count (shared layers counted once, heads excluded)."""
    return sum(math.prod(shape) for shape in encoder_shapes(config).values())


def head_shapes(config: AlbertConfig) -> dict[str, dict[str, tuple[int, ...]]]:
    """The optional pretraining heads, each all-or-nothing: masked LM and sentence order."""
    E, H, V = config.embedding_size, config.hidden_size, config.vocab_size
    return {
        "mlm": {
            MLM + "transform/dense/kernel": (H, E),
            MLM + "transform/dense/bias": (E,),
            MLM + "transform/LayerNorm/gamma": (E,),
            MLM + "transform/LayerNorm/beta": (E,),
            MLM + "output_bias": (V,),
        },
        "sop": {
            SOP + "output_weights": (2, H),
            SOP + "output_bias": (2,),
        },
    }
