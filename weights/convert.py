"""`albert-ref convert`: detect the source (TF checkpoint, TF-Hub module, Hugging Face
directory) and write one albert-ref model file."""
from __future__ import annotations

import gzip
import hashlib
import re
import tarfile
import tempfile
import zlib
from pathlib import Path

import numpy as np

from albert_ref.config import AlbertConfig
from albert_ref.errors import ConversionError, ModelFileError, TokenizerError
from albert_ref.tokenizer import DEFAULT_OPTIONS
from albert_ref.weights.model_file import ModelFile, file_sha256, read_model, write_model

# Training state a pretraining checkpoint may carry next to the weights.
_TRAINING_STATE = re.compile(r"(^global_step$|/adam_[mv]$|/Adam(_1)?$|/Momentum$|/lamb_[mv]$)")
_TOKENIZER_NAMES = ("30k-clean.model", "spiece.model")


def converter_version() -> str:
    from albert_ref import __version__
    return f"albert-ref {__version__}"


def detect(src: Path) -> str:
    """"tf_hub_module", "tf_hub_archive", "tf_checkpoint", "sentence_transformers", "huggingface"
    or "albert_ref" (an albert-ref model file of an older format version, rewritten in the
    current one)."""
    if src.is_dir():
        if (src / "variables" / "variables.index").is_file():
            return "tf_hub_module"
        if (src / "modules.json").is_file():
            return "sentence_transformers"
        if (src / "config.json").is_file():
            return "huggingface"
        if len(list(src.glob("*.index"))) == 1:
            return "tf_checkpoint"
        raise ConversionError(f"{src}: not a TF-Hub module (variables/variables.index), a Hugging Face "
                              f"directory (config.json) or a directory with exactly one TF checkpoint")
    if src.is_file() and src.suffix == ".h5":
        return "albert_ref"
    if src.is_file() and (src.name.endswith((".tar.gz", ".tgz", ".tar"))):
        return "tf_hub_archive"
    if Path(f"{src}.index").is_file() or (src.suffix == ".index" and src.is_file()):
        return "tf_checkpoint"
    raise ConversionError(f"{src}: no such checkpoint, module or directory")


def convert(src, out, *, config_path=None, spm_path=None, do_lower_case=True) -> ModelFile:
    """Convert `src` to the model file `out`; returns what was written.

    config_path / spm_path override or supply albert_config.json and the sentencepiece
    model for TF sources; do_lower_case applies to TF sources (the released ALBERT
    sentencepiece models are uncased).
    """
    src, out = Path(src), Path(out)
    kind = detect(src)
    if kind == "albert_ref":
        if config_path or spm_path:
            raise ConversionError("--config/--spm apply to TF sources; an albert-ref model file carries its own")
        model = read_model(src)
    elif kind in ("huggingface", "sentence_transformers"):
        if config_path or spm_path:
            raise ConversionError("--config/--spm apply to TF sources; a Hugging Face directory carries its own")
        model = _from_huggingface(src) if kind == "huggingface" else _from_sentence_transformers(src)
    elif kind == "tf_hub_archive":
        with tempfile.TemporaryDirectory(prefix="albert-ref-hub-") as tmp:
            archive_sha256 = _extract_hub_archive(src, Path(tmp))
            model = _from_tf(Path(tmp), "tf_hub_module", config_path, spm_path, do_lower_case,
                             archive={src.name: archive_sha256})
    else:
        model = _from_tf(src, kind, config_path, spm_path, do_lower_case)
    if model.spm_model is not None:
        from albert_ref.model import check_tokenizer
        try:
            check_tokenizer(model)
        except TokenizerError as exc:
            raise ConversionError(f"{src}: unusable tokenizer: {exc}") from None
    try:
        write_model(out, model)
    except ModelFileError as exc:
        raise ConversionError(f"{src}: {exc}") from None
    return model


def _from_huggingface(src: Path) -> ModelFile:
    from albert_ref.weights.hf_source import read_huggingface
    hf = read_huggingface(src)
    return _hf_model_file(hf, "huggingface", hf.sources, hf.notes)


def _from_sentence_transformers(src: Path) -> ModelFile:
    from albert_ref.weights.st_source import read_sentence_transformers
    st = read_sentence_transformers(src)
    return _hf_model_file(st.hf, "sentence_transformers", st.sources, st.notes, st.dense_tensors, st.pipeline)


def _hf_model_file(hf, source_format: str, sources: dict, notes, extra_tensors=None, pipeline=None) -> ModelFile:
    """A Hugging Face model's file: its tokenizer as read (hf_source picks the flavour),
    provenance naming the source."""
    return ModelFile(hf.config, {**hf.tensors, **(extra_tensors or {})}, hf.spm_model, hf.tokenizer_options,
                     {"source_format": source_format, "sources": sources, "converter": converter_version(),
                      "notes": list(notes)}, pipeline=pipeline)


