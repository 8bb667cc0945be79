"""The albert-ref model file: one HDF5 file holds one model (layout in FORMAT.md).

Reading validates everything before any of it is used; writing goes through a temporary
file renamed into place, so a failure never leaves a partial model behind.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import mmap
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np

from albert_ref.atomic import atomic_path
from albert_ref.config import AlbertConfig
from albert_ref.errors import ConfigError, InputError, ModelFileError
from albert_ref.memory import weight_copy
from albert_ref.pipeline import Pipeline
from albert_ref.tokenizer import DEFAULT_OPTIONS, check_options
from albert_ref.weights.names import encoder_shapes, head_shapes

FORMAT_NAME = "albert-ref"
FORMAT_VERSION = 2
# What a file of each readable version guarantees (`albert-ref info` states it).
GUARANTEES = {
    1: "format version 1: each tensor and the tokenizer have a SHA-256, but the config, the tokenizer options and "
       "which data belongs to which tensor name are covered by no stored checksum; the digest is computed on "
       "reading. Rewrite the file (`albert-ref convert OLD.h5 NEW.h5`) for version 2's guarantee",
    2: "format version 2: a manifest of the config, the tokenizer (bytes' SHA-256 and options), every tensor's "
       "name, shape, dtype and SHA-256 and the sentence-embedding pipeline (if any) is stored with its digest and "
       "checked on reading",
}
# The attributes each object may carry; anything else in a file is refused.
_ROOT_ATTRS = {1: {"format", "format_version", "config", "provenance"},
               2: {"format", "format_version", "config", "provenance", "manifest", "digest", "pipeline"}}


class ChecksumError(ModelFileError):
    """A tensor's or the tokenizer's data does not match its stored SHA-256: the file is
    damaged. Everything else about it was valid up to that dataset."""


class ManifestError(ModelFileError):
    """A version-2 file's contents (config, tokenizer, tensor names, shapes, dtypes,
    checksums) differ from its manifest, or the manifest from its digest."""


@dataclasses.dataclass
class ModelFile:
    config: AlbertConfig
    tensors: dict[str, np.ndarray]
    spm_model: bytes | None = None
    tokenizer_options: dict = dataclasses.field(default_factory=lambda: dict(DEFAULT_OPTIONS))
    provenance: dict = dataclasses.field(default_factory=dict)
    # SHA-256 per tensor and of the tokenizer bytes, as stored in the file read (checked
    # against the data unless read with verify=False) or as computed by write_model; the
    # digest uses them instead of hashing the data again, and hashes whatever is missing.
    checksums: dict | None = dataclasses.field(default=None, repr=False, compare=False)
    tokenizer_checksum: str | None = dataclasses.field(default=None, repr=False, compare=False)
    # The version of the file read (GUARANTEES says what it promises); write_model always
    # writes FORMAT_VERSION.
    format_version: int = dataclasses.field(default=FORMAT_VERSION, compare=False)
    # A sentence-embedding pipeline (sentence-transformers models); its Dense weights are
    # among `tensors`, named by albert_ref.pipeline.dense_names.
    pipeline: Pipeline | None = None
    # Set by read_model(..., convert=...) only: the tensors' manifest entries, made as they were
    # read, since `tensors` then holds converted forms (a backend's packed copies).
    tensor_entries: dict | None = dataclasses.field(default=None, repr=False, compare=False)

    def __post_init__(self):
        self.tokenizer_options = check_tokenizer_options({**DEFAULT_OPTIONS, **self.tokenizer_options}
                                                         if isinstance(self.tokenizer_options, dict)
                                                         else self.tokenizer_options)

    @property
    def heads(self) -> tuple[str, ...]:
        return tuple(h for h, names in head_shapes(self.config).items() if set(names) <= set(self.tensors))

    def manifest(self) -> dict:
        """Everything that decides an output: the config, the tokenizer's bytes (SHA-256
        and length) and options, every tensor's name, shape, dtype and SHA-256, and the
        pipeline when there is one (absent otherwise, so that files without one keep
        their digests)."""
        known = self.checksums or {}
        entries = self.tensor_entries or {n: tensor_entry(t, known.get(n)) for n, t in self.tensors.items()}
        return {"config": self.config.to_dict(),
                "tensors": dict(sorted(entries.items())),
                "tokenizer": tokenizer_entry(self.spm_model, self.tokenizer_options, self.tokenizer_checksum),
                **({"pipeline": self.pipeline.to_dict()} if self.pipeline else {})}

    @property
    def digest(self) -> str:
        """SHA-256 of the canonical manifest: two models with the same digest compute the
        same function."""
        return hashlib.sha256(canonical_json(self.manifest()).encode()).hexdigest()


def tensor_entry(array, checksum: str | None = None) -> dict:
    """The manifest's record of a tensor: shape, dtype and SHA-256 (hashed unless given)."""
    return {"shape": list(array.shape), "dtype": array.dtype.str, "sha256": checksum or sha256(array)}


