"""Read a sentence-transformers ALBERT directory: the transformer plus its pipeline.

modules.json lists the modules in order: a Transformer (at the root, path "", or in a
subfolder such as 0_Transformer/, with sentence_bert_config.json beside it), a Pooling
(config.json: `pooling_mode` as a name or list, or the legacy `pooling_mode_*_token(s)`
flags), any number of Dense (config.json and linear.weight/linear.bias as safetensors or
.bin) and an optional Normalize. The transformer is read by hf_source; anything this
engine does not run exactly is refused by name rather than skipped.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from albert_ref.errors import ConversionError, ModelFileError
from albert_ref.pipeline import POOLING_MODES, ST_DENSE_ACTIVATIONS, Dense, Pipeline, dense_names

from .hf_source import HFModel, read_huggingface, read_safetensors
from .model_file import file_sha256, sha256
from .torch_pickle import load_torch_state_dict

__all__ = ["STModel", "read_sentence_transformers"]

# sentence-transformers' legacy Pooling flags, in the order it concatenates the modes.
_LEGACY_POOLING = {"pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max",
                   "pooling_mode_mean_tokens": "mean", "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
                   "pooling_mode_weightedmean_tokens": "weightedmean", "pooling_mode_lasttoken": "lasttoken"}
_UNSET_LENGTH = 10 ** 18  # transformers writes int(1e30) as model_max_length when there is none


@dataclasses.dataclass(frozen=True)
class STModel:
    hf: HFModel  # the transformer, its tokenizer options already merged with the pipeline's
    pipeline: Pipeline
    dense_tensors: dict[str, np.ndarray]  # dense_names -> float32, kernels [in, out]
    sources: dict[str, str]  # every file read, by path relative to the directory -> SHA-256
    notes: tuple[str, ...]


def read_sentence_transformers(directory: str | Path) -> STModel:
    """Read the directory; ConversionError names the file and field at fault."""
    directory = Path(directory)
    sources: dict[str, str] = {}
    modules = _modules(directory, sources)
    kinds = [kind for kind, _ in modules]
    if kinds[:2] != ["Transformer", "Pooling"] or "Normalize" in kinds[:-1] or \
            any(k not in ("Dense", "Normalize") for k in kinds[2:]):
        raise ConversionError(f"{directory / 'modules.json'}: the pipeline is {' -> '.join(kinds)}; albert-ref runs "
                              f"Transformer -> Pooling -> Dense (any number) -> Normalize (optional)")
    root = modules[0][1]
    hf = read_huggingface(root)
    if hf.spm_model is None:
        raise ConversionError(f"{root}: no tokenizer (spiece.model or tokenizer.json); a sentence-transformers "
                              f"model embeds texts")
    sources.update({_rel(root / name, directory): digest for name, digest in hf.sources.items()})
    notes = list(hf.notes)
    st_config = _json(root / "sentence_bert_config.json", directory, sources, required=False) or {}
    max_len = _max_seq_length(st_config, hf, root, directory, notes)
    options = dict(hf.tokenizer_options)
    lower = st_config.get("do_lower_case", False)
    if not isinstance(lower, bool):
        raise ConversionError(f"{root / 'sentence_bert_config.json'}: do_lower_case must be true or false")
    options["do_lower_case"] = options["do_lower_case"] or lower  # sentence-transformers turns it on, never off
    hf = dataclasses.replace(hf, tokenizer_options=options)

    pooling = _pooling(modules[1][1], directory, sources, hf.config.hidden_size)
    dense, tensors = [], {}
    for kind, path in modules[2:]:
        if kind == "Dense":
            layer, weights = _dense(path, directory, sources, len(dense))
            dense.append(layer)
            tensors.update(weights)
    try:
        pipeline = Pipeline(pooling, max_len, tuple(dense), kinds[-1] == "Normalize")
        pipeline.check_against(hf.config.hidden_size, hf.config.max_position_embeddings)
    except ModelFileError as exc:
        raise ConversionError(f"{directory}: {exc}") from None
    return STModel(hf, pipeline, tensors, sources, tuple(notes))


def _rel(path: Path, directory: Path) -> str:
    return path.relative_to(directory).as_posix()


def _json(path: Path, directory: Path, sources: dict, required: bool = True, kind: type = dict):
    """The JSON `kind` (object or list) in `path`, read once and hashed into `sources`."""
    if not path.is_file():
        if required:
            raise ConversionError(f"{path}: missing")
        return None
    try:
        data = path.read_bytes()
        value = json.loads(data)
    except OSError as exc:
        raise ConversionError(f"cannot read {path}: {exc}") from None
    except (ValueError, RecursionError) as exc:  # bad UTF-8 or JSON, too deep, a 5,000-digit int
        raise ConversionError(f"{path} is not valid JSON: {exc}") from None
    sources[_rel(path, directory)] = sha256(data)
    if not isinstance(value, kind):
        raise ConversionError(f"{path} must hold a JSON {'object' if kind is dict else 'list'}")
    return value


def _modules(directory: Path, sources: dict) -> list[tuple[str, Path]]:
    """(class name, folder) per module, in pipeline order."""
    where = directory / "modules.json"
    entries = _json(where, directory, sources, kind=list)
    if not entries:
        raise ConversionError(f"{where} must be a non-empty JSON list of modules")
    out = []
    def idx(entry):  # the listed order where idx is missing or malformed
        return entry["idx"] if isinstance(entry, dict) and isinstance(entry.get("idx"), int) else 0

    for n, entry in enumerate(sorted(entries, key=idx)):
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str) or \
                not isinstance(entry.get("type"), str):
            raise ConversionError(f"{where}: module {n} needs a string 'path' and 'type'")
        path = (directory / entry["path"]).resolve()
        if path != directory.resolve() and directory.resolve() not in path.parents:
            raise ConversionError(f"{where}: module path {entry['path']!r} leads outside the directory")
        if not path.is_dir():
            raise ConversionError(f"{where}: module folder {entry['path']!r} does not exist")
        kind = entry["type"].rsplit(".", 1)[-1]
        if kind not in ("Transformer", "Pooling", "Dense", "Normalize"):
            raise ConversionError(f"{where}: module {entry['type']} is not supported (albert-ref runs Transformer, "
                                  f"Pooling, Dense and Normalize)")
        out.append((kind, directory / entry["path"]))
    return out


def _max_seq_length(st_config: dict, hf: HFModel, root: Path, directory: Path, notes: list) -> int:
    """sentence_bert_config's max_seq_length, else the tokenizer's model_max_length, capped
    at max_position_embeddings as sentence-transformers caps it."""
    limit = hf.config.max_position_embeddings
    value = st_config.get("max_seq_length")
    where = root / "sentence_bert_config.json"
    if value is None:
        tok = root / "tokenizer_config.json"
        value = (_json(tok, directory, {}, required=False) or {}).get("model_max_length")
        where = tok
        if not isinstance(value, int) or value >= _UNSET_LENGTH:
            return limit
    if isinstance(value, bool) or not isinstance(value, int) or value < 2:
        raise ConversionError(f"{where}: max_seq_length must be an integer of at least 2, not {value!r}")
    if value > limit:
        notes.append(f"max_seq_length {value} capped at max_position_embeddings {limit}")
        return limit
    return value


def _pooling(folder: Path, directory: Path, sources: dict, hidden: int) -> tuple[str, ...]:
    where = folder / "config.json"
    config = _json(where, directory, sources)
    width = config.get("embedding_dimension", config.get("word_embedding_dimension"))
    if width != hidden:
        raise ConversionError(f"{where}: embedding dimension {width!r}, but the transformer's hidden size is {hidden}")
    if "pooling_mode" in config:
        mode = config["pooling_mode"]
        modes = (mode,) if isinstance(mode, str) else tuple(mode) if isinstance(mode, list) else None
    else:
        modes = tuple(m for key, m in _LEGACY_POOLING.items() if config.get(key) is True) or ("mean",)
    if not modes or not all(isinstance(m, str) for m in modes):
        raise ConversionError(f"{where}: pooling_mode must be a mode name or a list of them")
    unsupported = [m for m in modes if m not in POOLING_MODES]
    if unsupported:
        raise ConversionError(f"{where}: pooling mode(s) {', '.join(unsupported)} not supported "
                              f"(albert-ref runs {', '.join(POOLING_MODES)})")
    return modes


def _dense(folder: Path, directory: Path, sources: dict, i: int) -> tuple[Dense, dict[str, np.ndarray]]:
    where = folder / "config.json"
    config = _json(where, directory, sources)
    activation = config.get("activation_function", "torch.nn.modules.activation.Tanh")
    if activation not in ST_DENSE_ACTIVATIONS:
        raise ConversionError(f"{where}: activation_function {activation!r} is not supported "
                              f"(albert-ref runs {', '.join(ST_DENSE_ACTIVATIONS)})")
    try:
        layer = Dense(config["in_features"], config["out_features"], config.get("bias", True),
                      ST_DENSE_ACTIVATIONS[activation])
    except KeyError as exc:
        raise ConversionError(f"{where}: missing {exc.args[0]}") from None
    state = _dense_state(folder, directory, sources)
    expected = {"linear.weight": (layer.out_features, layer.in_features)}
    if layer.bias is True:
        expected["linear.bias"] = (layer.out_features,)
    if set(state) != set(expected):
        raise ConversionError(f"{folder}: Dense weights must be exactly {', '.join(expected)}; found "
                              f"{', '.join(state) or 'none'}")
    for name, shape in expected.items():
        array = state[name]
        if array.shape != shape or array.dtype not in (np.float32, np.float16, np.float64):
            raise ConversionError(f"{folder}: {name} is {array.dtype} {tuple(array.shape)}; "
                                  f"config.json needs floating point {shape}")
    kernel, bias = dense_names(i)
    tensors = {kernel: np.ascontiguousarray(state["linear.weight"].astype(np.float32).T)}
    if layer.bias is True:
        tensors[bias] = np.ascontiguousarray(state["linear.bias"], dtype=np.float32)
    return layer, tensors


def _dense_state(folder: Path, directory: Path, sources: dict) -> dict[str, np.ndarray]:
    for name, read in (("model.safetensors", read_safetensors), ("pytorch_model.bin", load_torch_state_dict)):
        path = folder / name
        if path.is_file():
            try:
                sources[_rel(path, directory)] = file_sha256(path)
            except OSError as exc:
                raise ConversionError(f"cannot read {path}: {exc}") from None
            return read(path)
    raise ConversionError(f"{folder} holds no Dense weights (model.safetensors or pytorch_model.bin)")
