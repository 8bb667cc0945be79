"""Directories with tokenizer.json and no spiece.model (as transformers 5 saves them): the
"huggingface-fast" flavour gives the ids of transformers' fast tokenizer.

Against the `tokenizers` pipeline itself: AlbertTokenizerFast (transformers 4) loaded from
tokenizer.json alone, and the same tokenizer.json in transformers 5's layout
(WhitespaceSplit before Metaspace, no space-run Replace) run by the `tokenizers` library;
against transformers 5 through a committed fixture (tests/fixtures/make_tokenizer_json_fixture.py).
Then a sentence-transformers model saved with the fast tokenizer only, converted and
embedded, against SentenceTransformer.encode.
"""
import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peers import require_peers
from spm_util import train_spm

import albert_ref
from albert_ref.cli import main
from albert_ref.errors import ConversionError
from albert_ref.tokenizer import Tokenizer
from albert_ref.weights.convert import convert
from albert_ref.weights.model_file import read_model
from albert_ref.weights.tokenizer_json import read_tokenizer_json

torch, transformers, tokenizers = require_peers("torch", "transformers", "tokenizers")

FIXTURE = Path(__file__).parent / "fixtures" / "tokenizer_json"
# Where the fast tokenizer differs from the slow one: whitespace at the ends, alone or in
# runs, digits before commas, special tokens typed in the text, unknown characters.
EXTRA_TEXTS = ["  ", " \t\n ", "a ", " a", "a  b", "end. ", "222 2222", "In 1999, 12,500 and 9,9,9,",
               "x[CLS]y", "x [MASK] y", "[MASK]", "<UNK> <unk>", "ΩΩΩ ΩΩ x", "ΣΑΣ", "ｸﾞ", "a\r\nb", "\u200b",
               "a\u0301\u0301 ﬁ\u0301", "İstanbul", "tab\there", "x\u0600a \U0001F1E6\U0001F1E6 a\u200db"]


def texts():
    from test_st_parity import TEXTS  # the sentence-transformers parity texts, 56 of them
    return TEXTS + EXTRA_TEXTS


