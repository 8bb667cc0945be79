"""sentence-transformers ALBERT models: `albert-ref convert` + `albert-ref embed` give the
vectors SentenceTransformer.encode gives.

Small random-weight models are built with the sentence-transformers package itself (the
pooling modes, a combination, Dense with tanh and identity, Normalize, max_seq_length
below the longest text, safetensors and .bin, the legacy layout of the published
checkpoints), saved, converted and run on the same 56 texts. The tokenizer is the slow
AlbertTokenizer, whose behaviour the converted file records (see README).
"""
import json
import shutil

import numpy as np
import pytest

from peers import require_peers
from spm_util import train_spm

import albert_ref
import albert_ref.weights.convert
from albert_ref.cli import main
from albert_ref.weights.model_file import read_model

torch, transformers, sentence_transformers = require_peers("torch", "transformers", "sentence_transformers")
from sentence_transformers import SentenceTransformer  # noqa: E402
from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling, Transformer  # noqa: E402

MAX_SEQ_LENGTH = 24  # below the longest texts' token counts: they are truncated
_WORDS = "the of city music world in 1,999, zoë's café ``quoted'' naïve 北京 🙂 year team river".split()
TEXTS = (["", " ", ".", "a", "A", "Hello world.", "ÉCOLE", "x" * 60, "Zoë's café, naïve résumé!",
          "``Quoted'' text, and 'single' ones.", "In 1999, 12,500 people came; 3,000,000 did not.",
          "北京 東京 中文 日本語 한국어", "emoji 🙂🎉 here", "tab\tand\nnewline", "[MASK] and [CLS] typed in"]
         + [" ".join(_WORDS[(7 * i + k) % len(_WORDS)] for k in range(1 + i)) for i in range(41)])

# name: (pooling modes, Dense layers as (out_features, activation, bias), Normalize, weights format)
CASES = {
    "mean": (("mean",), [], False, "safetensors"),
    "cls-dense-tanh-normalize": (("cls",), [(12, torch.nn.Tanh(), True)], True, "bin"),
    "max-dense-identity": (("max",), [(20, torch.nn.Identity(), False)], False, "safetensors"),
    "mean-sqrt-len-normalize": (("mean_sqrt_len_tokens",), [], True, "safetensors"),
    "combined-two-dense": (("cls", "max", "mean"), [(40, torch.nn.Tanh(), True), (16, torch.nn.Identity(), True)],
                           True, "bin"),
}
HIDDEN = 32
pytestmark = pytest.mark.filterwarnings("ignore::albert_ref.encoder.TruncationWarning",
                                        "ignore::DeprecationWarning")


