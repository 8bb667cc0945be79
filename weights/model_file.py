"""The albert-ref model file: one HDF5 file holds one model (layout in FORMAT.md).

Reading validates everything before any of it is used; writing goes through a temporary
file renamed into place, so a failure never leaves a partial model behind.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import h5py
import numpy as np

from albert_ref.atomic import atomic_path
from albert_ref.config import AlbertConfig
from albert_ref.errors import ConfigError, ModelFileError
from albert_ref.pipeline import Pipeline
from albert_ref.weights.names import encoder_shapes, head_shapes

FORMAT_NAME = "albert-ref"
FORMAT_VERSION = 1
TOKENIZER_OPTIONS = {"flavour": "original", "do_lower_case": True, "keep_accents": False, "remove_space": True}


class ChecksumError(ModelFileError):
    """A tensor's or the tokenizer's data does not match its stored SHA-256: the file is
    damaged. Everything else about it was valid up to that dataset."""


@dataclasses.dataclass
class ModelFile:
    config: AlbertConfig
    tensors: dict[str, np.ndarray]
    spm_model: bytes | None = None
    tokenizer_options: dict = dataclasses.field(default_factory=lambda: dict(TOKENIZER_OPTIONS))
    provenance: dict = dataclasses.field(default_factory=dict)
    # SHA-256 per tensor and of the tokenizer bytes, as stored in the file read (checked
    # against the data unless read with verify=False) or as computed by write_model; the
    # digest uses them instead of hashing the data again, and hashes whatever is missing.
    checksums: dict | None = dataclasses.field(default=None, repr=False, compare=False)
    tokenizer_checksum: str | None = dataclasses.field(default=None, repr=False, compare=False)
    # A sentence-embedding pipeline (sentence-transformers models); its Dense weights are
    # among `tensors`, named by albert_ref.pipeline.dense_names.
    pipeline: Pipeline | None = None

    def __post_init__(self):
        unknown = set(self.tokenizer_options) - set(TOKENIZER_OPTIONS)
        if unknown:
            raise ModelFileError(f"unknown tokenizer option(s): {', '.join(sorted(unknown))}")
        self.tokenizer_options = {**TOKENIZER_OPTIONS, **self.tokenizer_options}

    @property
    def heads(self) -> tuple[str, ...]:
        return tuple(h for h, names in head_shapes(self.config).items() if set(names) <= set(self.tensors))

    @property
    def digest(self) -> str:
        """SHA-256 identifying the model: config, every tensor and the tokenizer."""
        known = self.checksums or {}
        doc = {"config": self.config.to_dict(),
               "tensors": {n: known.get(n) or sha256(t) for n, t in self.tensors.items()},
               "tokenizer": None if self.spm_model is None else self.tokenizer_checksum or sha256(self.spm_model),
               "tokenizer_options": self.tokenizer_options}
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def sha256(data) -> str:
    if isinstance(data, np.ndarray):
        data = np.ascontiguousarray(data).data
    return hashlib.sha256(data).hexdigest()


def file_sha256(path) -> str:
    """Hex SHA-256 of a file's bytes, read in blocks (source checkpoints can be GBs).
    OSError propagates: callers name the file in their own error type."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def check_tensors(config: AlbertConfig, tensors: dict[str, np.ndarray], where: str = "",
                  pipeline: Pipeline | None = None) -> None:
    """Names, shapes, dtype and finiteness of a model's tensors against its config (and
    its pipeline's Dense layers, when it has one)."""
    expected = encoder_shapes(config)
    if pipeline is not None:
        try:
            pipeline.check_against(config.hidden_size, config.max_position_embeddings)
        except ModelFileError as exc:
            raise ModelFileError(f"{where}{exc}") from None
        expected.update(pipeline.tensor_shapes())
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise ModelFileError(f"{where}missing tensor(s): {', '.join(missing)}")
    for head, names in head_shapes(config).items():
        present = set(names) & set(tensors)
        if present and present != set(names):
            raise ModelFileError(f"{where}incomplete {head} head: missing {', '.join(sorted(set(names) - present))}")
        expected.update(names)
    unexpected = sorted(set(tensors) - set(expected))
    if unexpected:
        raise ModelFileError(f"{where}unexpected tensor(s): {', '.join(unexpected)}")
    for name, array in tensors.items():
        if array.dtype != np.float32:
            raise ModelFileError(f"{where}tensor {name}: dtype {array.dtype}, expected float32")
        if array.shape != expected[name]:
            raise ModelFileError(f"{where}tensor {name}: shape {array.shape}, expected {expected[name]} from the config")
        if not np.isfinite(array).all():
            bad = np.argwhere(~np.isfinite(array))[0]
            raise ModelFileError(f"{where}tensor {name}: non-finite value {array[tuple(bad)]} at index {tuple(bad.tolist())}")