def save_fast(path, **options):
    """A transformers-4 AlbertTokenizerFast saved, then its spiece.model deleted."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "spiece.model").write_bytes(train_spm())
    transformers.AlbertTokenizerFast(vocab_file=str(path / "spiece.model"), **options).save_pretrained(path)
    (path / "spiece.model").unlink()
    return path


def ours(directory):
    proto, options = read_tokenizer_json(directory / "tokenizer.json",
                                         json.loads((directory / "tokenizer.json").read_text()))
    return Tokenizer(proto, **options), options


def v5_layout(data):
    """tokenizer.json as transformers 5 writes it: WhitespaceSplit before the Metaspace and
    no Replace of space runs."""
    data = copy.deepcopy(data)
    data["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [{"type": "WhitespaceSplit"}, data["pre_tokenizer"]]}
    data["normalizer"]["normalizers"] = data["normalizer"]["normalizers"][:-1]
    return data


VARIANTS = {"uncased": {"do_lower_case": True, "keep_accents": False},
            "cased-accents": {"do_lower_case": False, "keep_accents": True}}


@pytest.fixture(scope="module", params=list(VARIANTS))
def fast_dir(request, tmp_path_factory):
    return request.param, save_fast(tmp_path_factory.mktemp(request.param), **VARIANTS[request.param])


def test_ids_match_fast_tokenizer(fast_dir):
    name, directory = fast_dir
    hf = transformers.AlbertTokenizerFast.from_pretrained(directory)
    tok, options = ours(directory)
    assert options == {"flavour": "huggingface-fast", **VARIANTS[name], "remove_space": False}
    for text in texts():
        assert tok.encode(text).input_ids == hf(text)["input_ids"], (name, text)
    pairs = [("first text", "second"), ("a ", ""), ("[MASK] x", " y 1,999,")]
    words = "the city music world 1,999, café year team river zoë's house album".split()
    pairs += [(" ".join(words[:la]), " ".join(words[::-1][:lb])) for la in (0, 3, 9) for lb in (1, 3, 4, 12)]
    for a, b in pairs:
        for max_len in (4, 7, 8, 64):  # truncation: longest first, as `tokenizers` splits the budget
            enc = tok.encode(a, b, max_seq_length=max_len)
            want = hf(a, b, truncation=True, max_length=max_len)
            assert (enc.input_ids, enc.segment_ids) == (want["input_ids"], want["token_type_ids"]), (a, b, max_len)


def test_ids_match_transformers_5_layout(fast_dir, tmp_path):
    name, directory = fast_dir
    data = v5_layout(json.loads((directory / "tokenizer.json").read_text()))
    hf = tokenizers.Tokenizer.from_str(json.dumps(data))
    proto, options = read_tokenizer_json(directory / "tokenizer.json", data)
    assert options["remove_space"] is True
    tok = Tokenizer(proto, **options)
    for text in texts():
        assert tok.encode(text).input_ids == hf.encode(text).ids, (name, text)


pytestmark = pytest.mark.filterwarnings("ignore::albert_ref.encoder.TruncationWarning")

_ALPHABET = st.one_of(
    st.characters(blacklist_categories=("Cs",)),
    st.sampled_from(list(" \t\n\r\u00a0\u3000,.0123456789`'\"") + [
        "[CLS]", "[MASK]", "<unk>", "[SEP]", "``", "''", "\u0301", "\u1100", "\u1161", "\u11a8", "\ud55c",
        "\U0001F1E6", "\u200d", "\u200c", "\u0600", "\u0e33", "\u0903", "\u093e", "\u0308", "\u3099", "ｸ",
        "\U0001F3FB", "①", "ﬁ", "Σ", "İ", "the", "city", "9,", "00"]),
    # short grapheme clusters: a base the charsmap may map, then marks or joiners
    st.tuples(st.sampled_from(["a", "e", "ﬁ", "①", "ｸ", "\r", "\u0600", "\u1100"]),
              st.lists(st.sampled_from(["\u0301", "\u0308", "\u093e", "\u3099", "\u200d", "\n", "\U0001F3FB"]),
                       min_size=1, max_size=2)).map(lambda t: t[0] + "".join(t[1])))


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(text=st.lists(_ALPHABET, max_size=20).map("".join), variant=st.sampled_from(list(VARIANTS)),
       layout=st.sampled_from(["v4", "v5"]))
def test_random_texts(text, variant, layout, tmp_path_factory):
    """Any text, both layouts, with and without accents kept (where grapheme clusters of
    base and marks reach the charsmap whole)."""
    tok, hf = _random_pair(variant, layout, tmp_path_factory)
    assert tok.encode(text).input_ids == hf.encode(text).ids


_PAIRS = {}


def _random_pair(variant, layout, tmp_path_factory):
    if (variant, layout) not in _PAIRS:
        directory = save_fast(tmp_path_factory.mktemp("random"), **VARIANTS[variant])
        data = json.loads((directory / "tokenizer.json").read_text())
        data = v5_layout(data) if layout == "v5" else data
        proto, options = read_tokenizer_json(directory / "tokenizer.json", data)
        _PAIRS[variant, layout] = Tokenizer(proto, **options), tokenizers.Tokenizer.from_str(json.dumps(data))
    return _PAIRS[variant, layout]


def test_transformers_5_fixture():
    """ids transformers 5.23 gave (recorded by the fixture script) for a tokenizer it saved."""
    expected = json.loads((FIXTURE / "ids.json").read_text())
    tok, options = ours(FIXTURE)
    assert options["flavour"] == "huggingface-fast" and options["remove_space"] is True
    assert expected["transformers"].startswith("5.")
    for text, ids in expected["ids"]:
        assert tok.encode(text).input_ids == ids, text


# -- errors ----------------------------------------------------------------------------------------

def _edit(path, value):
    def change(data):
        *keys, last = path
        for key in keys:
            data = data[key]
        data[last] = value
    return change


@pytest.mark.parametrize("change, match", [
    (_edit(["model", "type"], "BPE"), "model type 'BPE' is not supported"),
    (_edit(["model", "byte_fallback"], True), "byte_fallback is not supported"),
    (_edit(["model", "unk_id"], 10 ** 6), "unk_id must be the index"),
    (_edit(["model", "vocab", 7], ["x", "high"]), r"vocab\[7\] is not"),
    (_edit(["model", "vocab", 8], ["<unk>", -1.0]), "the piece '<unk>' twice"),
    (_edit(["normalizer", "normalizers", 2], {"type": "NFC"}), "normalizer step {'type': 'NFC'} is not supported"),
    (_edit(["normalizer"], {"type": "Lowercase"}), "normalizer {'type': 'Lowercase'} is not supported"),
    (_edit(["normalizer", "normalizers", -2, "precompiled_charsmap"], "!!"), "not non-empty base64"),
    (_edit(["normalizer", "normalizers", -2, "precompiled_charsmap"], "AAAA"), "charsmap of 3 bytes: too short"),
    (_edit(["normalizer", "normalizers", -1, "content"], "_"), r"'content': '_'} is not supported here"),
    (_edit(["pre_tokenizer", "prepend_scheme"], "first"), "pre_tokenizer .* is not supported"),
    (_edit(["pre_tokenizer"], {"type": "ByteLevel"}), "pre_tokenizer .* is not supported"),
    (_edit(["added_tokens", 4, "lstrip"], False), "added token '\\[MASK\\]'"),
    (lambda d: d["added_tokens"].append({"id": 5, "content": "<new>"}), "added token '<new>' is not supported"),
    (lambda d: d["added_tokens"].pop(0), "added_tokens lacks <pad>"),
    (_edit(["post_processor"], None), "post_processor None is not supported"),
])
def test_unsupported_tokenizer_json_is_refused(fast_dir, change, match):
    _, directory = fast_dir
    data = json.loads((directory / "tokenizer.json").read_text())
    change(data)
    with pytest.raises(ConversionError, match=match):
        read_tokenizer_json(directory / "tokenizer.json", data)


# -- a sentence-transformers model with the fast tokenizer only -------------------------------------

@pytest.fixture(scope="module")
def st_fast(tmp_path_factory):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from test_st_parity import HIDDEN, MAX_SEQ_LENGTH, albert_dir

    tmp = tmp_path_factory.mktemp("st_fast")
    hf = albert_dir(tmp / "hf")
    (hf / "tokenizer_config.json").unlink()  # the slow tokenizer's; the fast one is saved below
    transformers.AlbertTokenizerFast(vocab_file=str(hf / "spiece.model")).save_pretrained(hf)
    torch.manual_seed(1)
    st_model = SentenceTransformer(modules=[Transformer(str(hf), max_seq_length=MAX_SEQ_LENGTH),
                                            Pooling(HIDDEN, pooling_mode="mean")], device="cpu").eval()
    st_model.save(str(tmp / "st"))
    (tmp / "st" / "spiece.model").unlink()
    return SentenceTransformer(str(tmp / "st"), device="cpu").eval(), tmp / "st"


def test_sentence_transformers_fast_only(st_fast, tmp_path, capsys):
    """Converted without spiece.model: ids equal to the model's own tokenizer's, vectors
    within test_st_parity's tolerance, the flavour recorded, shown and digested."""
    from test_st_parity import cosines
    reloaded, directory = st_fast
    assert not (directory / "spiece.model").exists()
    h5 = tmp_path / "fast.h5"
    assert main(["convert", str(directory), str(h5)]) == 0
    m = read_model(h5)
    assert m.tokenizer_options == {"flavour": "huggingface-fast", "do_lower_case": True, "keep_accents": False,
                                   "remove_space": False}
    assert "tokenizer.json" in m.provenance["sources"]
    all_texts = texts()
    ids = reloaded.tokenize(all_texts)["input_ids"].numpy()
    enc = albert_ref.Encoder(h5)
    batch = enc.tokenizer.encode_batch(all_texts, max_seq_length=m.pipeline.max_seq_length)
    assert batch.input_ids.shape == ids.shape and np.array_equal(batch.input_ids, ids)
    with torch.no_grad():
        want = reloaded.encode(all_texts, batch_size=8, convert_to_numpy=True)
    got = enc.encode(all_texts)
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max() and cosines(got, want).min() >= 0.99999
    assert main(["info", str(h5)]) == 0
    assert "huggingface-fast preprocessing" in capsys.readouterr().out
    assert main(["tokenize", str(h5), "--json", "x [MASK] y "]) == 0
    assert json.loads(capsys.readouterr().out)["input_ids"] == reloaded.tokenize(["x [MASK] y "])["input_ids"][0].tolist()
    # The flavour is part of the digest: the same file with the slow flavour digests differently.
    slow = tmp_path / "slow.h5"
    shutil.copytree(directory, tmp_path / "with_spm")
    (tmp_path / "with_spm" / "spiece.model").write_bytes(train_spm())
    convert(tmp_path / "with_spm", slow)
    assert read_model(slow).tokenizer_options["flavour"] == "huggingface"
    assert read_model(slow).digest != m.digest