def tokenizer_entry(spm_model: bytes | None, options: dict, checksum: str | None = None) -> dict | None:
    """The manifest's record of a tokenizer: its bytes' length and SHA-256, and its options."""
    if spm_model is None:
        return None
    return {"bytes": len(spm_model), "sha256": checksum or sha256(spm_model), "options": options}


def canonical_json(doc) -> str:
    """The one serialisation hashed into a digest: sorted keys, no spaces, ASCII."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def check_tokenizer_options(options) -> dict:
    """tokenizer.check_options, failing as a ModelFileError."""
    try:
        return check_options(options)
    except InputError as exc:
        raise ModelFileError(str(exc)) from None


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


def check_tensors(config: AlbertConfig, tensors: dict, where: str = "", finite: bool = True,
                  pipeline: Pipeline | None = None) -> None:
    """Names, shapes, dtype and (finite=True) finiteness of a model's tensors against its
    config and its pipeline's Dense layers, if any; with finite=False the values may be
    anything with a shape and a dtype (an h5py dataset, checked before its data is read)."""
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
        if finite:
            check_finite(name, array, where)


def check_finite(name: str, array: np.ndarray, where: str = "") -> None:
    """Raise ModelFileError naming the first NaN or infinity in a tensor."""
    # The sum is finite only if every term is (IEEE additions propagate NaN and infinities):
    # one pass at memory speed, no tensor-sized temporary. A finite tensor whose sum
    # overflows gets the exact test.
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(np.add.reduce(array, axis=None)):
            return
    if not np.isfinite(array).all():
        bad = np.argwhere(~np.isfinite(array))[0]
        raise ModelFileError(f"{where}tensor {name}: non-finite value {array[tuple(bad)]} at index {tuple(bad.tolist())}")


def write_model(path, model: ModelFile) -> None:
    """Validate `model` and write it to `path` atomically. The checksums written are
    recorded on `model` too, so that its digest does not hash the tensors again."""
    path = Path(path)
    check_tensors(model.config, model.tensors, pipeline=model.pipeline)
    checksums, tokenizer_checksum = {}, None
    # libver v110 (HDF5 >= 1.10 reads it): object headers, heaps and B-trees carry
    # checksums, so that damaged metadata is an error on reading. Text attributes are
    # fixed-length byte strings: variable-length ones live in the global heap, which has no
    # checksum and on which a damaged file can make HDF5 loop forever.
    with atomic_path(path) as tmp, h5py.File(tmp, "w", libver=("v110", "v110")) as f:
        _set_text(f, "format", FORMAT_NAME)
        f.attrs["format_version"] = FORMAT_VERSION
        _set_text(f, "config", model.config.to_json())
        _set_text(f, "provenance", json.dumps(model.provenance, sort_keys=True))
        if model.pipeline is not None:
            _set_text(f, "pipeline", model.pipeline.to_json())
        weights = f.create_group("weights")
        for name in sorted(model.tensors):
            array = np.ascontiguousarray(model.tensors[name], dtype="<f4")
            ds = weights.create_dataset(name, data=array)
            checksums[name] = sha256(array)
            _set_text(ds, "sha256", checksums[name])
        if model.spm_model is not None:
            tok = f.create_group("tokenizer")
            ds = tok.create_dataset("sentencepiece", data=np.frombuffer(model.spm_model, dtype=np.uint8))
            tokenizer_checksum = sha256(model.spm_model)
            _set_text(ds, "sha256", tokenizer_checksum)
            _set_text(tok, "options", json.dumps(model.tokenizer_options, sort_keys=True))
        model.checksums, model.tokenizer_checksum = checksums, tokenizer_checksum
        manifest = canonical_json(model.manifest())
        _set_text(f, "manifest", manifest)
        _set_text(f, "digest", hashlib.sha256(manifest.encode()).hexdigest())
    model.format_version = FORMAT_VERSION


def _set_text(obj, name: str, text: str) -> None:
    obj.attrs[name] = np.bytes_(text.encode("utf-8"))


def read_model(path, verify: bool = True, convert=None) -> ModelFile:
    """Read and validate a model file; `verify=False` skips only the SHA-256 checks (the
    stored checksums are returned either way: the digest is made from them).

    convert(name, array), if given, is applied to each tensor as soon as its layout, shape,
    dtype and finiteness have been checked, and `tensors` holds its results. `array` is a
    read-only view of the file's memory map (where the file can be mapped) whose SHA-256
    may still be being checked: a mismatch fails the read afterwards. A result that is such
    a view is copied; one that keeps such a view inside another object is reported as a
    bug. A backend packing its weights this way never holds all of the file's arrays and
    all of their packed copies at once (for xlarge, 235 MB less at the peak). Nothing
    converted is returned unless the whole file is valid."""
    return _reading(path, lambda f, path: _read(f, path, verify, convert))


@dataclasses.dataclass
class ModelHeader:
    """What `read_header` reads of a model file: everything but the tensors' data."""
    config: AlbertConfig
    spm_model: bytes | None
    tokenizer_options: dict
    pipeline: Pipeline | None
    digest: str


