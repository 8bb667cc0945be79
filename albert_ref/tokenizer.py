"""Text -> ALBERT inputs: preprocessing, sentencepiece pieces, ids, [CLS]/[SEP] layout.

Two flavours, each reproducing its source exactly:

- "original" (default): google-research/albert `tokenization.preprocess_text` followed
  by `encode_pieces`, as `classifier_utils` feeds `FullTokenizer.tokenize`.
- "huggingface": transformers' slow `AlbertTokenizer.tokenize`, which also turns ``
  and '' into '"', can keep accents, and never splits its special-token strings.
- "huggingface-fast": transformers' fast tokenizer, the `tokenizers` pipeline of a
  tokenizer.json (hf_fast.py) over its Unigram vocabulary, which is stored as a
  sentencepiece model; the only tokenizer of directories saved by transformers 5. remove_space
  says whether whitespace splits words first (transformers 5's layout) or runs of spaces
  only collapse to one "▁" (transformers 4's AlbertConverter).

Truncation, layout and padding follow the original `convert_single_example`.
"""

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import hf_fast, spm_proto
from .errors import InputError, TokenizerError

FLAVOURS = ("original", "huggingface", "huggingface-fast")
# The tokenizer options and their defaults (google-research/albert's preprocessing, uncased):
# the one definition that model files, converters and Tokenizer() use.
DEFAULT_OPTIONS = {"flavour": "original", "do_lower_case": True, "keep_accents": False, "remove_space": True}
CLS, SEP = "[CLS]", "[SEP]"
_UNDERLINE = "\u2581"  # sentencepiece's word-start marker

# The special tokens of Hugging Face's AlbertTokenizer (the fast one's too, hf_fast.SPECIALS).
# Its tokenize() neither lower-cases them nor splits them into pieces, wherever they occur.
_HF_SPECIALS_RE = "|".join(map(re.escape, hf_fast.SPECIALS))
_HF_LOWER = re.compile(f"({_HF_SPECIALS_RE})|(.)", re.DOTALL)
_HF_SPLIT = re.compile(f"({_HF_SPECIALS_RE})")
# AddedToken(lstrip=True): it eats the whitespace before it
_HF_LSTRIP = next(token for token, lstrip in hf_fast.SPECIALS.items() if lstrip)


def check_options(options) -> dict:
    """`options` when it holds exactly the tokenizer options, each of a known value
    (the rules a model file's stored options and Tokenizer() both obey); InputError
    naming the first that does not."""
    if not isinstance(options, dict) or set(options) != set(DEFAULT_OPTIONS):
        unknown = sorted(map(str, set(options) - set(DEFAULT_OPTIONS))) if isinstance(options, dict) else []
        raise InputError(f"tokenizer options must be an object with exactly {', '.join(sorted(DEFAULT_OPTIONS))}"
                         + (f"; unknown: {', '.join(unknown)}" if unknown else ""))
    if options["flavour"] not in FLAVOURS:
        raise InputError(f"tokenizer option flavour {options['flavour']!r} is not one of {', '.join(FLAVOURS)}")
    for name in ("do_lower_case", "keep_accents", "remove_space"):
        if not isinstance(options[name], bool):
            raise InputError(f"tokenizer option {name} must be true or false, got {options[name]!r}")
    if options["keep_accents"] and options["flavour"] == "original":
        raise InputError("tokenizer option keep_accents exists only in the Hugging Face flavours; "
                         "the original always strips accents")
    return options


@dataclass(frozen=True)
class Encoding:
    """One encoded text or text pair, unpadded."""

    pieces: list  # including [CLS] and [SEP]
    input_ids: list
    segment_ids: list
    truncated: int  # word pieces dropped to fit max_seq_length


@dataclass(frozen=True)
class Batch:
    """Encoded texts padded with zeros (id, mask and segment) as run_classifier pads."""

    input_ids: np.ndarray  # int32 [n, L]
    input_mask: np.ndarray  # int32 [n, L], 1 at real tokens
    segment_ids: np.ndarray  # int32 [n, L]
    truncated: list  # per text
    lengths: list  # per text, tokens before padding


