"""The ALBERT forward pass (Lan et al., 2019), written once over a backend's ops.

Every backend (float64/float32 NumPy, the reference kernels, the fast CPU kernels)
supplies the same handful of ops; this module only says how they compose, in the order
google-research/albert modeling.py computes them. `params` maps TF variable names to
whatever the backend prepared from them (e.g. packed GEMM panels).

Shapes in the comments: B batch, S (padded) sequence length, E embedding_size, H
hidden_size, I intermediate_size, V vocab_size; dense kernels are [in, out], as TF stores them.
"""
from __future__ import annotations

import numpy as np

from albert_ref.config import AlbertConfig
from albert_ref.weights.names import EMB, MAPPING, MLM, POOLER, SOP, block_prefix

# The heads multiply by transposes of stored tensors (the MLM decoder reuses the word
# embeddings); those copies are derived once, under these names, by with_head_decoders.
MLM_DECODER = MLM + "decoder/kernel"
SOP_DECODER = SOP + "output_weights_t"


def with_head_decoders(tensors: dict) -> dict:
    """`tensors` plus the transposed copies the pretraining heads present need."""
    out = dict(tensors)
    if EMB + "word_embeddings" in out and MLM + "output_bias" in out:
        out[MLM_DECODER] = np.ascontiguousarray(out[EMB + "word_embeddings"].T)
    if SOP + "output_weights" in out:
        out[SOP_DECODER] = np.ascontiguousarray(out[SOP + "output_weights"].T)
    return out


def is_dense_kernel(name: str) -> bool:
    """Whether params[name] is used as a [K, N] dense kernel (backends pack these)."""
    return name.endswith("kernel") or name == SOP_DECODER


def embeddings(ops, params, config: AlbertConfig, input_ids, segment_ids):
    """(word + token type) + position embeddings, LayerNorm, then projection to hidden size."""
    x = ops.embed(input_ids, segment_ids, params[EMB + "word_embeddings"],  # [B, S] ids -> [B, S, E]
                  params[EMB + "token_type_embeddings"], params[EMB + "position_embeddings"])
    x = ops.layer_norm(x, None, params[EMB + "LayerNorm/gamma"], params[EMB + "LayerNorm/beta"],
                       config.layer_norm_eps)  # [B, S, E] -> [B, S, E]
    if config.project_embeddings:
        x = ops.dense(x, params[MAPPING + "kernel"], params[MAPPING + "bias"])  # [B, S, E] -> [B, S, H]
    return x


def self_attention(ops, params, prefix: str, config: AlbertConfig, x, input_mask):
    """Multi-head scaled dot-product attention over the real keys, then the output projection."""
    p = prefix + "attention_1/"
    q, k, v = (ops.dense(x, params[f"{p}self/{n}/kernel"], params[f"{p}self/{n}/bias"])
               for n in ("query", "key", "value"))  # [B, S, H] -> 3 x [B, S, H]
    context = ops.attention(q, k, v, input_mask, config.num_attention_heads)  # -> [B, S, H], heads side by side
    del q, k, v  # dead: a backend may reuse their memory for the output projection
    return ops.dense(context, params[p + "output/dense/kernel"], params[p + "output/dense/bias"])  # [B, S, H]


def feed_forward(ops, params, prefix: str, config: AlbertConfig, x):
    """dense + activation up to the intermediate size, then back down. A backend with
    `ffn_rows` runs it on blocks of at most that many of the B * S rows, so that the
    intermediate, 4 times the hidden state (xlarge, 32 x 128 tokens: 128 MB), is never
    whole; each row's result is the same whichever block computes it."""
    p = prefix + "ffn_1/intermediate/"
    up = params[p + "dense/kernel"], params[p + "dense/bias"], config.hidden_act
    down = params[p + "output/dense/kernel"], params[p + "output/dense/bias"]
    B, S, H = x.shape
    blocks = row_blocks(B * S, getattr(ops, "ffn_rows", None))
    if len(blocks) == 1:
        return ops.dense(ops.dense(x, *up), *down)  # [B, S, H] -> [B, S, I] -> [B, S, H]
    rows, out = x.reshape(B * S, H), ops.empty((B * S, H))
    for r0, r1 in blocks:
        ops.dense(ops.dense(rows[r0:r1], *up), *down, out=out[r0:r1])
    return out.reshape(B, S, H)