def write_model(path, model: ModelFile) -> None:
    """Validate `model` and write it to `path` atomically. The checksums written are
    recorded on `model` too, so that its digest does not hash the tensors again."""
    path = Path(path)
    check_tensors(model.config, model.tensors, pipeline=model.pipeline)
    checksums, tokenizer_checksum = {}, None
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["format"] = FORMAT_NAME
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["config"] = model.config.to_json()
        f.attrs["provenance"] = json.dumps(model.provenance, sort_keys=True)
        if model.pipeline is not None:
            f.attrs["pipeline"] = model.pipeline.to_json()
        weights = f.create_group("weights")
        for name in sorted(model.tensors):
            array = np.ascontiguousarray(model.tensors[name], dtype="<f4")
            ds = weights.create_dataset(name, data=array)
            ds.attrs["sha256"] = checksums[name] = sha256(array)
        if model.spm_model is not None:
            tok = f.create_group("tokenizer")
            ds = tok.create_dataset("sentencepiece", data=np.frombuffer(model.spm_model, dtype=np.uint8))
            ds.attrs["sha256"] = tokenizer_checksum = sha256(model.spm_model)
            tok.attrs["options"] = json.dumps(model.tokenizer_options, sort_keys=True)
    model.checksums, model.tokenizer_checksum = checksums, tokenizer_checksum