class Tokenizer:
    """ALBERT tokenizer over a serialized sentencepiece model."""

    def __init__(self, spm_model, *, do_lower_case=DEFAULT_OPTIONS["do_lower_case"],
                 flavour=DEFAULT_OPTIONS["flavour"], keep_accents=DEFAULT_OPTIONS["keep_accents"],
                 remove_space=DEFAULT_OPTIONS["remove_space"]):
        check_options({"flavour": flavour, "do_lower_case": bool(do_lower_case), "keep_accents": bool(keep_accents),
                       "remove_space": bool(remove_space)})
        if not isinstance(spm_model, (bytes, bytearray, memoryview)):
            raise InputError(f"spm_model must be the serialized model as bytes, "
                             f"not {type(spm_model).__name__}")
        self.spm_model = bytes(spm_model)
        if not self.spm_model:
            raise TokenizerError("sentencepiece model is empty (0 bytes)")
        try:
            import sentencepiece   # here, not at import: reading a model file needs only the options
            self._sp = sentencepiece.SentencePieceProcessor(model_proto=self.spm_model)
        except RuntimeError as e:
            raise TokenizerError(f"corrupt sentencepiece model "
                                 f"({len(self.spm_model)} bytes): {e}") from e
        self.vocab_size = self._sp.GetPieceSize()
        self.flavour = flavour
        self.do_lower_case = bool(do_lower_case)
        self.keep_accents = bool(keep_accents)
        self.remove_space = bool(remove_space)
        if flavour == "huggingface-fast":
            self._init_fast()
        self.cls_id = self._special_id(CLS)
        self.sep_id = self._special_id(SEP)

    def _init_fast(self):
        """The fast flavour's charsmap and Unigram segmenter, from the stored model."""
        charsmap = spm_proto.normalizer_charsmap(self.spm_model)
        self._charsmap = hf_fast.Charsmap(charsmap) if charsmap else None
        sp = self._sp
        self._unigram = hf_fast.Unigram([(sp.IdToPiece(i), sp.GetScore(i)) for i in range(self.vocab_size)],
                                        sp.unk_id())

    @classmethod
    def from_file(cls, path, **options):
        """Tokenizer from a .model file (e.g. a TF-Hub module's assets/30k-clean.model)."""
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            raise TokenizerError(f"cannot read sentencepiece model {path}: {e.strerror}") from e
        try:
            return cls(data, **options)
        except TokenizerError as e:
            raise TokenizerError(f"{path}: {e}") from e

    def _special_id(self, piece):
        id_ = self._sp.PieceToId(piece)
        if self._sp.IdToPiece(id_) != piece:
            raise TokenizerError(f"sentencepiece model has no {piece} piece "
                                 "(ALBERT's 30k-clean.model has [CLS]=2, [SEP]=3)")
        return id_

    def preprocess(self, text):
        """The flavour's preprocess_text: what sentencepiece is given to encode (the fast
        flavour: the normalized text, before it is cut into words)."""
        text = _as_text(text, "text")
        if self.flavour == "huggingface-fast":
            return hf_fast.normalize(text, self._charsmap, do_lower_case=self.do_lower_case,
                                     keep_accents=self.keep_accents)
        if self.remove_space:
            text = " ".join(text.strip().split())
        if self.flavour == "huggingface":
            text = text.replace("``", '"').replace("''", '"')
        if not self.keep_accents:
            text = "".join(c for c in unicodedata.normalize("NFKD", text)
                           if not unicodedata.combining(c))
        if self.do_lower_case:
            text = text.lower()
        return text

    def tokenize(self, text):
        """Word pieces of one text, without [CLS]/[SEP]."""
        text = _as_text(text, "text")
        if self.flavour == "original":
            return self._encode_pieces(self.preprocess(text))
        if self.flavour == "huggingface-fast":
            return self._tokenize_fast(text)
        # PreTrainedTokenizer.tokenize: lower-case char by char (so a final capital
        # sigma becomes "σ", not "ς") sparing special tokens, then split them out
        # and run _tokenize (preprocess + encode_pieces) on each stretch between.
        if self.do_lower_case:
            text = _HF_LOWER.sub(lambda m: m.group(1) or m.group(2).lower(), text)
        parts = _HF_SPLIT.split(text)  # text, special, text, ..., text
        for i in range(1, len(parts), 2):
            if parts[i] == _HF_LSTRIP:
                parts[i - 1] = parts[i - 1].rstrip()
        pieces = []
        for i, part in enumerate(parts):
            if i % 2:
                pieces.append(part)
            elif part:
                pieces += self._encode_pieces(self.preprocess(part))
        return pieces

    def _tokenize_fast(self, text):
        """Special tokens as they are; each stretch between them normalized, cut into
        Metaspace words and each word segmented on its own."""
        pieces = []
        for i, part in enumerate(hf_fast.split_specials(text)):
            if i % 2:
                pieces.append(part)
            elif part and (normalized := self.preprocess(part)):  # `tokenizers` skips empty stretches
                for word in hf_fast.words(normalized, split_whitespace=self.remove_space):
                    pieces += self._unigram.segment(word)
        return pieces

    def _encode_pieces(self, text):
        """sentencepiece pieces, with a piece such as "▁1999," split into "▁1999" ","."""
        pieces = []
        for piece in self._sp.EncodeAsPieces(text):
            if len(piece) > 1 and piece[-1] == "," and piece[-2].isdigit():
                sub = self._sp.EncodeAsPieces(piece[:-1].replace(_UNDERLINE, ""))
                # Re-encoding gives a word-internal piece like "0," a leading "▁".
                # Hugging Face removes it. The original means to, but tests
                # `cur_pieces[0][0] == SPIECE_UNDERLINE` against the bytes
                # b"\xe2\x96\x81", which no str or bytes item ever equals, so it keeps it.
                if (self.flavour == "huggingface" and piece[0] != _UNDERLINE
                        and sub[0][0] == _UNDERLINE):
                    sub = sub[1:] if len(sub[0]) == 1 else [sub[0][1:]] + sub[1:]
                pieces += sub
                pieces.append(",")
            else:
                pieces.append(piece)
        return pieces

    def convert_tokens_to_ids(self, pieces):
        """Ids of pieces; a piece not in the vocabulary gets <unk>'s id."""
        for piece in pieces:
            if not isinstance(piece, str):
                raise InputError(f"pieces must be str, not {type(piece).__name__}")
        if self.flavour == "huggingface-fast":
            return [self._unigram.id(piece) for piece in pieces]
        return [self._sp.PieceToId(piece) for piece in pieces]

    def encode(self, text_a, text_b=None, *, max_seq_length=512):
        """`[CLS] A [SEP]` or `[CLS] A [SEP] B [SEP]`, truncated like run_classifier."""
        return self._encode(text_a, text_b, max_seq_length, "text_a", "text_b")

    def _encode(self, text_a, text_b, max_seq_length, name_a, name_b):
        pair = text_b is not None
        _check_int(max_seq_length, "max_seq_length", 3 if pair else 2)
        a = self.tokenize(_as_text(text_a, name_a))
        b = self.tokenize(_as_text(text_b, name_b)) if pair else []
        total = len(a) + len(b)
        # The original lays out a pair only when B has pieces (`if tokens_b:`); Hugging
        # Face's slow build_inputs_with_special_tokens whenever B is given, its fast
        # tokenizer whenever B is not empty (`if text_pair`).
        if b or (pair and (self.flavour == "huggingface" or (self.flavour == "huggingface-fast" and text_b))):
            (_truncate_longest_first if self.flavour == "huggingface-fast" else _truncate_seq_pair)(
                a, b, max_seq_length - 3)
            pieces = [CLS, *a, SEP, *b, SEP]
            segment_ids = [0] * (len(a) + 2) + [1] * (len(b) + 1)
        else:
            del a[max_seq_length - 2:]
            pieces = [CLS, *a, SEP]
            segment_ids = [0] * len(pieces)
        return Encoding(pieces=pieces, input_ids=self.convert_tokens_to_ids(pieces),
                        segment_ids=segment_ids, truncated=total - len(a) - len(b))

    def encode_batch(self, texts, *, max_seq_length=512, pad_to=None):
        """Encode texts (str, bytes or (text_a, text_b) pairs), zero-padded to one length."""
        if isinstance(texts, (str, bytes)):
            raise InputError("texts must be a sequence of texts or pairs, not one text")
        encodings = []
        for i, item in enumerate(texts):
            name = f"texts[{i}]"
            if isinstance(item, (tuple, list)):
                if len(item) != 2:
                    raise InputError(f"{name} must be a text or a (text_a, text_b) pair, "
                                     f"not a sequence of {len(item)}")
                encodings.append(self._encode(*item, max_seq_length, name + "[0]", name + "[1]"))
            else:
                encodings.append(self._encode(item, None, max_seq_length, name, None))
        lengths = [len(e.input_ids) for e in encodings]
        width = max(lengths, default=0)
        if pad_to is not None:
            _check_int(pad_to, "pad_to", 0)
            if pad_to < width:
                raise InputError(f"pad_to is {pad_to}, shorter than the longest "
                                 f"encoded text ({width} tokens)")
            width = pad_to
        input_ids = np.zeros((len(encodings), width), np.int32)
        input_mask = np.zeros_like(input_ids)
        segment_ids = np.zeros_like(input_ids)
        for row, (enc, n) in enumerate(zip(encodings, lengths)):
            input_ids[row, :n] = enc.input_ids
            input_mask[row, :n] = 1
            segment_ids[row, :n] = enc.segment_ids
        return Batch(input_ids=input_ids, input_mask=input_mask, segment_ids=segment_ids,
                     truncated=[e.truncated for e in encodings], lengths=lengths)