def test_broken_tokenizer_json_leaves_no_file(st_fast, tmp_path):
    _, directory = st_fast
    copy_dir = shutil.copytree(directory, tmp_path / "st")
    (copy_dir / "tokenizer.json").write_text('{"model": ')
    with pytest.raises(ConversionError, match="tokenizer.json is not valid JSON"):
        convert(copy_dir, tmp_path / "out.h5")
    (copy_dir / "tokenizer.json").unlink()
    with pytest.raises(ConversionError, match="no tokenizer"):
        convert(copy_dir, tmp_path / "out.h5")
    assert not list(tmp_path.glob("*.h5*"))


def test_huggingface_directory_and_config_agreement(st_fast, tmp_path):
    """A plain Hugging Face directory with tokenizer.json only gets the same flavour;
    tokenizer_config.json contradicting tokenizer.json's normalizer is refused."""
    from albert_ref.weights.hf_source import read_huggingface
    _, directory = st_fast
    hf_dir = shutil.copytree(directory, tmp_path / "hf", ignore=shutil.ignore_patterns("modules.json", "1_Pooling"))
    assert convert(hf_dir, tmp_path / "hf.h5").tokenizer_options["flavour"] == "huggingface-fast"
    config = json.loads((hf_dir / "tokenizer_config.json").read_text())
    (hf_dir / "tokenizer_config.json").write_text(json.dumps({**config, "do_lower_case": False}))
    with pytest.raises(ConversionError, match="do_lower_case is False, but tokenizer.json's normalizer does lower-case"):
        read_huggingface(hf_dir)
