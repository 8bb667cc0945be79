"""Read a Hugging Face ALBERT directory into float32 tensors under the original TF names.

The directory holds config.json, the weights (model.safetensors, preferred, or
pytorch_model.bin, either possibly sharded behind an *.index.json), and optionally
spiece.model and tokenizer_config.json, or, as transformers 5 saves it, tokenizer.json
without spiece.model (tokenizer_json.py: the "huggingface-fast" flavour). Tensor names
are mapped to the TF variable names of weights/names.py and nn.Linear weights
transposed from torch's [out, in] to TF's [in, out]. Task heads this engine does not run
(`classifier`, `qa_outputs`) are skipped and recorded in `HFModel.notes`; any other
unknown tensor is refused, so a mapping gap can never silently drop weights.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open

from albert_ref.config import AlbertConfig
from albert_ref.errors import ConfigError, ConversionError
from albert_ref.tokenizer import DEFAULT_OPTIONS

from .model_file import file_sha256, sha256
from .names import EMB, MAPPING, MLM, POOLER, SOP, block_prefix, encoder_shapes, head_shapes
from .tokenizer_json import read_tokenizer_json
from .torch_pickle import bfloat16_to_float32, load_torch_state_dict

__all__ = ["HFModel", "read_huggingface", "WEIGHT_FILES"]

# In order of preference.
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
# A Hugging Face tokenizer: the slow one (spiece.model), unless tokenizer.json alone names the fast one.
TOKENIZER_DEFAULTS = {**DEFAULT_OPTIONS, "flavour": "huggingface"}
_CONFIG_OPTIONS = [k for k in DEFAULT_OPTIONS if k != "flavour"]  # the booleans tokenizer_config.json may give

# Buffers, not weights: index ranges Hugging Face rebuilds itself.
_BUFFERS = {"embeddings.position_ids", "embeddings.token_type_ids"}
# Fine-tuning heads (sequence/token classification, multiple choice, QA): not ALBERT.
_TASK_HEADS = ("classifier.", "qa_outputs.")
# Tied copies: each alias must equal its target, which is then the only one kept.
_ALIASES = {"predictions.decoder.weight": "embeddings.word_embeddings.weight",
            "predictions.decoder.bias": "predictions.bias"}

# torch parameter -> (TF suffix, transpose?)
_LINEAR = {"weight": ("kernel", True), "bias": ("bias", False)}
_LAYER_NORM = {"weight": ("gamma", False), "bias": ("beta", False)}
_SOP = {"weight": ("output_weights", False), "bias": ("output_bias", False)}  # TF keeps [2, H] too
# Module inside albert_layer_groups.G.albert_layers.I -> (scope inside inner_group_I, params)
_LAYER_MODULES = {
    "attention.query": ("attention_1/self/query/", _LINEAR),
    "attention.key": ("attention_1/self/key/", _LINEAR),
    "attention.value": ("attention_1/self/value/", _LINEAR),
    "attention.dense": ("attention_1/output/dense/", _LINEAR),
    "attention.LayerNorm": ("LayerNorm/", _LAYER_NORM),
    "ffn": ("ffn_1/intermediate/dense/", _LINEAR),
    "ffn_output": ("ffn_1/intermediate/output/dense/", _LINEAR),
    "full_layer_layer_norm": ("LayerNorm_1/", _LAYER_NORM),
}


@dataclasses.dataclass(frozen=True)
class HFModel:
    config: AlbertConfig
    tensors: dict[str, np.ndarray]  # TF name -> float32, C-contiguous, TF layout
    spm_model: bytes | None
    tokenizer_options: dict  # flavour (TOKENIZER_DEFAULTS, or tokenizer.json's) and tokenizer_config.json's booleans
    sources: dict[str, str]  # file name -> SHA-256 hex digest of every file read
    notes: tuple[str, ...] = ()  # what was skipped or rounded, for provenance


def read_huggingface(directory: str | Path) -> HFModel:
    """Read a Hugging Face ALBERT model directory; raise ConversionError on any problem."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ConversionError(f"{directory} is not a directory")
    sources: dict[str, str] = {}
    try:
        config = AlbertConfig.from_huggingface(_read_json(directory / "config.json", sources))
    except ConfigError as exc:
        raise ConversionError(f"{directory / 'config.json'}: {exc}") from None
    state, weights_name = _read_weights(directory, sources)
    tensors, notes = _map_tensors(state, config, str(directory / weights_name))
    spm_path, json_path = directory / "spiece.model", directory / "tokenizer.json"
    config_path = directory / "tokenizer_config.json"
    options, given = _tokenizer_options(config_path, sources)
    if spm_path.is_file():
        spm_model = _read_file(spm_path, sources)
    elif json_path.is_file():
        spm_model, fast = read_tokenizer_json(json_path, _read_json(json_path, sources))
        _check_agrees(fast, options, given, config_path)
        options = {**options, **fast}
    else:
        spm_model = None
    return HFModel(config, tensors, spm_model, options, sources, tuple(notes))