def read_header(path) -> ModelHeader:
    """The config, tokenizer, pipeline and digest of a model file without keeping its
    tensors (for `albert-ref tokenize`, and for a Dask client whose workers load the
    model). Validated as read_model validates them: the tokenizer's bytes against their
    SHA-256 and, in a version-2 file, config, tokenizer and pipeline against the manifest,
    whose digest is checked; a version-2 file's tensors are not read. A version-1 file has
    no manifest: its digest is made from each tensor's shape, dtype and stored checksum,
    its tensors are read once, checked as read_model checks them without verifying (finite
    values), and none is kept."""
    def read(f, path):
        header = version, config, manifest, pipeline = _read_header(f, path)
        if manifest is None:
            model = _read(f, path, verify=False, convert=_keep_none, header=header)
            return ModelHeader(config, model.spm_model, model.tokenizer_options, pipeline, model.digest)
        spm_model, checksum, options = _read_tokenizer(f, _walk(f, path), path, verify=True)
        actual = {"config": config.to_dict(), "tokenizer": tokenizer_entry(spm_model, options, checksum),
                  **({"pipeline": pipeline.to_dict()} if pipeline else {})}
        _check_sections(actual, manifest, path)
        return ModelHeader(config, spm_model, options, pipeline, _attr(f, "digest", path))
    return _reading(path, read)


