"""Read an ALBERT tokenizer.json (the only tokenizer transformers 5 saves) into a
sentencepiece model and the "huggingface-fast" tokenizer options.

Accepted is exactly what transformers writes for ALBERT, in either layout: a Unigram
model; the normalizer Sequence Replace ``/'' -> ", [NFKD, StripAccents], [Lowercase],
[Precompiled charsmap], [Replace " {2,}" -> " "]; the pre-tokenizer Metaspace ("▁",
prepend always, split), transformers 5 preceding it with WhitespaceSplit; the
[CLS] $A [SEP] ($B [SEP]) template; ALBERT's five special tokens. Anything else is
refused by name: a tokenizer that looked the same but split differently would give
other ids silently. The vocabulary's scores are stored as float32, sentencepiece's type;
transformers 4 lowers the scores of pieces like "9," by 100, off float32's grid, which
keeps them off every best segmentation, so their rounding changes no ids.
"""
from __future__ import annotations

import base64
import binascii
import math
from pathlib import Path

from albert_ref import hf_fast, spm_proto
from albert_ref.errors import ConversionError, TokenizerError

__all__ = ["read_tokenizer_json"]

_QUOTES = [{"type": "Replace", "pattern": {"String": "``"}, "content": '"'},
           {"type": "Replace", "pattern": {"String": "''"}, "content": '"'}]
_ACCENTS = [{"type": "NFKD"}, {"type": "StripAccents"}]
_LOWER = {"type": "Lowercase"}
_SPACES = {"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "}
_METASPACE = {"type": "Metaspace", "replacement": hf_fast.UNDERLINE, "prepend_scheme": "always", "split": True}
_TEMPLATE = {"single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                        {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
             "pair": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                      {"SpecialToken": {"id": "[SEP]", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}},
                      {"SpecialToken": {"id": "[SEP]", "type_id": 1}}]}


def read_tokenizer_json(path: Path, data: dict) -> tuple[bytes, dict]:
    """(serialized sentencepiece model, tokenizer options) from tokenizer.json's parsed
    `data`; ConversionError names what is unsupported or malformed."""
    def fail(what: str):
        raise ConversionError(f"{path}: {what}")

    if not isinstance(data, dict):
        fail("must hold a JSON object")
    vocab, unk_id = _unigram(data.get("model"), fail)
    do_lower_case, keep_accents, charsmap, collapses = _normalizer(data.get("normalizer"), fail)
    split_whitespace = _pre_tokenizer(data.get("pre_tokenizer"), fail)
    if not split_whitespace and not collapses:
        fail('the normalizer lacks Replace " {2,}" -> " ", which a Metaspace-only pre-tokenizer needs '
             "(transformers' layouts have one or the other)")
    ids = {piece: i for i, (piece, _) in enumerate(vocab)}
    _specials(data.get("added_tokens"), ids, fail)
    _post_processor(data.get("post_processor"), ids, fail)
    kinds = {ids[token]: spm_proto.CONTROL for token in hf_fast.SPECIALS} | {unk_id: spm_proto.UNKNOWN}
    proto = spm_proto.model_proto([(piece, score, kinds.get(i, spm_proto.NORMAL)) for i, (piece, score) in enumerate(vocab)],
                                  name="tokenizer.json", charsmap=charsmap)
    if charsmap:
        try:
            hf_fast.Charsmap(charsmap)
        except TokenizerError as exc:
            fail(str(exc))
    options = {"flavour": "huggingface-fast", "do_lower_case": do_lower_case, "keep_accents": keep_accents,
               "remove_space": split_whitespace}
    return proto, options


def _unigram(model, fail) -> tuple[list, int]:
    if not isinstance(model, dict) or model.get("type") != "Unigram":
        fail(f"model type {model.get('type') if isinstance(model, dict) else model!r} is not supported "
             f"(ALBERT's tokenizer is a Unigram model)")
    if model.get("byte_fallback", False) is not False:
        fail("a Unigram model with byte_fallback is not supported")
    vocab, unk_id = model.get("vocab"), model.get("unk_id")
    if not isinstance(vocab, list) or not vocab:
        fail("model.vocab must be a non-empty list of [piece, score]")
    seen = set()
    for i, entry in enumerate(vocab):
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str) and entry[0]
                and isinstance(entry[1], (int, float)) and not isinstance(entry[1], bool)
                and math.isfinite(entry[1])):
            fail(f"model.vocab[{i}] is not a [non-empty piece, finite score] pair: {entry!r}"[:300])
        if entry[0] in seen:
            fail(f"model.vocab has the piece {entry[0]!r} twice")
        seen.add(entry[0])
    if isinstance(unk_id, bool) or not isinstance(unk_id, int) or not 0 <= unk_id < len(vocab):
        fail(f"model.unk_id must be the index of a vocabulary entry, not {unk_id!r}")
    return vocab, unk_id