def read_model(path, verify: bool = True) -> ModelFile:
    """Read and validate a model file; `verify=False` skips only the SHA-256 checks (the
    stored checksums are returned either way: the digest is made from them)."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise ModelFileError(f"{path}: not a readable HDF5 file (truncated or corrupt?): {exc}") from None
    try:
        with f:
            return _read(f, path, verify)
    except ModelFileError:
        raise
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as exc:
        # h5py reports damaged metadata and data blocks this way.
        raise ModelFileError(f"{path}: corrupt model file: {exc}") from None


def _attr(obj, name, path, kind=str):
    if name not in obj.attrs:
        raise ModelFileError(f"{path}: missing attribute {obj.name}:{name}")
    value = obj.attrs[name]
    if kind is str and isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if kind is int and isinstance(value, np.integer):
        value = int(value)
    if not isinstance(value, kind):
        raise ModelFileError(f"{path}: attribute {obj.name}:{name} has type {type(value).__name__}")
    return value


def _json_attr(obj, name, path):
    try:
        return json.loads(_attr(obj, name, path))
    except json.JSONDecodeError as exc:
        raise ModelFileError(f"{path}: attribute {obj.name}:{name} is not valid JSON: {exc}") from None


def _read(f: h5py.File, path: Path, verify: bool) -> ModelFile:
    if _attr(f, "format", path) != FORMAT_NAME:
        raise ModelFileError(f"{path}: not an albert-ref model file (format {f.attrs['format']!r})")
    version = _attr(f, "format_version", path, int)
    if version != FORMAT_VERSION:
        raise ModelFileError(f"{path}: format_version {version} is not supported (this albert-ref reads {FORMAT_VERSION})")
    try:
        config = AlbertConfig.from_dict(_json_attr(f, "config", path))
    except ConfigError as exc:
        raise ModelFileError(f"{path}: invalid config: {exc}") from None
    provenance = _json_attr(f, "provenance", path)
    pipeline = None
    if "pipeline" in f.attrs:
        try:
            pipeline = Pipeline.from_dict(_json_attr(f, "pipeline", path))
        except (ModelFileError, TypeError) as exc:
            raise ModelFileError(f"{path}: invalid pipeline: {exc}") from None

    datasets = _walk(f, path)
    unexpected = sorted(n for n in datasets if not n.startswith("weights/") and n != "tokenizer/sentencepiece")
    if unexpected:
        raise ModelFileError(f"{path}: unexpected object(s): {', '.join(unexpected)}")
    tensors, checksums = {}, {}
    for name, ds in datasets.items():
        if not name.startswith("weights/"):
            continue
        if ds.dtype != np.dtype("<f4"):
            raise ModelFileError(f"{path}: tensor {name[8:]}: dtype {ds.dtype}, expected little-endian float32")
        tensors[name[8:]], checksums[name[8:]] = _read_dataset(ds, name[8:], path, verify)
    check_tensors(config, tensors, f"{path}: ", pipeline)

    spm_model, spm_checksum, options = None, None, dict(TOKENIZER_OPTIONS)
    if "tokenizer/sentencepiece" in datasets:
        ds = datasets["tokenizer/sentencepiece"]
        if ds.dtype != np.uint8 or ds.ndim != 1:
            raise ModelFileError(f"{path}: tokenizer/sentencepiece must be a 1-D uint8 dataset")
        spm_model, spm_checksum = _read_dataset(ds, "tokenizer/sentencepiece", path, verify)
        spm_model = spm_model.tobytes()
        stored = _json_attr(f["tokenizer"], "options", path)
        if not isinstance(stored, dict) or set(stored) != set(options):
            raise ModelFileError(f"{path}: tokenizer options must be a JSON object with {sorted(options)}")
        options = stored
    checksums = {n: c for n, c in checksums.items() if c is not None}
    return ModelFile(config, tensors, spm_model, options, provenance, checksums, spm_checksum, pipeline)


def _walk(f: h5py.File, path: Path) -> dict[str, h5py.Dataset]:
    """Every dataset below the root; links other than hard links and any object that is
    not a group or dataset are refused (they could point outside the file)."""
    found = {}

    def visit(group, prefix):
        for key in group:
            link = group.get(key, getlink=True)
            if not isinstance(link, h5py.HardLink):
                raise ModelFileError(f"{path}: {prefix}{key} is a {type(link).__name__}; only plain objects are allowed")
            obj = group[key]
            if isinstance(obj, h5py.Group):
                visit(obj, f"{prefix}{key}/")
            elif isinstance(obj, h5py.Dataset):
                found[prefix + key] = obj
            else:
                raise ModelFileError(f"{path}: {prefix}{key} is an unexpected {type(obj).__name__}")

    visit(f, "")
    return found


def _read_dataset(ds: h5py.Dataset, name: str, path: Path, verify: bool) -> tuple[np.ndarray, str | None]:
    """The data and its stored SHA-256. verify: hash the data and compare (a missing
    checksum is an error); otherwise a missing or malformed checksum is returned as None."""
    if ds.external or ds.is_virtual:
        raise ModelFileError(f"{path}: {name} uses external storage, which is refused")
    if ds.chunks is not None or ds.compression is not None:
        raise ModelFileError(f"{path}: {name} is chunked or compressed; the format stores contiguous data")
    array = ds[()]
    if not verify:
        stored = ds.attrs.get("sha256")
        if isinstance(stored, bytes):
            stored = stored.decode("ascii", "replace")
        is_hex = isinstance(stored, str) and len(stored) == 64 and all(c in "0123456789abcdef" for c in stored)
        return array, stored if is_hex else None
    stored = _attr(ds, "sha256", path)
    actual = sha256(array)
    if actual != stored:
        raise ChecksumError(f"{path}: {name}: SHA-256 mismatch (stored {stored[:16]}..., data {actual[:16]}...): the file is corrupt")
    return array, stored
