"""Small in-memory sentencepiece models laid out like ALBERT's 30k-clean.model.

`<pad>`=0, `<unk>`=1, `[CLS]`=2, `[SEP]`=3, `[MASK]`=4, unigram. `train_spm` learns one
from lower-cased text made to exercise ALBERT preprocessing: numbers with thousands
commas (so that pieces such as "0," exist and encode_pieces has to re-split them),
accented words, `` '' quotes, CJK and a few emoji. `handmade_spm` writes one with
exactly the pieces given, for tests that derive the expected pieces by hand.
"""

import functools
import io
import random

import sentencepiece as spm

from albert_ref.spm_proto import NORMAL, model_proto

_WORDS = (
    "the of and to in is was for on that with as by it he she they we you at from his her "
    "an were are which this be or has had not but one two three new first after also who "
    "year years people city music world time state film game team school war river house "
    "album season number population million thousand hundred percent dollars about over"
).split()
_ACCENTED = "café naïve résumé über señor façade crème brûlée jalapeño zoë ångström déjà".split()
_PLAIN = "cafe naive resume uber senor facade creme brulee jalapeno zoe angstrom deja".split()
_CJK = "北京 東京 中文 日本語 漢字 大学 東京都 한국어 서울 ひらがな カタカナ".split()
_EMOJI = "🙂 🎉 👍".split()


def _number(rng):
    """A number as English text writes it: '7', '1999', '12,500', '3,000,000'."""
    n = rng.choice([rng.randrange(10), rng.randrange(1900, 2030), rng.randrange(10**3, 10**9)])
    return f"{n:,}" if rng.random() < 0.8 else str(n)


def _sentence(rng):
    out = []
    for _ in range(rng.randrange(4, 16)):
        kind = rng.random()
        if kind < 0.55:
            out.append(rng.choice(_WORDS))
        elif kind < 0.75:
            out.append(_number(rng) + rng.choice(["", ",", ",", "."]))
        elif kind < 0.85:
            out.append(rng.choice(_ACCENTED + _PLAIN))
        elif kind < 0.92:
            word = rng.choice(_WORDS)
            out.append(rng.choice([f'"{word}"', f"``{word}''", f"'{word}'", f"{word}'s"]))
        elif kind < 0.98:
            out.append(rng.choice(_CJK))
        else:
            out.append(rng.choice(_EMOJI))
    return " ".join(out) + rng.choice([".", ",", "?", "!", ""])


@functools.lru_cache(maxsize=None)
def train_spm(vocab_size=500, seed_text="", sentences=2000):
    """Serialized sentencepiece model trained on the built-in corpus plus `seed_text` lines.

    Deterministic (fixed corpus, one training thread) and cached, so that every test
    asking for the same model gets the same bytes without training it again.
    """
    rng = random.Random(0)
    corpus = [_sentence(rng) for _ in range(sentences)]
    corpus += [line for line in seed_text.splitlines() if line.strip()]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus),
        model_writer=model,
        model_type="unigram",
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        character_coverage=1.0,
        pad_id=0,
        unk_id=1,
        bos_id=-1,
        eos_id=-1,
        control_symbols=["[CLS]", "[SEP]", "[MASK]"],
        num_threads=1,
        minloglevel=2,
    )
    return model.getvalue()


SPECIALS = (("<pad>", 3), ("<unk>", 2), ("[CLS]", 3), ("[SEP]", 3), ("[MASK]", 3))  # (piece, type)


def handmade_spm(pieces, specials=SPECIALS):
    """Serialized unigram model: `specials`, then `pieces`, all scored -1.

    With equal scores sentencepiece picks the segmentation with the fewest pieces.
    The normalizer is "identity" (no NFKC), with sentencepiece's default dummy "▁"
    prefix and whitespace handling.
    """
    return model_proto([(text, -1.0, kind) for text, kind in specials] + [(text, -1.0, NORMAL) for text in pieces])
