"""Hugging Face directories and torch.save files, read without torch, checked against torch.

The expected TF names below are derived independently of weights/hf_source.py (regexes
over the Hugging Face names, written from the mapping's specification), so the two must
agree for the bitwise comparisons to pass.
"""
from __future__ import annotations

import builtins
import collections
import hashlib
import io
import json
import os
import pickle
import pickletools
import re
import struct
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest

from peers import require_peers

torch, transformers = require_peers()

from albert_ref.errors import ConversionError  # noqa: E402
from albert_ref.weights.hf_source import read_huggingface  # noqa: E402
from albert_ref.weights.torch_pickle import load_torch_state_dict  # noqa: E402
from model_util import flip_byte  # noqa: E402

TINY = dict(vocab_size=40, embedding_size=8, hidden_size=12, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=16, max_position_embeddings=16)
GROUPED = dict(TINY, num_hidden_layers=3, num_hidden_groups=2, inner_group_num=2)
CONFIGS = {"tiny": TINY, "grouped": GROUPED}


# -- helpers ------------------------------------------------------------------------------------

def make_model(cls_name: str, config: dict, seed: int = 0, dtype=None):
    torch.manual_seed(seed)
    model = getattr(transformers, cls_name)(transformers.AlbertConfig(**config)).eval()
    with torch.no_grad():  # LayerNorms start at 1/0: randomise them so a gamma/beta swap shows
        for param in model.parameters():
            param.add_(torch.randn_like(param))
    return model.to(dtype) if dtype is not None else model


def save(model, directory: Path, fmt: str, **kwargs) -> Path:
    """Save as Hugging Face does (`safetensors`, `bin`) or as old checkpoints did (`legacy`)."""
    if fmt == "legacy":
        model.config.save_pretrained(directory)
        torch.save(model.state_dict(), directory / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    else:
        model.save_pretrained(directory, safe_serialization=fmt == "safetensors", **kwargs)
    return directory


_LAYER = {"attention.query": "attention_1/self/query", "attention.key": "attention_1/self/key",
          "attention.value": "attention_1/self/value", "attention.dense": "attention_1/output/dense",
          "attention.LayerNorm": "LayerNorm", "ffn": "ffn_1/intermediate/dense",
          "ffn_output": "ffn_1/intermediate/output/dense", "full_layer_layer_norm": "LayerNorm_1"}
_MODULES = {"embeddings.word_embeddings": "bert/embeddings/word_embeddings",
            "embeddings.position_embeddings": "bert/embeddings/position_embeddings",
            "embeddings.token_type_embeddings": "bert/embeddings/token_type_embeddings",
            "embeddings.LayerNorm": "bert/embeddings/LayerNorm",
            "encoder.embedding_hidden_mapping_in": "bert/encoder/embedding_hidden_mapping_in",
            "pooler": "bert/pooler/dense", "predictions.dense": "cls/predictions/transform/dense",
            "predictions.LayerNorm": "cls/predictions/transform/LayerNorm", "predictions": "cls/predictions",
            "sop_classifier.classifier": "cls/seq_relationship"}


def tf_name(hf: str) -> tuple[str, bool]:
    """(TF name, transposed?) of a Hugging Face ALBERT parameter."""
    hf = hf.removeprefix("albert.")
    m = re.fullmatch(r"encoder\.albert_layer_groups\.(\d+)\.albert_layers\.(\d+)\.(.+)\.(weight|bias)", hf)
    if m:
        module, param = f"bert/encoder/transformer/group_{m[1]}/inner_group_{m[2]}/{_LAYER[m[3]]}", m[4]
    else:
        module, param = hf.rsplit(".", 1)
        module = _MODULES[module]
    if module.endswith("_embeddings"):
        return module, False
    if module.endswith(("LayerNorm", "LayerNorm_1")):
        return f"{module}/{'gamma' if param == 'weight' else 'beta'}", False
    if module == "cls/predictions":
        return "cls/predictions/output_bias", False
    if module == "cls/seq_relationship":
        return f"{module}/{'output_weights' if param == 'weight' else 'output_bias'}", False
    return f"{module}/{'kernel' if param == 'weight' else 'bias'}", param == "weight"


def as_float32(tensor) -> np.ndarray:
    return tensor.detach().float().numpy()


def expected_tensors(model) -> dict[str, np.ndarray]:
    out = {}
    for name, tensor in model.state_dict().items():
        if name.startswith("predictions.decoder."):  # tied copies
            continue
        tf, transpose = tf_name(name)
        array = as_float32(tensor)
        out[tf] = array.T if transpose else array
    return out


def assert_bitwise_equal(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray]):
    assert sorted(actual) == sorted(expected)
    for name, array in actual.items():
        assert array.dtype == np.float32 and array.flags.c_contiguous, name
        assert array.shape == expected[name].shape, name
        assert array.tobytes() == np.ascontiguousarray(expected[name]).tobytes(), name


