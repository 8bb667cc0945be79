"""The text rules of Hugging Face's fast ALBERT tokenizer (the `tokenizers` pipeline of a
tokenizer.json), for the "huggingface-fast" flavour.

In order: special tokens are split out of the raw text ([MASK] also takes the whitespace
before it); each stretch between them is normalized (`` and '' -> ", NFKD and accents
stripped unless keep_accents, lower-cased if do_lower_case, the Precompiled charsmap,
runs of spaces -> one) and cut into Metaspace words ("▁" for each space, one prepended,
a word starting at each "▁"), which the Unigram model segments one by one.
transformers 5 first splits the stretch at whitespace (WhitespaceSplit) and prepends "▁"
to each part (`split_whitespace`); transformers 4's AlbertConverter does not, so a space
at either end or a whitespace-only text gives a lone "▁".
"""
import re
import unicodedata
from functools import lru_cache

import numpy as np

from .errors import TokenizerError

UNDERLINE = "\u2581"
# tokenizer.json's added tokens for ALBERT: content -> lstrip (none has rstrip, single_word
# or normalized set). They are split out of the raw text before anything else.
SPECIALS = {"<pad>": False, "<unk>": False, "[CLS]": False, "[SEP]": False, "[MASK]": True}
# Rust's char::is_whitespace (Unicode White_Space): Python's isspace() less U+001C..U+001F.
_WS = r"[^\S\x1c-\x1f]"
_SPECIALS_RE = re.compile("(" + "|".join((_WS + "*" if lstrip else "") + re.escape(token)
                                         for token, lstrip in sorted(SPECIALS.items(), key=lambda t: -len(t[0])))
                          + ")")
_SPACES = re.compile(" {2,}")
_WHITESPACE = re.compile(_WS + "+")
_WORDS = re.compile(f"{UNDERLINE}[^{UNDERLINE}]*")


def split_specials(text):
    """[text, special, text, ..., text]: the special tokens (odd items, stripped of the
    whitespace [MASK] took) and the stretches between them."""
    parts = _SPECIALS_RE.split(text)
    for i in range(1, len(parts), 2):
        parts[i] = parts[i].lstrip()
    return parts


def normalize(text, charsmap, *, do_lower_case, keep_accents):
    """The normalizer Sequence: Replace ``/'', [NFKD, StripAccents], [Lowercase],
    [Precompiled], Replace " {2,}" (a no-op when whitespace splits words anyway)."""
    text = text.replace("``", '"').replace("''", '"')
    ascii_only = text.isascii()  # the common case, where NFKD and the accents change nothing
    if not keep_accents and not ascii_only:  # StripAccents drops every Mark (Mn, Mc, Me)
        text = "".join(c for c in unicodedata.normalize("NFKD", text) if unicodedata.category(c)[0] != "M")
    if do_lower_case:  # char by char, as Rust's char::to_lowercase: a final Σ becomes σ
        text = text.lower() if ascii_only else "".join(c.lower() for c in text)
    if charsmap is not None:
        text = charsmap.normalize(text)
    return _SPACES.sub(" ", text)


def words(text, *, split_whitespace):
    """The pre-tokenizer: [WhitespaceSplit], then Metaspace (replacement "▁",
    prepend_scheme "always", split) on each part."""
    if not split_whitespace:
        return _metaspace(text)
    return [word for part in _WHITESPACE.split(text) if part for word in _metaspace(part)]


def _metaspace(text):
    text = text.replace(" ", UNDERLINE)
    if not text.startswith(UNDERLINE):
        text = UNDERLINE + text
    return _WORDS.findall(text)


