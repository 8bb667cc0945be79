"""Tokenizer: Hugging Face parity, the original algorithm on hand-derived cases,
invariants of encode/encode_batch, and bad input."""

import functools
import math

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from albert_ref.errors import InputError, TokenizerError
from albert_ref.tokenizer import Tokenizer
from peers import require_peers
from spm_util import handmade_spm, train_spm

# Text made of what ALBERT preprocessing treats specially, glued to arbitrary text.
FRAGMENTS = [
    "1,000", "12,500,", "9,", "1999,", "0,5", ",", ".", "``", "''", '"', "'",
    "Café", "naïve", "ÉCOLE", "Å", "ﬁ", "①", "x²", "İ", "ΟΔΟΣ", "ﬀ", "Ⅻ",
    "北京", "東京都", "한국어", "ひらがな", "🙂", "👍🏽", "the", "World",
    " ", "  ", "\t", "\n", "\r\n", "\u00a0", "\u3000", "\u2581", "\u200b",
    "[MASK]", "[CLS]", "[SEP]", "<PAD>", "<unk>", "[mask]",
]
TEXTS = st.one_of(
    st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=4)), max_size=12).map("".join),
    st.text(max_size=30),
)
DIGIT_PIECES = ["▁", "1", "0", "2", "5", ",", "▁1", "▁1,", "▁12,", "000", "000,", "500",
                "500,", "▁500", "x", "x,", "▁x"]


@pytest.fixture(scope="session")
def spm_model():
    return train_spm()


@pytest.fixture(scope="session")
def spm_path(spm_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("spm") / "test.model"
    path.write_bytes(spm_model)
    return path


@pytest.fixture(scope="session")
def original(spm_model):
    return Tokenizer(spm_model)


@pytest.fixture(scope="session")
def hf_factory():
    """(ours, Hugging Face's) slow AlbertTokenizer pair for a .model file and options."""
    (transformers,) = require_peers("transformers")  # skips only the parity tests

    @functools.lru_cache(maxsize=None)
    def make(path, do_lower_case=True, keep_accents=False, remove_space=True):
        options = dict(do_lower_case=do_lower_case, keep_accents=keep_accents, remove_space=remove_space)
        theirs = transformers.AlbertTokenizer(str(path), **options)
        return Tokenizer.from_file(path, flavour="huggingface", **options), theirs

    return make


# --- parity with Hugging Face's slow AlbertTokenizer --------------------------------

HF_OPTIONS = [
    dict(do_lower_case=True, keep_accents=False),
    dict(do_lower_case=True, keep_accents=True),
    dict(do_lower_case=False, keep_accents=False),
    dict(do_lower_case=False, keep_accents=True),
    dict(do_lower_case=True, keep_accents=False, remove_space=False),
]


@pytest.mark.parametrize("options", HF_OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
@settings(max_examples=200, deadline=None)
@given(text=TEXTS)
@example(text="")
@example(text=" \t\n\u00a0 ")
@example(text="``Héllo''  WORLD, it cost 1,000,000, or 12,500,")
@example(text="ΟΔΟΣ  ΟΣ")
@example(text="a  [MASK] b\t[SEP]<PAD>x [CLS]")
@example(text="a\x85[MASK]b")  # whitespace to str.rstrip, not to sentencepiece
def test_hf_parity_single(hf_factory, spm_path, options, text):
    ours, theirs = hf_factory(spm_path, **options)
    pieces = theirs.tokenize(text)
    ids = theirs.convert_tokens_to_ids(pieces)
    assert ours.tokenize(text) == pieces
    assert ours.convert_tokens_to_ids(pieces) == ids
    enc = ours.encode(text, max_seq_length=10_000)
    assert enc.pieces == ["[CLS]", *pieces, "[SEP]"]
    assert enc.input_ids == theirs.build_inputs_with_special_tokens(ids)
    assert enc.segment_ids == theirs.create_token_type_ids_from_sequences(ids)


@pytest.mark.parametrize("options", HF_OPTIONS[:2], ids=["strip_accents", "keep_accents"])
@settings(max_examples=100, deadline=None)
@given(a=TEXTS, b=TEXTS)
@example(a="1,000, people", b="")
def test_hf_parity_pair(hf_factory, spm_path, options, a, b):
    ours, theirs = hf_factory(spm_path, **options)
    pieces_a, pieces_b = theirs.tokenize(a), theirs.tokenize(b)
    ids_a, ids_b = theirs.convert_tokens_to_ids(pieces_a), theirs.convert_tokens_to_ids(pieces_b)
    enc = ours.encode(a, b, max_seq_length=10_000)
    assert enc.pieces == ["[CLS]", *pieces_a, "[SEP]", *pieces_b, "[SEP]"]
    assert enc.input_ids == theirs.build_inputs_with_special_tokens(ids_a, ids_b)
    assert enc.segment_ids == theirs.create_token_type_ids_from_sequences(ids_a, ids_b)
    assert enc.truncated == 0


def test_hf_parity_digit_comma_split(hf_factory, tmp_path):
    path = tmp_path / "digits.model"
    path.write_bytes(handmade_spm(DIGIT_PIECES))
    ours, theirs = hf_factory(path)
    text = "1,000, 12,500, x x,"
    assert ours.tokenize(text) == theirs.tokenize(text) == \
        ["▁1", ",", "000", ",", "▁1", "2", ",", "500", ",", "▁x", "▁", "x,"]


# --- the original algorithm, by hand ----------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("Héllo  WORLD", "hello world"),                     # NFKD, marks dropped, lower-cased
    ("  a\t\tb\n c\r\n\u00a0d\u3000e  ", "a b c d e"),   # str.split() whitespace collapsed
    ("``quoted''", "``quoted''"),                        # no quote replacement
    ("ﬁ ① x² Ⅻ", "fi 1 x2 xii"),                        # NFKD compatibility forms
    ("ÅNGSTRÖM naïve", "angstrom naive"),
    ("ΟΔΟΣ", "οδος"),                                    # str.lower of the whole text: final ς
    ("北京 🙂", "北京 🙂"),
    ("", ""),
])
def test_original_preprocess(original, text, expected):
    assert original.preprocess(text) == expected