def albert_dir(path):
    """A random Hugging Face ALBERT with a slow AlbertTokenizer, weights large enough that
    attention and GELU are far from linear."""
    (path / "spiece.model").parent.mkdir(parents=True, exist_ok=True)
    (path / "spiece.model").write_bytes(train_spm())
    tok = transformers.AlbertTokenizer(str(path / "spiece.model"), do_lower_case=True, keep_accents=False)
    config = transformers.AlbertConfig(vocab_size=tok.vocab_size, embedding_size=16, hidden_size=HIDDEN,
                                       num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                       max_position_embeddings=64, hidden_act="gelu_new", initializer_range=0.3)
    torch.manual_seed(0)
    transformers.AlbertModel(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def build(tmp, modes, dense, normalize, fmt):
    torch.manual_seed(1)
    modules = [Transformer(str(albert_dir(tmp / "hf")), max_seq_length=MAX_SEQ_LENGTH,
                           processor_kwargs={"use_fast": False}), Pooling(HIDDEN, pooling_mode=modes)]
    width = len(modes) * HIDDEN
    for out, activation, bias in dense:
        layer = Dense(width, out, bias=bias, activation_function=activation)
        torch.nn.init.normal_(layer.linear.weight, std=1.5 / width ** 0.5)
        width = out
        modules.append(layer)
    if normalize:
        modules.append(Normalize())
    st = SentenceTransformer(modules=modules, device="cpu").eval()
    st.save(str(tmp / "st"), safe_serialization=fmt == "safetensors")
    return st, tmp / "st"


def embed_cli(tmp, model, *options):
    inputs = tmp / "texts.jsonl"
    inputs.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    out = tmp / f"vectors{len(list(tmp.glob('vectors*')))}.npy"
    assert main(["embed", "--model", str(model), "--input", str(inputs), "--output", str(out), *options]) == 0
    return np.load(out)


@pytest.fixture(scope="module", params=list(CASES))
def case(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(request.param)
    st, directory = build(tmp, *CASES[request.param])
    h5 = tmp / "model.h5"
    assert main(["convert", str(directory), str(h5)]) == 0
    with torch.no_grad():
        want = st.encode(TEXTS, batch_size=8, convert_to_numpy=True)
    return request.param, st, directory, h5, want


def cosines(a, b):
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_embed_matches_sentence_transformers(case, tmp_path, capsys):
    """Max abs difference at most 1e-5 relative to the largest component; cosine >= 0.99999."""
    name, st, _, h5, want = case
    got = embed_cli(tmp_path, h5)
    assert "texts were longer than max_seq_length 24" in capsys.readouterr().err  # truncation reported
    assert got.shape == want.shape and got.dtype == np.float32
    diff = np.abs(got - want).max()
    assert diff <= 1e-5 * np.abs(want).max(), (name, diff)
    assert cosines(got, want).min() >= 0.99999, name


def test_float64_path_matches_sentence_transformers_in_float64(case):
    """The NumPy float64 path against sentence-transformers in float64: equal up to the final
    rounding to float32 (2^-24 relative), so the pipeline's formulas are the same."""
    name, st, _, h5, _ = case
    st64 = SentenceTransformer(modules=list(st), device="cpu").eval().to(torch.float64)
    with torch.no_grad():
        want = st64.encode(TEXTS, batch_size=8, convert_to_numpy=True)
    got = albert_ref.Encoder(h5, backend="numpy").encode(TEXTS, batch_size=8)
    st.to(torch.float32)
    np.testing.assert_allclose(got, want, rtol=2 ** -23, atol=2 ** -23 * np.abs(want).max(), err_msg=name)


def test_file_records_pipeline_and_tokenizer(case, capsys):
    name, st, directory, h5, _ = case
    ids = st.tokenize(TEXTS)["input_ids"].numpy()
    batch = albert_ref.Encoder(h5).tokenizer.encode_batch(TEXTS, max_seq_length=MAX_SEQ_LENGTH)
    assert np.array_equal(batch.input_ids[:, :ids.shape[1]], ids) and batch.input_ids.shape == ids.shape
    m = read_model(h5)
    modes, dense, normalize, _ = CASES[name]
    p = m.pipeline
    assert (p.pooling, p.max_seq_length, p.normalize) == (modes, MAX_SEQ_LENGTH, normalize)
    assert [(d.out_features, d.bias) for d in p.dense] == [(out, bias) for out, _, bias in dense]
    assert m.tokenizer_options == {"flavour": "huggingface", "do_lower_case": True, "keep_accents": False,
                                   "remove_space": True}
    assert m.provenance["source_format"] == "sentence_transformers" and "modules.json" in m.provenance["sources"]
    assert main(["info", str(h5)]) == 0
    shown = capsys.readouterr().out
    assert f"pipeline: {p.describe()}" in shown and "huggingface preprocessing, lower-case True, keep accents False" in shown


def test_overrides_and_bits(case, tmp_path):
    """--pooling/--normalize/--max-seq-length override the pipeline; reference and cpu
    backends give the same bits through pooling and Dense, whatever the batch size."""
    name, _, _, h5, _ = case
    enc = albert_ref.Encoder(h5)
    ref = albert_ref.Encoder(h5, backend="reference").encode(TEXTS, batch_size=5)
    assert enc.encode(TEXTS, batch_size=1).tobytes() == ref.tobytes()
    modes = CASES[name][0]
    raw = embed_cli(tmp_path, h5, "--no-normalize", "--max-seq-length", "64", "--pooling", ",".join(modes))
    assert raw.tobytes() == enc.encode(TEXTS, normalize=False, max_seq_length=64, pooling=modes).tobytes()
    if not CASES[name][1]:  # no Dense: any other pooling fits
        other = embed_cli(tmp_path, h5, "--pooling", "pooled", "--no-normalize")
        assert other.tobytes() == enc.encode(TEXTS, pooling="pooled", normalize=False).tobytes()


def test_legacy_layout(tmp_path):
    """The layout of the published checkpoints (paraphrase-albert-small-v2): transformer in
    0_Transformer/ with sentence_bert_config.json's max_seq_length, pooling as boolean flags."""
    st, directory = build(tmp_path, ("cls", "mean"), [], True, "safetensors")
    legacy = tmp_path / "legacy"
    (legacy / "0_Transformer").mkdir(parents=True)
    for f in directory.iterdir():
        if f.is_file() and f.name not in ("modules.json", "README.md", "config_sentence_transformers.json"):
            shutil.copy(f, legacy / "0_Transformer" / f.name)
    shutil.copytree(directory / "1_Pooling", legacy / "1_Pooling")
    (legacy / "2_Normalize").mkdir()
    (legacy / "0_Transformer" / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": MAX_SEQ_LENGTH, "do_lower_case": False}))
    (legacy / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": HIDDEN, "pooling_mode_cls_token": True, "pooling_mode_mean_tokens": True,
         "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False}))
    (legacy / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "0_Transformer", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]))
    reloaded = SentenceTransformer(str(legacy), device="cpu", processor_kwargs={"use_fast": False})
    with torch.no_grad():
        want = reloaded.encode(TEXTS, convert_to_numpy=True)
    h5 = tmp_path / "legacy.h5"
    assert main(["convert", str(legacy), str(h5)]) == 0
    assert read_model(h5).pipeline.pooling == ("cls", "mean")
    got = albert_ref.Encoder(h5).encode(TEXTS)
    assert np.abs(got - want).max() <= 1e-5 and cosines(got, want).min() >= 0.99999


@pytest.mark.parametrize("change, match", [
    (lambda d: (d / "spiece.model").unlink(), "no tokenizer"),
    (lambda d: (d / "1_Pooling" / "config.json").write_text('{"embedding_dimension": 32, "pooling_mode": "lasttoken"}'),
     "lasttoken not supported"),
    (lambda d: (d / "1_Pooling" / "config.json").write_text('{"embedding_dimension": 16, "pooling_mode": "mean"}'),
     "hidden size is 32"),
    (lambda d: (d / "modules.json").write_text(json.dumps([{"idx": 0, "path": "", "type": "x.Transformer"},
                                                          {"idx": 1, "path": "1_Pooling", "type": "x.LayerNorm"}])),
     "x.LayerNorm is not supported"),
    (lambda d: (d / "modules.json").write_text(json.dumps([{"idx": 0, "path": "..", "type": "x.Transformer"}])),
     "leads outside the directory"),
    (lambda d: (d / "sentence_bert_config.json").write_text('{"max_seq_length": "long"}'),
     "max_seq_length must be an integer"),
    (lambda d: (d / "sentence_bert_config.json").write_text('[128]'), "must hold a JSON object"),
    (lambda d: (d / "sentence_bert_config.json").write_text("[" * 100_000), "not valid JSON"),
])
@pytest.mark.parametrize("case", ["mean"], indirect=True)
def test_refused_with_a_named_error(case, tmp_path, change, match):
    _, _, directory, _, _ = case
    copy = shutil.copytree(directory, tmp_path / "st")
    change(copy)
    with pytest.raises(albert_ref.AlbertRefError, match=match):
        albert_ref.weights.convert.convert(copy, tmp_path / "out.h5")
    assert not list(tmp_path.glob("*.h5*"))