# -- files ------------------------------------------------------------------------------------

def _read_file(path: Path, sources: dict[str, str]) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConversionError(f"cannot read {path}: {exc}") from None
    sources[path.name] = sha256(data)
    return data


def _read_json(path: Path, sources: dict[str, str]):
    try:
        return json.loads(_read_file(path, sources))
    except (ValueError, RecursionError) as exc:  # bad UTF-8 or JSON, too deep, a 5,000-digit int
        raise ConversionError(f"{path} is not valid JSON: {exc}") from None


def _hash_file(path: Path, sources: dict[str, str]) -> None:
    try:
        sources[path.name] = file_sha256(path)
    except OSError as exc:
        raise ConversionError(f"cannot read {path}: {exc}") from None


def _check_agrees(fast: dict, options: dict, given: list, config_path: Path) -> None:
    """tokenizer_config.json's do_lower_case/keep_accents, where `given`, must be what
    tokenizer.json does: transformers 5 rebuilds the normalizer from them, transformers 4
    runs tokenizer.json's, and they must not disagree."""
    for key in ("do_lower_case", "keep_accents"):
        if key in given and options[key] != fast[key]:
            raise ConversionError(f"{config_path}: {key} is {options[key]}, but tokenizer.json's normalizer "
                                  f"{'does' if fast[key] else 'does not'} "
                                  f"{'lower-case' if key == 'do_lower_case' else 'keep accents'}")


def _tokenizer_options(path: Path, sources: dict[str, str]) -> tuple[dict[str, bool | str], list[str]]:
    """The tokenizer options tokenizer_config.json gives (defaults for the rest), and which
    it gives."""
    options = dict(TOKENIZER_DEFAULTS)
    if not path.is_file():
        return options, []
    data = _read_json(path, sources)
    if not isinstance(data, dict):
        raise ConversionError(f"{path} must hold a JSON object")
    given = [key for key in _CONFIG_OPTIONS if key in data]
    for key in given:
        if not isinstance(data[key], bool):
            raise ConversionError(f"{path}: {key} must be true or false, got {data[key]!r}")
        options[key] = data[key]
    return options, given


# -- weights ----------------------------------------------------------------------------------

def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    try:
        with safe_open(str(path), framework="np") as f:
            names = list(f.keys())
            bf16 = [n for n in names if f.get_slice(n).get_dtype() == "BF16"]
            tensors = {n: f.get_tensor(n) for n in names if n not in bf16}
    except (SafetensorError, OSError, ValueError, TypeError) as exc:
        raise ConversionError(f"{path}: corrupt or unreadable safetensors file: {exc}") from None
    if bf16:  # numpy has no bfloat16; safe_open has validated the header read here
        with path.open("rb") as f:
            header_size = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(header_size))
            for name in bf16:
                begin, end = header[name]["data_offsets"]
                f.seek(8 + header_size + begin)
                bits = np.frombuffer(f.read(end - begin), "<u2").reshape(header[name]["shape"])
                tensors[name] = bfloat16_to_float32(bits)
    return {n: tensors[n] for n in names}


def _read_weights(directory: Path, sources: dict[str, str]) -> tuple[dict[str, np.ndarray], str]:
    """The state dict from the preferred weights file present, and that file's name."""
    name = next((n for n in WEIGHT_FILES if (directory / n).is_file()), None)
    if name is None:
        raise ConversionError(f"{directory} holds no weights (looked for {', '.join(WEIGHT_FILES)})")
    read = read_safetensors if name.startswith("model.safetensors") else load_torch_state_dict
    if name.endswith(".index.json"):
        return _read_shards(directory / name, read, sources), name
    _hash_file(directory / name, sources)
    return read(directory / name), name


def _read_shards(index_path: Path, read, sources: dict[str, str]) -> dict[str, np.ndarray]:
    index = _read_json(index_path, sources)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map or \
            not all(isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()):
        raise ConversionError(f"{index_path} has no valid weight_map")
    state: dict[str, np.ndarray] = {}
    for shard in dict.fromkeys(weight_map.values()):
        if Path(shard).name != shard or shard in (".", ".."):
            raise ConversionError(f"{index_path} names a shard outside its directory: {shard!r}")
        path = index_path.parent / shard
        _hash_file(path, sources)
        for name, array in read(path).items():
            if weight_map.get(name) != shard:
                raise ConversionError(f"{path} holds {name}, which {index_path.name} assigns to "
                                      f"{weight_map.get(name, 'no shard')}")
            state[name] = array
    missing = [n for n in weight_map if n not in state]
    if missing:
        raise ConversionError(f"{index_path} lists tensors its shards lack: {', '.join(missing)}")
    return state