def assert_same_state(path: Path, state: dict):
    """load_torch_state_dict(path) equals torch's own reading, bit for bit."""
    ours = load_torch_state_dict(path)
    assert list(ours) == list(state)
    for name, tensor in state.items():
        want = tensor.float().numpy() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor.numpy()
        assert ours[name].dtype == want.dtype and ours[name].shape == want.shape, name
        assert ours[name].flags.c_contiguous, name
        assert ours[name].tobytes() == np.ascontiguousarray(want).tobytes(), name


def truncate(path: Path, size: int):
    path.write_bytes(path.read_bytes()[:size])


def zip_record_offset(path: Path, suffix: str) -> int:
    """File offset of the (stored) data of the zip record whose name ends with `suffix`."""
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith(suffix))
    header = path.read_bytes()[info.header_offset:info.header_offset + 30]
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_len + extra_len


def rewrite_zip(src: Path, dst: Path, edit):
    """Copy a zip, passing each record through edit(name, data) -> data, or None to drop it."""
    with zipfile.ZipFile(src) as archive:
        records = [(i.filename, archive.read(i)) for i in archive.infolist()]
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as out:
        for name, data in records:
            data = edit(name, data)
            if data is not None:
                out.writestr(name, data)


# A hand-written legacy-format writer, for views and headers torch.save cannot produce.
class FakeStorage:
    def __init__(self, key: str, numel: int):
        self.key, self.numel = key, numel


class FakeTensor:
    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, size, stride, False, collections.OrderedDict())

    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, self.args


class LegacyPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, FakeStorage):
            return "storage", torch.FloatStorage, obj.key, "cpu", obj.numel, None
        return None


def write_legacy(path: Path, state: dict, storages: dict[str, tuple[int, bytes]]):
    """storages: key -> (element count written in its header, raw bytes)."""
    buf = io.BytesIO()
    for obj in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}):
        pickle.dump(obj, buf, protocol=2)
    LegacyPickler(buf, protocol=2).dump(state)
    pickle.dump(sorted(storages), buf, protocol=2)
    for key in sorted(storages):
        count, data = storages[key]
        buf.write(count.to_bytes(8, "little", signed=True) + data)
    path.write_bytes(buf.getvalue())


@pytest.fixture(scope="module")
def pretraining_bin(tmp_path_factory) -> Path:
    """A pristine AlbertForPreTraining directory in the zip .bin format, copied per test."""
    return save(make_model("AlbertForPreTraining", TINY), tmp_path_factory.mktemp("pt_bin"), "bin")