def _reading(path, read):
    """read(open h5py file, path), with every failure of a damaged file a ModelFileError."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise ModelFileError(f"{path}: not a readable HDF5 file (truncated or corrupt?): {exc}") from None
    try:
        with f:
            return read(f, path)
    except _NotTheFile as exc:   # a converter's failure (an unknown isa, no GPU, no memory): its own error
        raise exc.__cause__ from None
    except ModelFileError:
        raise
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as exc:
        # h5py reports damaged metadata and data blocks this way.
        raise ModelFileError(f"{path}: corrupt model file: {exc}") from None


class _NotTheFile(Exception):
    """Carries (as its __cause__) an error raised while a valid tensor was converted or kept,
    past _reading's translation of h5py's errors into a corrupt file."""


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
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, a 5,000-digit int, deep nesting
        raise ModelFileError(f"{path}: attribute {obj.name}:{name} is not valid JSON: {exc}") from None


def _check_attrs(obj, allowed, path) -> None:
    unexpected = sorted(set(obj.attrs) - set(allowed))
    if unexpected:
        raise ModelFileError(f"{path}: unexpected attribute(s) on {obj.name}: {', '.join(unexpected)}")


def _read_header(f: h5py.File, path: Path):
    """The root attributes, checked: (format version, config, manifest or None, pipeline or None)."""
    if _attr(f, "format", path) != FORMAT_NAME:
        raise ModelFileError(f"{path}: not an albert-ref model file (format {f.attrs['format']!r})")
    version = _attr(f, "format_version", path, int)
    if version not in _ROOT_ATTRS:
        raise ModelFileError(f"{path}: format_version {version} is not supported (this albert-ref reads "
                             f"{', '.join(map(str, _ROOT_ATTRS))})")
    _check_attrs(f, _ROOT_ATTRS[version], path)
    try:
        config = AlbertConfig.from_dict(_json_attr(f, "config", path))
    except ConfigError as exc:
        raise ModelFileError(f"{path}: invalid config: {exc}") from None
    manifest = _read_manifest(f, path) if version >= 2 else None
    pipeline = None
    if "pipeline" in f.attrs:
        try:
            pipeline = Pipeline.from_dict(_json_attr(f, "pipeline", path))
        except (ModelFileError, TypeError) as exc:
            raise ModelFileError(f"{path}: invalid pipeline: {exc}") from None
    return version, config, manifest, pipeline


def _read_tokenizer(f: h5py.File, datasets: dict, path: Path, verify: bool):
    """(sentencepiece bytes or None, their checksum, the options), checked."""
    if "tokenizer/sentencepiece" not in datasets:
        return None, None, dict(DEFAULT_OPTIONS)
    ds = datasets["tokenizer/sentencepiece"]
    _check_attrs(ds, {"sha256"}, path)
    if ds.dtype != np.uint8 or ds.ndim != 1:
        raise ModelFileError(f"{path}: tokenizer/sentencepiece must be a 1-D uint8 dataset")
    spm_model, checksum = _read_dataset(ds, "tokenizer/sentencepiece", path, verify)
    try:
        options = check_tokenizer_options(_json_attr(f["tokenizer"], "options", path))
    except ModelFileError as exc:
        raise ModelFileError(f"{path}: {exc}") from None
    return spm_model.tobytes(), checksum, options


def _keep_none(name, array):
    """A converter that keeps no tensor: the manifest entries are all read_header needs."""
    return None


def _read(f: h5py.File, path: Path, verify: bool, convert=None, header=None) -> ModelFile:
    """header: _read_header's result, when the caller has it already."""
    version, config, manifest, pipeline = header or _read_header(f, path)
    provenance = _json_attr(f, "provenance", path)
    datasets = _walk(f, path)
    unexpected = sorted(n for n in datasets if not n.startswith("weights/") and n != "tokenizer/sentencepiece")
    if unexpected:
        raise ModelFileError(f"{path}: unexpected object(s): {', '.join(unexpected)}")
    weights = {name[8:]: ds for name, ds in datasets.items() if name.startswith("weights/")}
    for name, ds in weights.items():
        _check_attrs(ds, {"sha256"}, path)
        if ds.dtype != np.dtype("<f4"):
            raise ModelFileError(f"{path}: tensor {name}: dtype {ds.dtype}, expected little-endian float32")
    check_tensors(config, weights, f"{path}: ", finite=False, pipeline=pipeline)  # before reading any data
    # Unverified, the data is trusted to match the manifest (whose integrity the digest has
    # confirmed); the per-dataset attributes are checked against the data only when
    # verifying, so that a damaged one can still be described (`albert-ref info`).
    trusted = manifest is not None and not verify
    listed = manifest["tensors"] if trusted and isinstance(manifest["tensors"], dict) else {}
    tensors, checksums, entries = {}, {}, {}
    data = _MappedData(f, path)
    hasher = ThreadPoolExecutor(1, thread_name_prefix="albert-ref-sha256")
    read = False
    try:
        arrays = {name: data.view(ds, name) for name, ds in weights.items()}
        # the datasets' own checksum attributes, unless the (trusted) manifest gives them
        stored = {} if trusted else {name: _stored_checksum(ds, path, verify) for name, ds in weights.items()}

        def hashing(name, array):
            return hasher.submit(data.released, _verified, array, stored[name], name, path)
        # Hashing is the slowest step, so the hasher thread starts on every tensor now and
        # runs ahead (hashlib releases the GIL) while each is checked and converted here,
        # in order; a damaged tensor's ChecksumError takes precedence over its other errors.
        hashes = {name: hashing(name, array) for name, array in arrays.items() if array is not None} if verify else {}
        for name, ds in weights.items():
            array = arrays.pop(name)
            if array is None:   # the file could not be mapped: read by h5py, one tensor at a time
                array = ds[()]
                if verify:
                    hashes[name] = hashing(name, array)
            try:
                check_finite(name, array, f"{path}: ")
                try:
                    result = array if convert is None else convert(name, array)
                    # Nothing returned may keep the map alive: copy what still reads from it.
                    tensors[name] = weight_copy(result) if data.on_map(result) else result
                except Exception as exc:
                    raise _NotTheFile() from exc
            finally:
                checksum = hashes.pop(name).result() if verify else stored.get(name)
            if trusted:
                checksum = listed[name].get("sha256") if isinstance(listed.get(name), dict) else None
            if convert is not None:   # the manifest's entry, while the file's array is still here
                entries[name] = tensor_entry(array, checksum)
                checksum = entries[name]["sha256"]
            checksums[name] = checksum
            data.release(array)
            del array, result
        read = True
    finally:
        hasher.shutdown(cancel_futures=True)
        data.close(strict=read)

    spm_model, spm_checksum, options = _read_tokenizer(f, datasets, path, verify)
    if trusted and isinstance(manifest["tokenizer"], dict):
        spm_checksum = manifest["tokenizer"].get("sha256")
    checksums = {n: c for n, c in checksums.items() if c is not None}
    model = ModelFile(config, tensors, spm_model, options, provenance, checksums, spm_checksum, version, pipeline,
                      entries if convert is not None else None)
    if manifest is not None:
        _check_manifest(model.manifest(), manifest, path)
    return model