def test_original_preprocess_options(spm_model):
    assert Tokenizer(spm_model, do_lower_case=False).preprocess("Héllo WORLD") == "Hello WORLD"
    assert Tokenizer(spm_model, remove_space=False).preprocess(" a\t b ") == " a\t b "


@pytest.mark.parametrize("options, text, expected", [
    ({}, "``quoted''", '"quoted"'),
    ({}, "Héllo  WORLD", "hello world"),
    ({"keep_accents": True}, "Héllo  ﬁ", "héllo ﬁ"),       # no NFKD at all
    ({"do_lower_case": False}, "``Héllo''", '"Hello"'),
    ({"remove_space": False}, " a\t ``b'' ", ' a\t "b" '),
])
def test_hf_preprocess(spm_model, options, text, expected):
    assert Tokenizer(spm_model, flavour="huggingface", **options).preprocess(text) == expected


def test_original_digit_comma_split():
    """A piece ending in digit + "," is re-encoded without the comma, then "," follows.

    The model segments the text as ▁1, | 000, | ▁12, | 500, | ▁x | ▁ | x, and encodes
    "1" as ▁1, "000" as ▁ 000, "12" as ▁1 2 and "500" as ▁500. The original keeps the
    "▁" that re-encoding puts before the word-internal "000" and "500" (its check
    compares text with bytes and never strips it); Hugging Face drops it.
    """
    tok = Tokenizer(handmade_spm(DIGIT_PIECES))
    assert tok.tokenize("1,000, 12,500, x x,") == \
        ["▁1", ",", "▁", "000", ",", "▁1", "2", ",", "▁500", ",", "▁x", "▁", "x,"]
    assert tok.tokenize("1,000") == ["▁1", ",", "000"]


def test_original_lowercase_and_specials(original):
    assert original.tokenize("ΟΔΟΣ Héllo") == original.tokenize("οδος hello")
    # Special-token strings are plain text to the original; Hugging Face keeps them.
    assert "[MASK]" not in original.tokenize("a [MASK] b")
    hf = Tokenizer(original.spm_model, flavour="huggingface")
    assert hf.tokenize("ΟΔΟΣ") == hf.tokenize("οδοσ")
    assert "[MASK]" in hf.tokenize("a [MASK] b")


def test_model_layout(original, spm_model, spm_path):
    assert (original.cls_id, original.sep_id) == (2, 3)
    assert original.convert_tokens_to_ids(["<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]"]) == [0, 1, 2, 3, 4]
    assert original.spm_model == spm_model
    assert 200 <= original.vocab_size <= 1000
    from_file = Tokenizer.from_file(spm_path)
    assert from_file.spm_model == spm_model
    assert from_file.vocab_size == original.vocab_size