class Unigram:
    """`tokenizers`' Unigram model (its optimized Viterbi, float64 path scores, ties kept
    by the first path found, consecutive unknown characters fused into one <unk>).
    sentencepiece's own Viterbi sums in float32, which breaks exact ties such as
    "2" + "22" against "22" + "2" differently, so it cannot give the same ids."""

    _UNK_PENALTY = 10.0

    def __init__(self, vocab, unk_id):
        self._ids = {}
        for i, (piece, score) in enumerate(vocab):
            self._ids.setdefault(piece, (i, float(score)))
        self._unk_id = unk_id
        self._unk_score = min(float(score) for _, score in vocab) - self._UNK_PENALTY
        self._longest = max(len(piece) for piece, _ in vocab)
        self.segment = lru_cache(maxsize=1 << 16)(self._segment)

    def id(self, piece):
        """The piece's id; <unk>'s for anything else (a fused run of unknowns)."""
        found = self._ids.get(piece)
        return self._unk_id if found is None else found[0]

    def _segment(self, word):
        n, ids, unk = len(word), self._ids, self._unk_id
        best = [(0.0, -1, -1)] * (n + 1)  # (path score, start, id) of the best path ending here
        for start in range(n):
            till_here = best[start][0]
            single = False
            for end in range(start + 1, min(n, start + self._longest) + 1):
                found = ids.get(word[start:end])
                if found is None:
                    continue
                score = found[1] + till_here
                if best[end][1] < 0 or score > best[end][0]:
                    best[end] = (score, start, found[0])
                single = single or end == start + 1
            if not single:
                score = self._unk_score + till_here
                if best[start + 1][1] < 0 or score > best[start + 1][0]:
                    best[start + 1] = (score, start, unk)
        pieces, end, unknown_end = [], n, None
        while end > 0:
            _, start, id_ = best[end]
            if id_ == unk:  # fuse with the unknowns after it
                unknown_end = unknown_end or end
            else:
                if unknown_end:
                    pieces.append(word[end:unknown_end])
                    unknown_end = None
                pieces.append(word[start:end])
            end = start
        if unknown_end:
            pieces.append(word[:unknown_end])
        return tuple(reversed(pieces))


