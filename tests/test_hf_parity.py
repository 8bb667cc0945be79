"""Hugging Face transformers' AlbertModel (PyTorch, CPU) as an independent implementation:
HF weights -> safetensors / .bin -> our converter -> .h5 -> our forward."""
import numpy as np
import pytest

from peers import require_peers
from albert_ref.model import load
from albert_ref.weights.convert import convert

require_peers()
import torch  # noqa: E402
import transformers  # noqa: E402

CONFIGS = {
    "tiny": dict(vocab_size=90, embedding_size=16, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                 intermediate_size=64, max_position_embeddings=48, hidden_act="gelu_new"),
    # Layer count not divisible by the group count; two blocks per layer; exact-erf GELU.
    "groups": dict(vocab_size=90, embedding_size=16, hidden_size=24, num_hidden_layers=5, num_hidden_groups=2,
                   inner_group_num=2, num_attention_heads=3, intermediate_size=40, max_position_embeddings=48,
                   hidden_act="gelu"),
    # The module card's albert_xlarge/2 shape (32 heads of 64).
    "xlarge": dict(vocab_size=30000, embedding_size=128, hidden_size=2048, num_hidden_layers=24,
                   num_attention_heads=32, intermediate_size=8192, max_position_embeddings=512, hidden_act="gelu_new"),
}


def hf_model(name, seed=0):
    cfg = transformers.AlbertConfig(**CONFIGS[name], hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                                    classifier_dropout_prob=0.0)
    torch.manual_seed(seed)
    model = transformers.AlbertModel(cfg).eval()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "LayerNorm" in pname or "layer_norm" in pname:
                p.copy_(1 + 0.3 * torch.randn_like(p) if pname.endswith("weight") else 0.2 * torch.randn_like(p))
            elif pname.endswith("bias"):
                p.copy_(0.2 * torch.randn_like(p))
            elif "embeddings" in pname:
                p.copy_(torch.randn_like(p))
            else:  # Linear [out, in]: wide enough that GELU and softmax are far from linear
                p.copy_(1.5 / p.shape[1] ** 0.5 * torch.randn_like(p))
    return model


def hf_outputs(model, ids, mask, segs, dtype):
    m = model.to(dtype)
    with torch.no_grad():
        r = m(torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long(),
              token_type_ids=torch.from_numpy(segs).long())
    model.float()
    return r.last_hidden_state.numpy().astype(np.float64), r.pooler_output.numpy().astype(np.float64)


def batch(vocab, lengths, seq_len, seed=1):
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, vocab, (len(lengths), seq_len)).astype(np.int32)
    mask = (np.arange(seq_len) < np.array(lengths)[:, None]).astype(np.int32)
    segs = ((np.arange(seq_len) >= np.array(lengths)[:, None] // 2) & (mask == 1)).astype(np.int32)
    return ids * mask, mask, segs


def max_err(a, b, mask):
    return float(np.abs(a - b)[mask.astype(bool)].max())


@pytest.fixture(scope="module", params=["tiny", "groups", "xlarge"])
def converted(request, tmp_path_factory):
    name = request.param
    model = hf_model(name)
    tmp = tmp_path_factory.mktemp(name)
    files = {}
    for fmt, safe in (("safetensors", True), ("bin", False)):
        if name == "xlarge" and fmt == "bin":
            continue  # the .bin reader is covered on the small configs; spare CI 500 MB of I/O
        src = tmp / fmt
        model.save_pretrained(src, safe_serialization=safe)
        files[fmt] = tmp / f"{fmt}.h5"
        convert(src, files[fmt])
    lengths = [12, 7] if name == "xlarge" else [CONFIGS[name]["max_position_embeddings"], 9, 30]
    inputs = batch(CONFIGS[name]["vocab_size"], lengths, max(lengths))
    return name, model, files, inputs


def test_float64_matches_huggingface(converted):
    name, model, files, (ids, mask, segs) = converted
    seq_hf, pooled_hf = hf_outputs(model, ids, mask, segs, torch.float64)
    for fmt, path in files.items():
        out = load(path, backend="numpy", dtype="float64")(ids, mask, segs)
        assert max_err(out["sequence_output"], seq_hf, mask) < 1e-9, fmt
        assert np.abs(out["pooled_output"] - pooled_hf).max() < 1e-9, fmt


def rms_err(out, ref, mask):
    """Root-mean-square error over the real positions' sequence_output and the pooled output."""
    real = mask.astype(bool)
    diffs = np.concatenate([(out[0] - ref[0])[real].ravel(), (out[1] - ref[1]).ravel()])
    return float(np.sqrt(np.mean(diffs ** 2)))


# The contract kernels must be at least as accurate as HF float32; NumPy float32 is plain
# BLAS like HF, so it only has to be of the same order.
FLOAT32_BACKENDS = {"numpy": 1.25, "cpu": 1.0}


@pytest.mark.parametrize("backend", FLOAT32_BACKENDS)
def test_float32_at_least_as_accurate_as_huggingface(converted, backend):
    """Error of our float32 against the float64 result, relative to HF float32's."""
    name, model, files, (ids, mask, segs) = converted
    path = files["safetensors"]
    ref = load(path, backend="numpy", dtype="float64")(ids, mask, segs)
    ref = ref["sequence_output"], ref["pooled_output"]
    hf_err = rms_err(hf_outputs(model, ids, mask, segs, torch.float32), ref, mask)
    out = load(path, backend=backend, dtype="float32")(ids, mask, segs)
    assert out["sequence_output"].dtype == np.float32
    ours = rms_err((out["sequence_output"], out["pooled_output"]), ref, mask)
    assert ours <= FLOAT32_BACKENDS[backend] * hf_err, (ours, hf_err)