def _read_manifest(f: h5py.File, path: Path) -> dict:
    """The stored manifest, after checking it against the stored digest and that it is in
    canonical form (the digest is then the one ModelFile.digest computes)."""
    text, digest = _attr(f, "manifest", path), _attr(f, "digest", path)
    if hashlib.sha256(text.encode()).hexdigest() != digest:
        raise ManifestError(f"{path}: the manifest does not match the stored digest: the file is corrupt")
    manifest = _json_attr(f, "manifest", path)
    try:
        canonical = canonical_json(manifest) == text
    except ValueError:   # NaN or Infinity in it
        canonical = False
    if not canonical:
        raise ManifestError(f"{path}: the manifest is not in canonical form: the file was altered or is corrupt")
    if not isinstance(manifest, dict) or not {"config", "tensors", "tokenizer"} <= set(manifest) <= {
            "config", "tensors", "tokenizer", "pipeline"}:
        raise ManifestError(f"{path}: the manifest is not an object with config, tensors, tokenizer "
                            f"(and, for a sentence-embedding model, pipeline)")
    return manifest


def _check_manifest(actual: dict, stored: dict, path: Path) -> None:
    """Raise ManifestError naming the first field where the file's contents and its
    manifest differ."""
    if canonical_json(actual) == canonical_json(stored):
        return
    _check_sections(actual, stored, path)
    listed = stored["tensors"] if isinstance(stored["tensors"], dict) else {}
    extra, missing = sorted(set(actual["tensors"]) - set(listed)), sorted(set(listed) - set(actual["tensors"]))
    if extra or missing:
        raise ManifestError(f"{path}: the tensors differ from the manifest (not listed: {', '.join(extra) or 'none'}; "
                            f"listed but absent: {', '.join(missing) or 'none'}): the file was altered or is corrupt")
    owners = {entry.get("sha256"): name for name, entry in listed.items() if isinstance(entry, dict)}
    for name, entry in actual["tensors"].items():
        if entry != listed[name]:
            other = owners.get(entry["sha256"])
            if other is not None and other != name:
                raise ManifestError(f"{path}: tensor {name} holds the data the manifest lists for {other} "
                                    f"(swapped or re-labelled tensors): the file was altered or is corrupt")
            where = _first_difference(entry, listed[name], f"tensor {name}")
            raise ManifestError(f"{path}: {where}: the file was altered or is corrupt")