def copy_dir(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


# -- round trips ------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["safetensors", "bin", "legacy"])
@pytest.mark.parametrize("cls_name", ["AlbertModel", "AlbertForPreTraining"])
@pytest.mark.parametrize("config_name", sorted(CONFIGS))
def test_round_trip_is_bitwise(tmp_path, fmt, cls_name, config_name):
    model = make_model(cls_name, CONFIGS[config_name])
    result = read_huggingface(save(model, tmp_path, fmt))
    assert_bitwise_equal(result.tensors, expected_tensors(model))
    assert result.config.num_hidden_groups == CONFIGS[config_name].get("num_hidden_groups", 1)
    assert result.config.hidden_act == "gelu_tanh" and result.config.project_embeddings
    weights = "model.safetensors" if fmt == "safetensors" else "pytorch_model.bin"
    assert result.sources == {name: hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()
                              for name in ("config.json", weights)}
    assert result.spm_model is None and result.notes == ()
    assert result.tokenizer_options == {"flavour": "huggingface", "do_lower_case": True, "keep_accents": False,
                                        "remove_space": True}


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_sharded_checkpoints(tmp_path, fmt):
    model = make_model("AlbertForPreTraining", GROUPED)
    save(model, tmp_path, fmt, max_shard_size=6000)
    index = json.loads(next(tmp_path.glob("*.index.json")).read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 2
    result = read_huggingface(tmp_path)
    assert_bitwise_equal(result.tensors, expected_tensors(model))
    assert shards < set(result.sources)


@pytest.mark.parametrize("fmt", ["safetensors", "bin", "legacy"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_upcasts_exactly(tmp_path, fmt, dtype):
    model = make_model("AlbertForPreTraining", TINY, dtype=getattr(torch, dtype))
    assert_bitwise_equal(read_huggingface(save(model, tmp_path, fmt)).tensors, expected_tensors(model))


@pytest.mark.parametrize("legacy", [False, True])
def test_every_half_precision_bit_pattern(tmp_path, legacy):
    bits = torch.arange(-(2 ** 15), 2 ** 15, dtype=torch.int32).to(torch.int16)
    path = tmp_path / "halves.bin"
    torch.save({"f16": bits.view(torch.float16), "bf16": bits.clone().view(torch.bfloat16)}, path,
               _use_new_zipfile_serialization=not legacy)
    ours = load_torch_state_dict(path)
    for name in ("f16", "bf16"):
        want = bits.view(getattr(torch, {"f16": "float16", "bf16": "bfloat16"}[name])).float().numpy()
        nan = np.isnan(want)
        assert np.array_equal(np.isnan(ours[name]), nan)
        assert ours[name][~nan].tobytes() == want[~nan].tobytes()
    # bfloat16 is float32's top half, NaN payloads included
    assert np.array_equal(ours["bf16"].view(np.uint32) >> 16, bits.numpy().view(np.uint16))


@pytest.mark.parametrize("legacy", [False, True])
def test_views_strides_and_dtypes_match_torch(tmp_path, legacy):
    base = torch.randn(6, 5)
    state = collections.OrderedDict(
        full=base, transposed=base.t(), strided=base[1:, ::2], row=base[3], scalar=base[2, 2],
        position_ids=torch.arange(16).expand((1, -1)), doubles=torch.randn(3, dtype=torch.float64),
        ints=torch.tensor([1, -2, 3], dtype=torch.int32), mask=torch.tensor([True, False]),
        empty=torch.zeros(0, 4), half=torch.randn(4, 3).half().t(), bhalf=torch.randn(2, 3).bfloat16(),
    )
    path = tmp_path / "views.bin"
    torch.save(state, path, _use_new_zipfile_serialization=not legacy)
    assert_same_state(path, state)


def test_big_endian_zip_is_swapped(tmp_path):
    state = {"w": torch.randn(3, 4), "wt": None}
    state["wt"] = state["w"].t()
    src, dst = tmp_path / "le.bin", tmp_path / "be.bin"
    torch.save(state, src)

    def to_big(name, data):
        if name.endswith("/byteorder"):
            return b"big"
        if "/data/" in name:
            return np.frombuffer(data, "<f4").astype(">f4").tobytes()
        return data

    rewrite_zip(src, dst, to_big)
    assert_same_state(dst, state)


def test_optional_files_and_task_heads(tmp_path):
    model = make_model("AlbertForSequenceClassification", TINY)
    save(model, tmp_path, "safetensors")
    (tmp_path / "spiece.model").write_bytes(b"\x0a\x03spm")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False, "keep_accents": True}))
    result = read_huggingface(tmp_path)
    encoder = make_model("AlbertModel", TINY)
    encoder.load_state_dict({k.removeprefix("albert."): v for k, v in model.state_dict().items()
                             if k.startswith("albert.")})
    assert_bitwise_equal(result.tensors, expected_tensors(encoder))
    assert result.spm_model == b"\x0a\x03spm"
    assert result.tokenizer_options == {"flavour": "huggingface", "do_lower_case": False, "keep_accents": True,
                                        "remove_space": True}
    assert set(result.sources) == {"config.json", "model.safetensors", "spiece.model", "tokenizer_config.json"}
    assert result.sources["spiece.model"] == hashlib.sha256(b"\x0a\x03spm").hexdigest()
    assert any("classifier.weight" in note for note in result.notes)


def test_safetensors_preferred_over_bin(tmp_path):
    a, b = make_model("AlbertModel", TINY, seed=1), make_model("AlbertModel", TINY, seed=2)
    save(b, tmp_path, "bin")
    save(a, tmp_path, "safetensors")
    result = read_huggingface(tmp_path)
    assert_bitwise_equal(result.tensors, expected_tensors(a))
    assert "pytorch_model.bin" not in result.sources


def test_hand_written_legacy_view(tmp_path):
    data = np.arange(12, dtype="<f4")
    path = tmp_path / "h.bin"
    write_legacy(path, {"t": FakeTensor(FakeStorage("0", 12), 1, (3, 2), (1, 4))}, {"0": (12, data.tobytes())})
    want = np.lib.stride_tricks.as_strided(data[1:], (3, 2), (4, 16))
    assert load_torch_state_dict(path)["t"].tobytes() == np.ascontiguousarray(want).tobytes()


# -- hostile pickles ---------------------------------------------------------------------------

class Payload:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def payloads(marker: Path):
    return {
        "posix.system": Payload(os.system, f"touch {marker}"),
        "builtins.eval": Payload(builtins.eval, f"open({str(marker)!r}, 'w').close()"),
        "subprocess.call": Payload(subprocess.call, ["touch", str(marker)]),
    }


@pytest.mark.parametrize("container", ["zip", "legacy", "bare-pickle", "bare-protocol-4"])
@pytest.mark.parametrize("forbidden", ["posix.system", "builtins.eval", "subprocess.call"])
def test_code_in_pickle_is_refused_and_never_runs(tmp_path, container, forbidden):
    marker = tmp_path / "pwned"
    payload = payloads(marker)[forbidden]
    path = tmp_path / "pytorch_model.bin"
    state = {"weight": torch.ones(2), "evil": payload}
    if container == "zip":
        torch.save(state, path)
    elif container == "legacy":
        torch.save(state, path, _use_new_zipfile_serialization=False)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2 if container == "bare-pickle" else 4))
    with pytest.raises(ConversionError, match=rf"pickle in {re.escape(str(path))}.* tries to load {forbidden}"):
        load_torch_state_dict(path)
    assert not marker.exists()