def row_blocks(n: int, most: int | None) -> list[tuple[int, int]]:
    """[r0, r1) blocks covering n rows: as few as blocks of at most `most` rows allow (one
    if None), near-equal, and of a multiple of 16 rows but the last, where `most` leaves
    room, so that no block but the last ends in a partial micro-tile (MR is 4 in every variant)."""
    if not most or n <= most:
        return [(0, n)]
    size = -(-n // -(-n // most))
    up16 = -(-size // 16) * 16
    if up16 <= most:
        size = up16
    return [(r0, min(n, r0 + size)) for r0 in range(0, n, size)]


def transformer_block(ops, params, prefix: str, config: AlbertConfig, x, input_mask):
    """One attention + FFN block with post-residual LayerNorms."""
    eps = config.layer_norm_eps  # every tensor here is [B, S, H]
    a = ops.layer_norm(self_attention(ops, params, prefix, config, x, input_mask), x,
                       params[prefix + "LayerNorm/gamma"], params[prefix + "LayerNorm/beta"], eps)
    f = feed_forward(ops, params, prefix, config, a)
    return ops.layer_norm(f, a, params[prefix + "LayerNorm_1/gamma"], params[prefix + "LayerNorm_1/beta"], eps)


def transformer_stack(ops, params, config: AlbertConfig, x, input_mask, keep_hidden_states=False):
    """num_hidden_layers layers; layer i runs group int(i / L * G)'s inner_group_num blocks.
    [B, S, H] -> [B, S, H] (and, if kept, the L + 1 hidden states, the input first)."""
    hidden_states = [x] if keep_hidden_states else None
    for layer in range(config.num_hidden_layers):
        group = config.group_of_layer(layer)
        for inner in range(config.inner_group_num):
            x = transformer_block(ops, params, block_prefix(group, inner), config, x, input_mask)
        if keep_hidden_states:
            hidden_states.append(x)
    return x, hidden_states


def pooler(ops, params, sequence_output):
    """tanh(dense(first token)): [B, S, H] -> [B, H]."""
    return ops.dense(sequence_output[:, 0], params[POOLER + "kernel"], params[POOLER + "bias"], "tanh")


def masked_lm_logits(ops, params, config: AlbertConfig, sequence_output):
    """cls/predictions: dense + activation, LayerNorm, then logits against the word embeddings."""
    p = MLM + "transform/"
    h = ops.dense(sequence_output, params[p + "dense/kernel"], params[p + "dense/bias"],
                  config.hidden_act)  # [B, S, H] -> [B, S, E]
    h = ops.layer_norm(h, None, params[p + "LayerNorm/gamma"], params[p + "LayerNorm/beta"], config.layer_norm_eps)
    return ops.dense(h, params[MLM_DECODER], params[MLM + "output_bias"])  # [B, S, E] -> [B, S, V]


def sentence_order_logits(ops, params, pooled_output):
    """cls/seq_relationship: pooled @ output_weights^T + output_bias: [B, H] -> [B, 2]."""
    return ops.dense(pooled_output, params[SOP_DECODER], params[SOP + "output_bias"])


def forward(ops, params, config: AlbertConfig, input_ids, input_mask, segment_ids, *,
            hidden_states=False, heads=()):
    """Run the model; returns sequence_output, pooled_output and whatever else was asked for.

    heads: any of "mlm", "sop" (the file must have them).
    """
    with ops.workspace():  # a backend may reuse the buffers of this pass's dead activations
        x = embeddings(ops, params, config, input_ids, segment_ids)  # [B, S] -> [B, S, H]
        sequence_output, states = transformer_stack(ops, params, config, x, input_mask, hidden_states)
        out = {"sequence_output": sequence_output, "pooled_output": pooler(ops, params, sequence_output)}
        if hidden_states:
            out["hidden_states"] = states
        if "mlm" in heads:
            out["mlm_logits"] = masked_lm_logits(ops, params, config, sequence_output)
        if "sop" in heads:
            out["sop_logits"] = sentence_order_logits(ops, params, out["pooled_output"])
    return out