class Charsmap:
    """sentencepiece's precompiled charsmap (a darts-clone double-array trie of source
    strings and a pool of NUL-terminated replacements), applied as `tokenizers`'
    Precompiled normalizer applies it: per grapheme cluster shorter than 6 UTF-8 bytes,
    the replacement of the cluster's SHORTEST prefix in the trie replaces the whole
    cluster; otherwise (or without a match) each character is looked up alone."""

    def __init__(self, blob: bytes):
        if len(blob) < 4:
            raise TokenizerError(f"precompiled charsmap of {len(blob)} bytes: too short")
        size = int.from_bytes(blob[:4], "little")
        if size % 4 or size == 0 or 4 + size > len(blob):
            raise TokenizerError(f"precompiled charsmap: trie of {size} bytes does not fit in {len(blob)}")
        self._units = np.frombuffer(blob, "<u4", size // 4, 4).tolist()
        self._pool = blob[4 + size:]
        self._lookup = lru_cache(maxsize=1 << 16)(self._transform)
        self._chars = _Replacements(self._transform)

    def _transform(self, chunk: str):
        """The replacement of chunk's shortest prefix in the trie, or None."""
        units = self._units
        pos = _offset(units[0])
        for byte in chunk.encode():
            if byte == 0:
                return None
            pos ^= byte
            if pos >= len(units) or units[pos] & 0x800000FF != byte:  # the unit's label
                return None
            has_leaf = units[pos] >> 8 & 1
            pos ^= _offset(units[pos])
            if pos >= len(units):
                return None
            if has_leaf:
                start = units[pos] & 0x7FFFFFFF
                end = self._pool.find(b"\0", start)
                try:
                    return self._pool[start:end if end >= 0 else None].decode()
                except UnicodeDecodeError:
                    raise TokenizerError(f"precompiled charsmap: replacement at {start} is not UTF-8") from None
        return None

    def normalize(self, text: str) -> str:
        if text.isascii() and "\r" not in text or not _JOINING.intersection(map(_break_class, set(text))):
            return text.translate(self._chars)  # no cluster of 2+ characters is under 6 bytes
        out = []
        for cluster in graphemes(text):
            if len(cluster) > 1 and len(cluster.encode()) < 6:
                norm = self._lookup(cluster)
                if norm is not None:
                    out.append(norm)
                    continue
            out.append(cluster.translate(self._chars))
        return "".join(out)


class _Replacements(dict):
    """str.translate's table: code point -> the charsmap's replacement or the character,
    filled as characters are met."""

    def __init__(self, transform):
        super().__init__()
        self._transform = transform

    def __missing__(self, code_point):
        c = chr(code_point)
        norm = self._transform(c)
        self[code_point] = c if norm is None else norm
        return self[code_point]


def _offset(unit: int) -> int:
    return (unit >> 10) << ((unit & (1 << 9)) >> 6)


# -- grapheme clusters (UAX #29) ----------------------------------------------------------------
# Only clusters under 6 UTF-8 bytes are looked up whole, so only the rules that can join
# such short clusters matter: CR LF, controls, Hangul syllables, Extend/ZWJ, SpacingMark,
# Prepend and regional-indicator pairs. Rule GB9c (Indic conjuncts) joins 3-byte
# characters into clusters of 6+ bytes, looked up character by character anyway; rule
# GB11 (emoji ZWJ sequences) too, except after © or ®, which is left out: it matters only
# to a charsmap that maps © or ® (NFKC's does not). Properties come from Python's
# unicodedata, so characters newer than its Unicode version may be clustered differently.
_OTHER_EXTEND = {0x09BE, 0x09D7, 0x0B3E, 0x0B57, 0x0BBE, 0x0BD7, 0x0CC2, 0x0CD5, 0x0CD6, 0x0D3E, 0x0D57, 0x0DCF,
                 0x0DDF, 0x1B35, 0x200C, 0x302E, 0x302F, 0xFF9E, 0xFF9F, 0x1133E, 0x11357, 0x114B0, 0x114BD,
                 0x115AF, 0x11930, 0x1D165, *range(0x1D16E, 0x1D173), *range(0xE0020, 0xE0080),
                 *range(0x1F3FB, 0x1F400)}  # Other_Grapheme_Extend and the emoji modifiers
_NOT_SPACING = {0x102B, 0x102C, 0x1038, 0x1062, 0x1063, 0x1064, *range(0x1067, 0x106E), 0x1083,
                *range(0x1087, 0x108D), 0x108F, 0x109A, 0x109B, 0x109C, 0x1A61, 0x1A63, 0x1A64, 0xAA7B,
                0xAA7D, 0x11720, 0x11721}  # Mc with Grapheme_Cluster_Break=Other
_PREPEND = {*range(0x0600, 0x0606), 0x06DD, 0x070F, 0x0890, 0x0891, 0x08E2, 0x0D4E, 0x110BD, 0x110CD, 0x111C2,
            0x111C3, 0x1193F, 0x11941, 0x11A3A, *range(0x11A84, 0x11A8A), 0x11D46, 0x11F02}
CR, LF, CONTROL, EXTEND, ZWJ, SPACING, PREPEND, RI, L, V, T, LV, LVT, OTHER = range(14)
# Without these, clusters of 2+ characters are Hangul syllables or flag pairs: 6+ bytes.
_JOINING = {CR, EXTEND, ZWJ, SPACING, PREPEND}


@lru_cache(maxsize=1 << 14)
def _break_class(c: str) -> int:
    cp = ord(c)
    if cp == 0x0D:
        return CR
    if cp == 0x0A:
        return LF
    if cp == 0x200D:
        return ZWJ
    if cp in _PREPEND:
        return PREPEND
    if cp in _OTHER_EXTEND:
        return EXTEND
    if 0x1100 <= cp <= 0x115F or 0xA960 <= cp <= 0xA97C:
        return L
    if 0x1160 <= cp <= 0x11A7 or 0xD7B0 <= cp <= 0xD7C6:
        return V
    if 0x11A8 <= cp <= 0x11FF or 0xD7CB <= cp <= 0xD7FB:
        return T
    if 0xAC00 <= cp <= 0xD7A3:
        return LV if (cp - 0xAC00) % 28 == 0 else LVT
    if 0x1F1E6 <= cp <= 0x1F1FF:
        return RI
    category = unicodedata.category(c)
    if category in ("Mn", "Me"):
        return EXTEND
    if category == "Mc" or cp in (0x0E33, 0x0EB3):
        return OTHER if cp in _NOT_SPACING else SPACING
    if category in ("Cc", "Cf", "Zl", "Zp"):
        return CONTROL
    return OTHER


def _joined(prev: int, cur: int, ri_run: int) -> bool:
    """No cluster break between classes prev and cur (ri_run: regional indicators so far)."""
    if prev == CR and cur == LF:
        return True
    if prev in (CR, LF, CONTROL) or cur in (CR, LF, CONTROL):
        return False
    if (prev == L and cur in (L, V, LV, LVT)) or (prev in (LV, V) and cur in (V, T)) or \
            (prev in (LVT, T) and cur == T):
        return True
    if cur in (EXTEND, ZWJ, SPACING) or prev == PREPEND:
        return True
    return prev == RI and cur == RI and ri_run % 2 == 1


def graphemes(text: str):
    """The extended grapheme clusters of text (see above for the rules applied)."""
    start, prev, ri_run = 0, None, 0
    for i, c in enumerate(text):
        cur = _break_class(c)
        if prev is not None and not _joined(prev, cur, ri_run):
            yield text[start:i]
            start = i
        ri_run = ri_run + 1 if cur == RI else 0
        prev = cur
    if text:
        yield text[start:]