def test_encode_layout_and_padding(original):
    enc = original.encode("hello world", "1,000 people")
    n_a = len(original.tokenize("hello world"))
    assert enc.pieces[0] == "[CLS]" and enc.pieces[n_a + 1] == "[SEP]" and enc.pieces[-1] == "[SEP]"
    assert enc.segment_ids == [0] * (n_a + 2) + [1] * (len(enc.pieces) - n_a - 2)
    # run_classifier builds a pair only when text_b has pieces; Hugging Face always.
    assert original.encode("a", "").pieces == original.encode("a").pieces
    assert original.encode("a", " \t").pieces.count("[SEP]") == 1
    hf = Tokenizer(original.spm_model, flavour="huggingface")
    assert hf.encode("a", "").pieces == ["[CLS]", *hf.tokenize("a"), "[SEP]", "[SEP]"]
    assert original.encode("").pieces == ["[CLS]", "[SEP]"]
    assert original.encode(b"caf\xc3\xa9").input_ids == original.encode("café").input_ids


def test_encode_batch(original):
    texts = ["hello world", ("1,000 people", "a"), b"caf\xc3\xa9", ["", "x"], ""]
    batch = original.encode_batch(texts, max_seq_length=6)
    encodings = [original.encode(*t, max_seq_length=6) if isinstance(t, (tuple, list))
                 else original.encode(t, max_seq_length=6) for t in texts]
    assert batch.lengths == [len(e.input_ids) for e in encodings]
    assert batch.truncated == [e.truncated for e in encodings]
    width = max(batch.lengths)
    for arr in (batch.input_ids, batch.input_mask, batch.segment_ids):
        assert arr.dtype == np.int32 and arr.shape == (len(texts), width)
    for row, (enc, n) in enumerate(zip(encodings, batch.lengths)):
        assert batch.input_ids[row].tolist() == enc.input_ids + [0] * (width - n)
        assert batch.segment_ids[row].tolist() == enc.segment_ids + [0] * (width - n)
        assert batch.input_mask[row].tolist() == [1] * n + [0] * (width - n)
    padded = original.encode_batch(texts, max_seq_length=6, pad_to=20)
    assert padded.input_ids.shape == (len(texts), 20)
    assert np.array_equal(padded.input_ids[:, :width], batch.input_ids)
    assert not padded.input_ids[:, width:].any() and not padded.input_mask[:, width:].any()
    assert original.encode_batch([]).input_ids.shape == (0, 0)


# --- invariants -------------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(a=TEXTS, b=st.none() | TEXTS, max_seq_length=st.integers(3, 40),
       flavour=st.sampled_from(["original", "huggingface"]))
def test_encode_invariants(spm_model, a, b, max_seq_length, flavour):
    tok = _tokenizer(spm_model, flavour)
    enc = tok.encode(a, b, max_seq_length=max_seq_length)
    ids = enc.input_ids
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert len(ids) == len(enc.pieces) == len(enc.segment_ids) <= max_seq_length
    assert ids[0] == tok.cls_id and ids[-1] == tok.sep_id
    if flavour == "original":  # Hugging Face also keeps a "[SEP]" typed in the text
        assert enc.pieces.count("[SEP]") in (1, 2)

    pieces_a = tok.tokenize(a)
    pieces_b = tok.tokenize(b) if b is not None else []
    pair = bool(pieces_b) or (b is not None and flavour == "huggingface")
    kept = len(ids) - (3 if pair else 2)
    assert kept + enc.truncated == len(pieces_a) + len(pieces_b)
    if not pair:
        assert enc.pieces[1:-1] == pieces_a[:max_seq_length - 2]
        return
    # Longest first, ties cut from B: A keeps min(len A, max(budget - len B, ceil(budget / 2))).
    budget = max_seq_length - 3
    keep_a = min(len(pieces_a), max(budget - len(pieces_b), math.ceil(budget / 2)))
    keep_b = kept - keep_a
    assert enc.pieces == ["[CLS]", *pieces_a[:keep_a], "[SEP]", *pieces_b[:keep_b], "[SEP]"]
    assert enc.segment_ids == [0] * (keep_a + 2) + [1] * (keep_b + 1)


@functools.lru_cache(maxsize=None)
def _tokenizer(spm_model, flavour):
    return Tokenizer(spm_model, flavour=flavour)