def _normalizer(spec, fail) -> tuple[bool, bool, bytes, bool]:
    """(do_lower_case, keep_accents, charsmap, collapses spaces) of the normalizer."""
    steps = spec.get("normalizers") if isinstance(spec, dict) and spec.get("type") == "Sequence" else None
    if not isinstance(steps, list) or steps[:2] != _QUOTES:
        fail(f"normalizer {_describe(spec)} is not supported (ALBERT's is a Sequence starting with "
             "Replace `` -> \" and Replace '' -> \")")
    rest = steps[2:]
    keep_accents = rest[:2] != _ACCENTS
    rest = rest[0 if keep_accents else 2:]
    do_lower_case = rest[:1] == [_LOWER]
    rest = rest[int(do_lower_case):]
    charsmap = b""
    if rest and isinstance(rest[0], dict) and rest[0].get("type") == "Precompiled":
        blob = rest.pop(0).get("precompiled_charsmap")
        try:
            charsmap = base64.b64decode(blob, validate=True) if isinstance(blob, str) else None
        except (binascii.Error, ValueError):
            charsmap = None
        if not charsmap:
            fail("normalizer Precompiled: precompiled_charsmap is not non-empty base64")
    collapses = rest[:1] == [_SPACES]
    rest = rest[int(collapses):]
    if rest:
        fail(f"normalizer step {_describe(rest[0])} is not supported here (ALBERT's steps, in order: Replace ``, "
             "Replace '', NFKD + StripAccents, Lowercase, Precompiled, Replace \" {2,}\")")
    return do_lower_case, keep_accents, charsmap, collapses


def _pre_tokenizer(spec, fail) -> bool:
    """Whether WhitespaceSplit precedes the Metaspace (transformers 5's layout)."""
    steps = spec.get("pretokenizers") if isinstance(spec, dict) and spec.get("type") == "Sequence" else [spec]
    whitespace = isinstance(steps, list) and len(steps) == 2 and steps[0] == {"type": "WhitespaceSplit"}
    meta = steps[-1] if isinstance(steps, list) and len(steps) == 1 + whitespace else None
    if isinstance(meta, dict) and "prepend_scheme" not in meta and meta.get("add_prefix_space") is True:
        meta = {**{k: v for k, v in meta.items() if k != "add_prefix_space"}, "prepend_scheme": "always"}  # older files
    if not isinstance(meta, dict) or {"split": True, **meta} != _METASPACE:
        fail(f"pre_tokenizer {_describe(spec)} is not supported (ALBERT's is Metaspace '▁' with prepend_scheme "
             "'always', optionally after WhitespaceSplit)")
    return whitespace


def _specials(added, ids: dict, fail) -> None:
    if not isinstance(added, list):
        fail("added_tokens must be a list")
    found = {}
    for token in added:
        if not isinstance(token, dict) or not isinstance(token.get("content"), str):
            fail(f"added token {token!r} has no content"[:300])
        content = token["content"]
        if content not in hf_fast.SPECIALS:
            fail(f"added token {content!r} is not supported (albert-ref splits out ALBERT's "
                 f"{', '.join(hf_fast.SPECIALS)})")
        want = {"id": ids.get(content), "special": True, "normalized": False, "single_word": False,
                "lstrip": hf_fast.SPECIALS[content], "rstrip": False}
        if any(token.get(k) != v for k, v in want.items()):
            fail(f"added token {content!r} is {_describe(token)}; albert-ref supports {want}")
        found[content] = token
    missing = [t for t in hf_fast.SPECIALS if t not in found]
    if missing:
        fail(f"added_tokens lacks {', '.join(missing)}, which ALBERT's tokenizer splits out of every text")


def _post_processor(spec, ids: dict, fail) -> None:
    if not isinstance(spec, dict) or spec.get("type") != "TemplateProcessing" or \
            {k: spec.get(k) for k in _TEMPLATE} != _TEMPLATE:
        fail(f"post_processor {_describe(spec)} is not supported (ALBERT's is TemplateProcessing "
             "[CLS] $A [SEP] and [CLS] $A [SEP] $B:1 [SEP]:1)")
    for token in ("[CLS]", "[SEP]"):
        entry = (spec.get("special_tokens") or {}).get(token)
        if not isinstance(entry, dict) or entry.get("ids") != [ids[token]]:
            fail(f"post_processor's {token} is {entry!r}, not the vocabulary's id {ids[token]}")


def _describe(value) -> str:
    text = repr(value)
    return text if len(text) <= 200 else text[:200] + "..."