def _truncate_seq_pair(tokens_a, tokens_b, max_length):
    """run_classifier's longest-first truncation: pop from A if longer, else from B."""
    while len(tokens_a) + len(tokens_b) > max_length:
        (tokens_a if len(tokens_a) > len(tokens_b) else tokens_b).pop()


def _truncate_longest_first(tokens_a, tokens_b, max_length):
    """`tokenizers`' LongestFirst: the shorter (A on a tie) keeps up to half, the longer
    the rest (run_classifier's loop would give A the extra token on a tie)."""
    if len(tokens_a) + len(tokens_b) > max_length:
        short, long = (tokens_b, tokens_a) if len(tokens_a) > len(tokens_b) else (tokens_a, tokens_b)
        keep = min(len(short), max_length // 2)
        del short[keep:]
        del long[max_length - keep:]


def _as_text(text, name):
    """str as is; bytes decoded as strict UTF-8."""
    if isinstance(text, str):
        try:
            text.encode("utf-8")  # sentencepiece takes UTF-8; lone surrogates have none
        except UnicodeEncodeError as e:
            raise TokenizerError(f"{name} has a lone surrogate U+{ord(text[e.start]):04X} "
                                 f"at index {e.start}, which UTF-8 cannot encode") from e
        return text
    if isinstance(text, bytes):
        try:
            return text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise TokenizerError(f"{name} is not valid UTF-8: byte 0x{text[e.start]:02x} "
                                 f"at offset {e.start} ({e.reason})") from e
    raise InputError(f"{name} must be str or bytes, not {type(text).__name__}")


def _check_int(value, name, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InputError(f"{name} must be an int, not {type(value).__name__}")
    if value < minimum:
        raise InputError(f"{name} is {value}, must be at least {minimum}")