def _from_tf(src: Path, kind: str, config_path, spm_path, do_lower_case, archive: dict | None = None) -> ModelFile:
    """archive: {name: SHA-256} of the archive `src` was extracted from, if any."""
    from albert_ref.weights.tf_bundle import read_bundle
    if kind == "tf_hub_module":
        prefix, assets = src / "variables" / "variables", src / "assets"
    else:
        prefix = _checkpoint_prefix(src)
        assets = prefix.parent
    config_file = Path(config_path) if config_path else assets / "albert_config.json"
    if not config_file.is_file():
        raise ConversionError(f"{src}: no albert_config.json found at {config_file}; pass --config")
    config = AlbertConfig.from_json_file(config_file, "original")
    spm_file = Path(spm_path) if spm_path else next(
        (assets / n for n in _TOKENIZER_NAMES if (assets / n).is_file()), None)
    if spm_path and not spm_file.is_file():
        raise ConversionError(f"{spm_file}: no such sentencepiece model")

    shard_sha256 = {}  # filled by read_bundle's one pass over each data shard
    tensors = read_bundle(prefix, keep=lambda name: not _TRAINING_STATE.search(name), digests=shard_sha256)
    for name, array in tensors.items():
        if array.dtype != np.float32:
            raise ConversionError(f"{prefix}: tensor {name} has dtype {array.dtype}; ALBERT weights are float32")
    files = [Path(f"{prefix}.index"), config_file, *([spm_file] if spm_file else [])]
    sources = {**{f.name: file_sha256(f) for f in files}, **shard_sha256}
    if archive is not None:
        sources = {**archive, **sources}
    provenance = {"source_format": kind, "sources": sources, "converter": converter_version()}
    spm = spm_file.read_bytes() if spm_file else None
    options = {**DEFAULT_OPTIONS, "do_lower_case": bool(do_lower_case)}
    return ModelFile(config, tensors, spm, options, provenance)


def _checkpoint_prefix(src: Path) -> Path:
    if src.is_dir():
        return next(src.glob("*.index")).with_suffix("")
    return src.with_suffix("") if src.suffix == ".index" else src


def _extract_hub_archive(archive: Path, dest: Path) -> str:
    """Extract just variables/ and assets/ of a downloaded TF-Hub module archive into dest
    in one pass over the file, which also gives its SHA-256 (returned). A gzip stream is
    decompressed to its end, where gzip checks its CRC-32 and length; a plain tar is parsed
    up to its end-of-archive marker, and only hashed after it."""
    try:
        with open(archive, "rb") as fh:
            gzipped = fh.read(2) == b"\x1f\x8b"
            fh.seek(0)
            raw = _HashingReader(fh)
            stream = _GzipStream(raw) if gzipped else raw
            try:
                extracted = _extract_members(archive, stream, dest)
            except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
                if gzipped:
                    stream.check(archive)  # a damaged download, rather than a damaged archive in a sound one
                raise ConversionError(f"{archive}: unreadable archive (truncated or corrupt?): {exc}") from None
            if gzipped:
                stream.check(archive)
            digest = raw.hexdigest()
    except OSError as exc:
        raise ConversionError(f"{archive}: cannot read the archive: {exc}") from None
    if not any(p.name == "variables.index" for p in extracted):
        raise ConversionError(f"{archive}: no variables/variables.index in the archive: not a TF-Hub module")
    return digest


class _HashingReader:
    """A binary file read front to back, hashing the bytes that pass."""

    def __init__(self, fh):
        self._fh = fh
        self._sha = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self._fh.read(size)
        self._sha.update(data)
        return data

    def hexdigest(self) -> str:
        """SHA-256 of the whole file: what was not read yet is read now."""
        while self.read(1 << 24):
            pass
        return self._sha.hexdigest()


def _extract_members(archive: Path, stream, dest: Path) -> list[Path]:
    """variables/* and assets/* of the tar `stream`, written under dest."""
    extracted = []
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            parts = Path(member.name).parts
            parts = parts[1:] if parts and parts[0] == "." else parts
            if not parts or parts[0] not in ("variables", "assets") or len(parts) != 2:
                continue
            if not member.isfile():
                raise ConversionError(f"{archive}: {member.name} is not a regular file")
            target = dest.joinpath(*parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(member) as fin, open(target, "wb") as fout:
                while block := fin.read(1 << 20):
                    fout.write(block)
            extracted.append(target)
    return extracted


class _GzipStream:
    """A gzip file's decompressed bytes, remembering the error its decoder raised: tarfile
    takes a damaged gzip stream for a damaged or ended archive, which would mislead."""

    def __init__(self, raw):
        self._gz = gzip.GzipFile(fileobj=raw, mode="rb")
        self.damage: Exception | None = None

    def read(self, size: int = -1) -> bytes:
        try:
            return self._gz.read(size)
        except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
            self.damage = exc
            raise

    def check(self, archive: Path) -> None:
        """Read on to the stream's end (its CRC-32 and length checked there), unless the
        decoder already failed; raise ConversionError if it did either way."""
        try:
            while self.damage is None and self.read(1 << 24):
                pass
        except (OSError, EOFError, zlib.error):
            pass
        if self.damage is not None:
            raise ConversionError(f"{archive}: damaged gzip stream (truncated or corrupt download?): "
                                  f"{self.damage}") from None