def test_hostile_bin_refused_by_read_huggingface(tmp_path, pretraining_bin):
    directory = copy_dir(pretraining_bin, tmp_path / "m")
    marker = tmp_path / "pwned"
    torch.save({"x": payloads(marker)["posix.system"]}, directory / "pytorch_model.bin")
    with pytest.raises(ConversionError, match="posix.system"):
        read_huggingface(directory)
    assert not marker.exists()


@pytest.mark.parametrize("target, attribute, value", [
    (b"ctorch\nFloatStorage\n", b"name", b"X\x04\x00\x00\x00int8"),
    (b"ctorch._utils\n_rebuild_tensor_v2\n", b"func", b"ctorch\nFloatStorage\n"),
    (b"ccollections\nOrderedDict\n", b"get", b"K\x01"),
])
def test_pickle_cannot_tamper_with_the_allowed_globals(tmp_path, pretraining_bin, target, attribute, value):
    """BUILD sets attributes on any object: on the shared stand-ins it must fail."""
    path = tmp_path / "tamper.bin"
    build = b"N}" + b"X" + len(attribute).to_bytes(4, "little") + attribute + value + b"s\x86b."
    path.write_bytes(b"\x80\x02" + target + build)
    with pytest.raises(ConversionError, match="corrupt pickle"):
        load_torch_state_dict(path)
    assert_same_state(pretraining_bin / "pytorch_model.bin", torch.load(pretraining_bin / "pytorch_model.bin"))


# -- damaged files -----------------------------------------------------------------------------