def _check_sections(actual: dict, stored: dict, path: Path) -> None:
    """Raise ManifestError naming the first difference in config, tokenizer or pipeline."""
    for section in ("config", "tokenizer", "pipeline"):
        if actual.get(section) != stored.get(section):
            where = _first_difference(actual.get(section), stored.get(section), section)
            raise ManifestError(f"{path}: {where}: the file was altered or is corrupt")


def _first_difference(actual, stored, where: str) -> str:
    if isinstance(actual, dict) and isinstance(stored, dict):
        for key in sorted(set(actual) | set(stored)):
            if actual.get(key, "<absent>") != stored.get(key, "<absent>"):
                return _first_difference(actual.get(key, "<absent>"), stored.get(key, "<absent>"), f"{where}.{key}")
    return f"{where} is {json.dumps(actual)[:80]}, the manifest says {json.dumps(stored)[:80]}"


def _walk(f: h5py.File, path: Path) -> dict[str, h5py.Dataset]:
    """Every dataset below the root. Refused: links other than hard links (they could
    point outside the file), an object reachable by two names (an alias makes one tensor
    pass for another), groups that hold no dataset, and anything not a group or dataset."""
    found, groups = {}, []

    def visit(group, prefix):
        for key in group:
            link = group.get(key, getlink=True)
            if not isinstance(link, h5py.HardLink):
                raise ModelFileError(f"{path}: {prefix}{key} is a {type(link).__name__}; only plain objects are allowed")
            obj = group[key]
            if h5py.h5o.get_info(obj.id).rc != 1:
                raise ModelFileError(f"{path}: {prefix}{key} is linked more than once (an alias of another object)")
            if isinstance(obj, h5py.Group):
                groups.append(f"{prefix}{key}/")
                _check_attrs(obj, {"options"} if obj.name == "/tokenizer" else set(), path)
                visit(obj, f"{prefix}{key}/")
            elif isinstance(obj, h5py.Dataset):
                found[prefix + key] = obj
            else:
                raise ModelFileError(f"{path}: {prefix}{key} is an unexpected {type(obj).__name__}")

    visit(f, "")
    empty = sorted(g for g in groups if not any(name.startswith(g) for name in found))
    if empty:
        raise ModelFileError(f"{path}: unexpected object(s): {', '.join(g.rstrip('/') for g in empty)} (holding no data)")
    return found


def _read_dataset(ds: h5py.Dataset, name: str, path: Path, verify: bool):
    """A small dataset's data (the tokenizer's bytes) and its stored SHA-256, checked when verifying."""
    _check_layout(ds, name, path)
    array = ds[()]
    stored = _stored_checksum(ds, path, verify)
    return array, _verified(array, stored, name, path) if verify else stored


def _check_layout(ds: h5py.Dataset, name: str, path: Path) -> None:
    if ds.external or ds.is_virtual:
        raise ModelFileError(f"{path}: {name} uses external storage, which is refused")
    if ds.chunks is not None or ds.compression is not None:
        raise ModelFileError(f"{path}: {name} is chunked or compressed; the format stores contiguous data")


def _stored_checksum(ds: h5py.Dataset, path: Path, verify: bool) -> str | None:
    """The dataset's sha256 attribute. Verifying, it must be there (it is compared with the
    data); otherwise a missing or malformed one is None."""
    if verify:
        return _attr(ds, "sha256", path)
    stored = ds.attrs.get("sha256")
    if isinstance(stored, bytes):
        stored = stored.decode("ascii", "replace")
    return stored if isinstance(stored, str) and len(stored) == 64 and all(c in "0123456789abcdef" for c in stored) \
        else None