# -- names, layouts, checks -------------------------------------------------------------------

def name_table(config: AlbertConfig) -> dict[str, tuple[str, bool]]:
    """Hugging Face name (without `albert.`) -> (TF name, transpose?) for this config."""
    modules = {
        "embeddings.LayerNorm": (EMB + "LayerNorm/", _LAYER_NORM),
        "encoder.embedding_hidden_mapping_in": (MAPPING, _LINEAR),
        "pooler": (POOLER, _LINEAR),
        "predictions.dense": (MLM + "transform/dense/", _LINEAR),
        "predictions.LayerNorm": (MLM + "transform/LayerNorm/", _LAYER_NORM),
        "sop_classifier.classifier": (SOP, _SOP),
    }
    for g in config.used_groups:
        for i in range(config.inner_group_num):
            prefix = f"encoder.albert_layer_groups.{g}.albert_layers.{i}."
            for part, (scope, params) in _LAYER_MODULES.items():
                modules[prefix + part] = (block_prefix(g, i) + scope, params)
    table = {f"{hf}.{param}": (tf + suffix, transpose)
             for hf, (tf, params) in modules.items() for param, (suffix, transpose) in params.items()}
    for kind in ("word", "position", "token_type"):
        table[f"embeddings.{kind}_embeddings.weight"] = (f"{EMB}{kind}_embeddings", False)
    table["predictions.bias"] = (MLM + "output_bias", False)
    return table


def _canonical_names(state: dict[str, np.ndarray], where: str) -> dict[str, np.ndarray]:
    """Strip the `albert.` prefix of the *For* models and fold tied aliases into their targets."""
    out: dict[str, np.ndarray] = {}
    for name, array in state.items():
        short = name.removeprefix("albert.")
        if short in out:
            raise ConversionError(f"{where}: {short} appears both with and without the 'albert.' prefix")
        out[short] = array
    for alias, target in _ALIASES.items():
        if alias not in out:
            continue
        array = out.pop(alias)
        if target not in out:
            out[target] = array
        elif not _identical(out[target], array):
            raise ConversionError(f"{where}: {alias} differs from {target}; ALBERT ties them, so they must agree")
    return out


def _identical(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _map_tensors(state: dict[str, np.ndarray], config: AlbertConfig,
                 where: str) -> tuple[dict[str, np.ndarray], list[str]]:
    """TF-named float32 tensors in names.py order, and notes on what was skipped."""
    table = name_table(config)
    expected = encoder_shapes(config)
    heads = head_shapes(config)
    for head in heads.values():
        expected.update(head)
    tensors: dict[str, np.ndarray] = {}
    notes: list[str] = []
    for name, array in _canonical_names(state, where).items():
        if name in _BUFFERS:
            continue
        if name.startswith(_TASK_HEADS):
            notes.append(f"skipped task-head tensor {name} {tuple(array.shape)}")
            continue
        if name not in table:
            raise ConversionError(f"{where}: unknown tensor {name}: not part of an ALBERT model with this config "
                                  f"(num_hidden_groups={config.num_hidden_groups}, "
                                  f"inner_group_num={config.inner_group_num})")
        tf_name, transpose = table[name]
        shape = expected[tf_name]
        torch_shape = shape[::-1] if transpose else shape
        if array.shape != torch_shape:
            raise ConversionError(f"{where}: {name} has shape {tuple(array.shape)}, but this config needs "
                                  f"{torch_shape} (TF {tf_name} {shape})")
        if array.dtype not in (np.float32, np.float16, np.float64):
            raise ConversionError(f"{where}: {name} has dtype {array.dtype}; ALBERT weights are floating point")
        if array.dtype == np.float64:
            notes.append(f"{name} was float64, rounded to float32")
        array = array.astype(np.float32, copy=False)
        tensors[tf_name] = np.ascontiguousarray(array.T if transpose else array)
    hf_names = {tf: hf for hf, (tf, _) in table.items()}
    missing = [f"{hf_names[n]} (TF {n})" for n in encoder_shapes(config) if n not in tensors]
    if missing:
        raise ConversionError(f"{where} lacks required tensor(s): {', '.join(missing)}")
    for head, shapes in heads.items():
        absent = [n for n in shapes if n not in tensors]
        if 0 < len(absent) < len(shapes):
            raise ConversionError(f"{where}: the {head} head is incomplete, missing {', '.join(absent)}")
    return {n: tensors[n] for n in expected if n in tensors}, notes