def test_damaged_zip_bin(tmp_path, pretraining_bin):
    src = pretraining_bin / "pytorch_model.bin"
    cases = {}
    cases["truncated"] = copy_dir(pretraining_bin, tmp_path / "truncated") / "pytorch_model.bin"
    truncate(cases["truncated"], src.stat().st_size // 2)
    cases["data flipped"] = copy_dir(pretraining_bin, tmp_path / "data") / "pytorch_model.bin"
    flip_byte(cases["data flipped"], zip_record_offset(src, "/data/0") + 5, 0x10)
    cases["pickle flipped"] = copy_dir(pretraining_bin, tmp_path / "pickle") / "pytorch_model.bin"
    flip_byte(cases["pickle flipped"], zip_record_offset(src, "/data.pkl") + 40, 0x10)
    for path in cases.values():
        with pytest.raises(ConversionError, match=rf"{re.escape(str(path))}: corrupt or truncated zip"):
            load_torch_state_dict(path)
        with pytest.raises(ConversionError, match="corrupt or truncated zip"):
            read_huggingface(path.parent)


@pytest.mark.parametrize("legacy", [False, True])
def test_every_truncation_and_byte_flip(tmp_path, legacy):
    """Damage anywhere raises ConversionError or loads; in the zip format (CRC-32 per
    record) it never loads different tensors. The legacy format has no checksum, so
    flips in its data or view sizes can go unnoticed: that is the format, not the reader."""
    base = torch.randn(4, 3)
    state = collections.OrderedDict(a=base, b=base.t(), c=torch.randn(5).bfloat16(), p=torch.arange(6).expand(1, -1))
    src, path = tmp_path / "src.bin", tmp_path / "damaged.bin"
    torch.save(state, src, _use_new_zipfile_serialization=not legacy)
    data = src.read_bytes()
    clean = load_torch_state_dict(src)
    damaged = [data[:n] for n in range(len(data))]
    # one flip per byte, cycling through the bit positions
    damaged += [data[:i] + bytes([data[i] ^ 1 << i % 8]) + data[i + 1:] for i in range(len(data))]
    for case in damaged:
        path.write_bytes(case)
        try:
            loaded = load_torch_state_dict(path)
        except ConversionError:
            continue
        if not legacy:
            assert list(loaded) == list(clean)
            assert all(loaded[k].tobytes() == clean[k].tobytes() and loaded[k].shape == clean[k].shape for k in clean)


@pytest.mark.parametrize("edit, message", [
    (lambda name, data: None if name.endswith("/data/0") else data, r"data record \S+/data/0 of storage '0' is missing"),
    (lambda name, data: data[:-4] if name.endswith("/data/0") else data, r"storage '0' has \d+ bytes, expected"),
    (lambda name, data: b"middle" if name.endswith("/byteorder") else data, "unknown byte order"),
    (lambda name, data: None if name.endswith("/data.pkl") else data, "not a torch.save checkpoint"),
])
def test_inconsistent_zip_bin(tmp_path, pretraining_bin, edit, message):
    path = tmp_path / "edited.bin"
    rewrite_zip(pretraining_bin / "pytorch_model.bin", path, edit)
    with pytest.raises(ConversionError, match=message):
        load_torch_state_dict(path)


@pytest.fixture
def legacy_bin(tmp_path) -> Path:
    model = make_model("AlbertForPreTraining", TINY)
    return save(model, tmp_path, "legacy") / "pytorch_model.bin"


def legacy_data_start(path: Path) -> int:
    """Offset of the first storage's 8-byte header: after the five pickles."""
    stream = io.BytesIO(path.read_bytes())
    for _ in range(5):
        for opcode, _, _ in pickletools.genops(stream):
            if opcode.name == "STOP":
                break
    return stream.tell()


@pytest.mark.parametrize("damage, message", [
    ("truncate-data", "is truncated inside storage"),
    ("truncate-header", "is truncated before storage"),
    ("truncate-pickle", r"corrupt pickle in .* \(state dict\): UnpicklingError"),
    ("flip-magic", "bad magic number"),
    ("flip-count", "header says"),
])
def test_damaged_legacy_bin(legacy_bin, damage, message):
    start = legacy_data_start(legacy_bin)
    if damage == "truncate-data":
        truncate(legacy_bin, legacy_bin.stat().st_size - 3)
    elif damage == "truncate-header":
        truncate(legacy_bin, start + 4)
    elif damage == "truncate-pickle":
        truncate(legacy_bin, 200)
    elif damage == "flip-magic":
        flip_byte(legacy_bin, 5, 0x10)
    else:
        flip_byte(legacy_bin, start + 1, 0x10)
    # Flips inside the raw tensor data cannot be detected: the legacy format has no checksum.
    with pytest.raises(ConversionError, match=message) as raised:
        load_torch_state_dict(legacy_bin)
    assert str(legacy_bin) in str(raised.value)
    with pytest.raises(ConversionError, match=message):
        read_huggingface(legacy_bin.parent)


@pytest.mark.parametrize("state, storages, message", [
    ({"t": FakeTensor(FakeStorage("0", 6), 0, (4, 4), (4, 1))}, {"0": (6, bytes(24))},
     r"tensor 't' \(size \(4, 4\), stride \(4, 1\), offset 0\) needs 16 elements but storage '0' holds 6"),
    ({"t": FakeTensor(FakeStorage("0", 6), 0, (2, 3), (3, 1))}, {"0": (6, bytes(24)), "9": (1, bytes(4))},
     "storage '9' is listed but no tensor uses it"),
    ({"t": FakeTensor(FakeStorage("0", 6), 0, (2, 3), (3, 1))}, {}, "data of storage '0' is missing"),
    ({"t": FakeTensor(FakeStorage("0", 6), -1, (2, 3), (3, 1))}, {"0": (6, bytes(24))}, "malformed view"),
    ({"t": 3}, {}, "entry 't' is a int, not a tensor"),
    ([1, 2], {}, "holds a list, not a state dict"),
])
def test_inconsistent_legacy_bin(tmp_path, state, storages, message):
    path = tmp_path / "crafted.bin"
    write_legacy(path, state, storages)
    with pytest.raises(ConversionError, match=message):
        load_torch_state_dict(path)


@pytest.mark.parametrize("damage, message", [
    ("truncate", "file not fully covered"),
    ("flip-header", "invalid JSON in header"),
    ("flip-length", "header too large"),
])
def test_damaged_safetensors(tmp_path, damage, message):
    directory = save(make_model("AlbertModel", TINY), tmp_path, "safetensors")
    path = directory / "model.safetensors"
    if damage == "truncate":
        truncate(path, path.stat().st_size - 10)
    elif damage == "flip-header":
        flip_byte(path, 20, 0x40)  # a letter of the first tensor name becomes a control character
    else:
        flip_byte(path, 5, 0x01)
    # As in the legacy format, flips inside the tensor data itself carry no checksum.
    with pytest.raises(ConversionError, match=rf"{re.escape(str(path))}: corrupt or unreadable safetensors.*{message}"):
        read_huggingface(directory)


# -- wrong content -----------------------------------------------------------------------------

def save_state(directory: Path, model, state: dict):
    model.config.save_pretrained(directory)
    torch.save(state, directory / "pytorch_model.bin")
    return directory


def pretraining_state(**changes):
    model = make_model("AlbertForPreTraining", TINY)
    state = dict(model.state_dict())
    for name, value in changes.items():
        name = name.replace("__", ".")
        if value is None:
            del state[name]
        else:
            state[name] = value
    return model, state


@pytest.mark.parametrize("changes, message", [
    ({"albert.encoder.albert_layer_groups.0.albert_layers.0.ffn.bias": None},
     r"lacks required tensor\(s\): encoder\.albert_layer_groups\.0\.albert_layers\.0\.ffn\.bias "
     r"\(TF bert/encoder/transformer/group_0/inner_group_0/ffn_1/intermediate/dense/bias\)"),
    ({"albert.pooler.weight": None, "albert.pooler.bias": None}, r"lacks required .*pooler\.weight .*pooler\.bias"),
    ({"albert.encoder.albert_layer_groups.0.albert_layers.0.ffn.weight": torch.zeros(12, 16)},
     r"ffn\.weight has shape \(12, 16\), but this config needs \(16, 12\) "
     r"\(TF bert/encoder/transformer/group_0/inner_group_0/ffn_1/intermediate/dense/kernel \(12, 16\)\)"),
    ({"albert.embeddings.position_embeddings.weight": torch.zeros(17, 8)},
     r"embeddings\.position_embeddings\.weight has shape \(17, 8\), but this config needs \(16, 8\)"),
    ({"albert.encoder.extra.weight": torch.zeros(3)}, r"unknown tensor encoder\.extra\.weight"),
    ({"albert.encoder.albert_layer_groups.1.albert_layers.0.ffn.bias": torch.zeros(16)},
     r"unknown tensor encoder\.albert_layer_groups\.1\..*num_hidden_groups=1"),
    ({"predictions.decoder.weight": torch.zeros(40, 8)},
     "predictions.decoder.weight differs from embeddings.word_embeddings.weight"),
    ({"predictions.decoder.bias": torch.ones(40)}, "predictions.decoder.bias differs from predictions.bias"),
    ({"predictions.dense.weight": None}, r"the mlm head is incomplete, missing cls/predictions/transform/dense/kernel"),
    ({"embeddings.word_embeddings.weight": torch.zeros(40, 8)}, "appears both with and without the 'albert.' prefix"),
    ({"albert.pooler.bias": torch.zeros(12, dtype=torch.int64)}, "pooler.bias has dtype int64"),
])
def test_wrong_content_is_refused(tmp_path, changes, message):
    model, state = pretraining_state(**{k.replace(".", "__"): v for k, v in changes.items()})
    with pytest.raises(ConversionError, match=message):
        read_huggingface(save_state(tmp_path, model, state))


def test_tied_aliases_and_buffers_fold_in(tmp_path):
    """Only the decoder copies present, plus an old position_ids buffer: still the same model."""
    model, state = pretraining_state()
    state["predictions.decoder.bias"] = state.pop("predictions.bias")
    state["albert.embeddings.position_ids"] = torch.arange(16).expand((1, -1))
    assert_bitwise_equal(read_huggingface(save_state(tmp_path, model, state)).tensors, expected_tensors(model))


def test_directory_problems(tmp_path, pretraining_bin):
    with pytest.raises(ConversionError, match="is not a directory"):
        read_huggingface(tmp_path / "nowhere")
    no_weights = copy_dir(pretraining_bin, tmp_path / "no_weights")
    (no_weights / "pytorch_model.bin").unlink()
    with pytest.raises(ConversionError, match="holds no weights"):
        read_huggingface(no_weights)
    no_config = copy_dir(pretraining_bin, tmp_path / "no_config")
    (no_config / "config.json").unlink()
    with pytest.raises(ConversionError, match=r"cannot read \S+/no_config/config.json"):
        read_huggingface(no_config)
    bad_tokenizer = copy_dir(pretraining_bin, tmp_path / "bad_tokenizer")
    (bad_tokenizer / "tokenizer_config.json").write_text('{"do_lower_case": "yes"}')
    with pytest.raises(ConversionError, match="do_lower_case must be true or false"):
        read_huggingface(bad_tokenizer)


def test_shard_index_problems(tmp_path):
    directory = save(make_model("AlbertModel", TINY), tmp_path, "safetensors", max_shard_size=6000)
    index_path = directory / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    shards = collections.Counter(index["weight_map"].values()).most_common()
    shard, other = shards[0][0], shards[-1][0]
    name = next(n for n, s in index["weight_map"].items() if s == shard)
    for weight_map, message in [
        (dict(index["weight_map"], **{name: "../" + shard}), "names a shard outside its directory"),
        (dict(index["weight_map"], extra="model-00001-of-99999.safetensors"), r"cannot read .*model-00001-of-99999"),
        (dict(index["weight_map"], **{name: other}), rf"holds {re.escape(name)}, which .* assigns to {other}"),
        ({}, "has no valid weight_map"),
    ]:
        index_path.write_text(json.dumps({"weight_map": weight_map}))
        with pytest.raises(ConversionError, match=message):
            read_huggingface(directory)