# Linux maps up to 64 KiB around a faulting page of a file (fault_around_bytes).
FAULT_AROUND = 1 << 16


class _MappedData:
    """The tensors' data, read through a read-only memory map of the file h5py has open (its
    own descriptor, so that it is the same file): nothing is copied before a tensor is
    checked and converted, and each of the hasher and the converter drops a tensor's pages
    when done with it (the other faults them back from the page cache), so that loading
    holds the converted tensors plus at most two of the file's.

    The layout is checked first (contiguous, uncompressed, inside the file). A file cut
    short while it is being read, or a read error of the disk beneath it, would fault the
    process (SIGBUS), as with any mapped file, instead of raising a ModelFileError; model
    files are written to a temporary name and renamed into place, never rewritten. Where
    the file system cannot map the file, h5py reads each tensor in turn instead."""

    def __init__(self, f: h5py.File, path: Path):
        self._path = path
        fd = f.id.get_vfd_handle()
        self._size = os.fstat(fd).st_size
        try:
            self._map = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError):   # a file system that cannot map files: h5py reads them
            self._map = self._bytes = None
        else:
            self._bytes = np.frombuffer(self._map, dtype=np.uint8)

    def view(self, ds: h5py.Dataset, name: str) -> np.ndarray | None:
        """The dataset's data as a read-only array on the map, or None when the file is not
        mapped (the caller reads it then); read by h5py when the dataset has no storage
        (its fill values)."""
        _check_layout(ds, name, self._path)
        offset = ds.id.get_offset()
        if offset is None:
            return ds[()]
        if self._map is None:
            return None
        end = offset + ds.size * ds.dtype.itemsize
        if ds.id.get_storage_size() != end - offset or end > self._size:
            raise ModelFileError(f"{self._path}: {name}: its data (bytes {offset}-{end}) does not lie within the "
                                 f"file's {self._size} bytes: the file is truncated or corrupt")
        return self._bytes[offset:end].view(ds.dtype).reshape(ds.shape)

    def release(self, array: np.ndarray) -> None:
        """Drop the array's pages from the process, and those within FAULT_AROUND of it: a
        fault maps the neighbouring pages too, and would leave a little of each tensor
        resident otherwise."""
        if not hasattr(mmap, "MADV_DONTNEED") or not self.on_map(array):   # h5py read it
            return
        start = array.ctypes.data - self._bytes.ctypes.data
        first = max(0, start - FAULT_AROUND) // mmap.PAGESIZE * mmap.PAGESIZE
        end = min(self._size, start + array.nbytes + FAULT_AROUND)
        self._map.madvise(mmap.MADV_DONTNEED, first, end - first)

    def released(self, fn, array, *args):
        """fn(array, *args), then release(array): for the hasher thread."""
        try:
            return fn(array, *args)
        finally:
            self.release(array)

    def on_map(self, value) -> bool:
        """Whether `value` is an array that reads from the map."""
        return self._bytes is not None and isinstance(value, np.ndarray) and np.may_share_memory(value, self._bytes)

    def close(self, strict: bool) -> None:
        """Unmap. An array still on the map makes that fail: after a failed read, one in its
        traceback (unmapped when it goes); after a successful one (strict), a converter's
        result that kept a view, which is a bug to report."""
        if self._map is None:
            return
        self._bytes = None
        try:
            self._map.close()
        except BufferError:
            if strict:
                raise _NotTheFile() from RuntimeError(f"{self._path}: a converted tensor still reads from the "
                                                      f"file's memory map (a backend's prepare kept a view)")


def _verified(array, stored: str, name: str, path: Path) -> str:
    actual = sha256(array)
    if actual != stored:
        raise ChecksumError(f"{path}: {name}: SHA-256 mismatch (stored {stored[:16]}..., data {actual[:16]}...): the file is corrupt")
    return stored