def test_truncation_examples(spm_model):
    tok = Tokenizer(handmade_spm(["▁", "a", "b", "▁a", "▁b"]))
    a, b = "a " * 6, "b " * 3  # 6 and 3 pieces
    cases = {  # max_seq_length: (pieces kept of A, of B)
        12: (6, 3), 11: (5, 3), 9: (3, 3), 8: (3, 2), 7: (2, 2), 4: (1, 0), 3: (0, 0)}
    for max_len, (keep_a, keep_b) in cases.items():
        enc = tok.encode(a, b, max_seq_length=max_len)
        assert enc.pieces == ["[CLS]", *["▁a"] * keep_a, "[SEP]", *["▁b"] * keep_b, "[SEP]"], max_len
        assert enc.truncated == 9 - keep_a - keep_b
    enc = tok.encode(a, max_seq_length=5)
    assert enc.pieces == ["[CLS]", "▁a", "▁a", "▁a", "[SEP]"] and enc.truncated == 3
    assert tok.encode(a, max_seq_length=2).pieces == ["[CLS]", "[SEP]"]


# --- bad input --------------------------------------------------------------------

def test_undecodable_bytes(original):
    with pytest.raises(TokenizerError, match=r"text_a is not valid UTF-8: byte 0xff at offset 2"):
        original.encode(b"ab\xffcd")
    with pytest.raises(TokenizerError, match=r"texts\[1\]\[1\] .*offset 1"):
        original.encode_batch(["ok", ("fine", b"a\xc3(")])
    with pytest.raises(TokenizerError, match="offset 0"):
        original.tokenize(b"\x80")
    with pytest.raises(TokenizerError, match="lone surrogate U\\+D800 at index 1"):
        original.encode("a\ud800")


@pytest.mark.parametrize("call, match", [
    (lambda t: t.tokenize(123), "text must be str or bytes, not int"),
    (lambda t: t.encode(None), "text_a must be str or bytes, not NoneType"),
    (lambda t: t.encode("a", 5), "text_b must be str or bytes, not int"),
    (lambda t: t.encode_batch("abc"), "not one text"),
    (lambda t: t.encode_batch(["a", 7]), r"texts\[1\] must be str or bytes"),
    (lambda t: t.encode_batch([("a", "b", "c")]), r"texts\[0\] must be a text or a \(text_a, text_b\) pair"),
    (lambda t: t.encode_batch(["a", "b c d"], pad_to=3), "pad_to is 3, shorter than the longest"),
    (lambda t: t.encode_batch(["a"], pad_to=2.5), "pad_to must be an int"),
    (lambda t: t.convert_tokens_to_ids([b"x"]), "pieces must be str"),
    (lambda t: t.encode("a", max_seq_length=1), "max_seq_length is 1, must be at least 2"),
    (lambda t: t.encode("a", "b", max_seq_length=2), "max_seq_length is 2, must be at least 3"),
    (lambda t: t.encode_batch([("a", "b")], max_seq_length=2), "must be at least 3"),
    (lambda t: t.encode("a", max_seq_length=8.0), "max_seq_length must be an int"),
    (lambda t: t.encode("a", max_seq_length=True), "max_seq_length must be an int"),
])
def test_bad_arguments(original, call, match):
    with pytest.raises(InputError, match=match):
        call(original)


@pytest.mark.parametrize("model, match", [
    (b"", "empty"),
    (b"\xff" * 10, "corrupt sentencepiece model"),
    (b"\n\x03abc", "corrupt sentencepiece model"),
    (lambda: train_spm()[:1000], "corrupt sentencepiece model"),
    (lambda: handmade_spm(["▁", "a"], specials=[("<unk>", 2)]), r"no \[CLS\] piece"),
    (lambda: handmade_spm(["▁", "a"], specials=[("<unk>", 2), ("[CLS]", 3)]), r"no \[SEP\] piece"),
])
def test_bad_model(model, match):
    with pytest.raises(TokenizerError, match=match):
        Tokenizer(model() if callable(model) else model)


def test_bad_options_and_files(spm_model, tmp_path):
    with pytest.raises(InputError, match="flavour"):
        Tokenizer(spm_model, flavour="hf")
    with pytest.raises(InputError, match="keep_accents"):
        Tokenizer(spm_model, keep_accents=True)
    with pytest.raises(InputError, match="must be the serialized model as bytes"):
        Tokenizer(str(tmp_path / "x.model"))
    with pytest.raises(TokenizerError, match="missing.model"):
        Tokenizer.from_file(tmp_path / "missing.model")
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"\xff" * 10)
    with pytest.raises(TokenizerError, match="bad.model: corrupt sentencepiece model"):
        Tokenizer.from_file(bad)
