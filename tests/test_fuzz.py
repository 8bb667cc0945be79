"""Fuzzing, in the spirit of the hostile-user campaign of issue 13: mutated model files
(bytes and HDF5-level edits), converter inputs (TF checkpoints, TF-Hub archives, Hugging
Face safetensors and configs), embed inputs, resume chunks and .npz inputs. Every case
ends in "the same result as the original" or one of the project's named errors
(AlbertRefError; `albert-ref: error: ...` with exit status 2 from the CLI), never a
traceback, a hang or a changed output.

The test run does 40 examples per target (about 15 s on two shared Zen 4 cores). The
long profile does 1,000 of each (about 6 minutes there):

    pytest tests/test_fuzz.py --hypothesis-profile=fuzz

(registered in tests/conftest.py; HYPOTHESIS_FUZZ_EXAMPLES=N sets another count).
"""
import contextlib
import io
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from albert_ref.cli import main
from albert_ref.errors import AlbertRefError
from albert_ref.weights import DEMO_MODEL
from albert_ref.weights.convert import convert
from albert_ref.weights.model_file import read_model, write_model
from model_util import random_model_file, tiny_config
from test_convert_cli import hub_archive as make_hub_archive

FIXTURES = Path(__file__).parent / "fixtures" / "tf"
# The default profile's 100 examples per target would take CI too long; the fuzz profile
# sets its own, larger count.
EXAMPLES = 40 if settings.default.max_examples <= 100 else settings.default.max_examples
fuzz = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))


# -- helpers ----------------------------------------------------------------------------------------

@st.composite
def mutation(draw, size: int):
    """One damage to a byte string of `size` bytes, as a function of the bytes."""
    kind = draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete", "zero"]))
    pos = draw(st.integers(0, max(size - 1, 0)))
    if kind == "flip":
        bit = draw(st.integers(0, 7))
        return lambda b: b[:pos] + bytes([b[pos] ^ (1 << bit)]) + b[pos + 1:]
    if kind == "set":
        value = draw(st.binary(min_size=1, max_size=8))
        return lambda b: b[:pos] + value + b[pos + len(value):]
    if kind == "truncate":
        return lambda b: b[:pos]
    if kind == "insert":
        value = draw(st.binary(min_size=1, max_size=16))
        return lambda b: b[:pos] + value + b[pos:]
    if kind == "delete":
        n = draw(st.integers(1, 64))
        return lambda b: b[:pos] + b[pos + n:]
    n = draw(st.integers(1, 4096))
    return lambda b: b[:pos] + bytes(len(b[pos:pos + n])) + b[pos + n:]


def cli(*argv) -> tuple[int, str]:
    """Run the CLI in-process: exit status 0, or 2 with one named error (never a traceback)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main([str(a) for a in argv])
    text = err.getvalue()
    assert code in (0, 2), (code, text)
    assert code == 0 or "albert-ref: error: " in text, text
    return code, text


def same_model(a, b) -> None:
    assert a.digest == b.digest
    assert a.config == b.config and a.spm_model == b.spm_model and a.tokenizer_options == b.tokenizer_options
    assert set(a.tensors) == set(b.tensors)
    for name, array in a.tensors.items():
        assert array.tobytes() == b.tensors[name].tobytes(), name


def workdir(root: Path, name: str) -> Path:
    """A fresh directory for one example (hypothesis reuses the test's tmp_path)."""
    path = root / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir()
    return path


# -- model files --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz-model") / "m.h5"
    write_model(path, random_model_file(tiny_config(num_hidden_groups=2, inner_group_num=2), heads=("sop",),
                                        spm_model=b"tokenizer bytes stand-in"))
    return path, read_model(path)


@fuzz
@given(data=st.data())
def test_model_file_bytes(tmp_path, model_file, data):
    path, original = model_file
    damage = data.draw(mutation(path.stat().st_size))
    bad = workdir(tmp_path, "bytes") / "m.h5"
    bad.write_bytes(damage(path.read_bytes()))
    try:
        back = read_model(bad)
    except AlbertRefError:
        return
    same_model(back, original)


_JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8),
                            lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                         max_size=3), max_leaves=5)


@st.composite
def h5_edit(draw, names):
    """One HDF5-level edit, as a function of an open file."""
    kind = draw(st.sampled_from(["config", "options", "attr", "swap", "link", "delete", "group", "data", "move"]))
    a, b = draw(st.sampled_from(names)), draw(st.sampled_from(names))
    if kind == "config":
        field = draw(st.sampled_from(["num_hidden_layers", "hidden_act", "layer_norm_eps", "vocab_size",
                                      "num_hidden_groups", "hidden_size", "project_embeddings", "extra"]))
        value = draw(_JSON_VALUES | st.sampled_from([10**9, "gelu_erf", 1e-5, 2, 0, -1]))

        def edit(f):
            config = json.loads(f.attrs["config"])
            config[field] = value
            f.attrs["config"] = json.dumps(config)
        return edit
    if kind == "options":
        key, value = draw(st.sampled_from(["flavour", "do_lower_case", "keep_accents", "remove_space", "x"])), \
            draw(_JSON_VALUES | st.sampled_from(["huggingface", "bogus", True, False]))
        return lambda f: f["tokenizer"].attrs.__setitem__(
            "options", json.dumps({**json.loads(f["tokenizer"].attrs["options"]), key: value}))
    if kind == "attr":
        owner = draw(st.sampled_from(["/", "/weights", "/tokenizer", "/weights/" + a]))
        key = draw(st.sampled_from(["format", "format_version", "config", "manifest", "digest", "provenance",
                                    "sha256", "options", "extra"]))
        value = draw(st.text(max_size=20) | st.integers(-5, 5) | st.floats(allow_nan=False))
        return lambda f: f[owner].attrs.__setitem__(key, value)
    if kind == "swap":
        def edit(f):
            if a != b:
                f.move("weights/" + a, "weights/tmp_swap")
                f.move("weights/" + b, "weights/" + a)
                f.move("weights/tmp_swap", "weights/" + b)
        return edit
    if kind == "link":
        def edit(f):
            if a != b:
                del f["weights/" + b]
                f["weights/" + b] = f["weights/" + a]
        return edit
    if kind == "delete":
        return lambda f: f.__delitem__("weights/" + a)
    if kind == "group":
        where = draw(st.sampled_from(["extra", "weights/extra", "tokenizer/extra", "weights/bert/extra"]))
        return lambda f: f.create_group(where)
    if kind == "data":  # other values with a matching per-dataset checksum
        index, value = draw(st.integers(0, 10**6)), draw(st.floats(width=32))

        def edit(f):
            from albert_ref.weights.model_file import sha256
            ds = f["weights/" + a]
            array = ds[()]
            array.reshape(-1)[index % array.size] = value
            ds[...] = array
            ds.attrs["sha256"] = sha256(array)
        return edit
    return lambda f: f.move("weights/" + a, "weights/" + a + "_renamed")


@fuzz
@given(data=st.data())
def test_model_file_hdf5_edits(tmp_path, model_file, data):
    path, original = model_file
    edits = data.draw(st.lists(h5_edit(sorted(original.tensors)), min_size=1, max_size=3))
    bad = workdir(tmp_path, "edits") / "m.h5"
    shutil.copy(path, bad)
    with h5py.File(bad, "r+") as f:
        for edit in edits:
            try:
                edit(f)
            except (KeyError, ValueError, OSError, TypeError):
                pass  # an edit h5py itself refuses (a name that no longer exists, ...)
    for verify in (True, False):
        try:
            back = read_model(bad, verify=verify)
        except AlbertRefError:
            continue
        if verify:
            same_model(back, original)
        else:  # verify=False trusts the data to match its checksums; everything else is checked
            assert back.config == original.config and back.tokenizer_options == original.tokenizer_options


# -- converter inputs -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tf_original(tmp_path_factory):
    out = tmp_path_factory.mktemp("fuzz-tf") / "m.h5"
    return convert(FIXTURES / "tiny" / "model.ckpt", out)


@fuzz
@given(data=st.data(), which=st.sampled_from(["model.ckpt.index", "model.ckpt.data-00000-of-00001"]))
def test_tf_checkpoint_bytes(tmp_path, tf_original, data, which):
    src = workdir(tmp_path, "tf")
    for f in (FIXTURES / "tiny").iterdir():
        shutil.copy(f, src)
    damage = data.draw(mutation((src / which).stat().st_size))
    (src / which).write_bytes(damage((src / which).read_bytes()))
    try:
        converted = convert(src / "model.ckpt", src / "out.h5")
    except AlbertRefError:
        assert not (src / "out.h5").exists()
        return
    same_model(converted, tf_original)  # the bundle's CRCs cover every tensor's bytes


@pytest.fixture(scope="module")
def hub_archive(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz-hub")
    archive = make_hub_archive(folder / "module.tar.gz")
    return archive, convert(archive, folder / "m.h5")


@fuzz
@given(data=st.data())
def test_tf_hub_archive_bytes(tmp_path, hub_archive, data):
    archive, original = hub_archive
    damage = data.draw(mutation(archive.stat().st_size))
    folder = workdir(tmp_path, "hub")
    bad = folder / "module.tar.gz"
    bad.write_bytes(damage(archive.read_bytes()))
    code, _ = cli("convert", bad, folder / "m.h5")
    if code == 0:  # gzip's CRC-32 covers the whole archive, the bundle's CRC32C every tensor
        same_model(read_model(folder / "m.h5"), original)
    else:
        assert sorted(p.name for p in folder.iterdir()) == ["module.tar.gz"]


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    """Hugging Face directories with model.safetensors and with pytorch_model.bin."""
    from test_convert_cli import _tiny_hf_dir
    root = tmp_path_factory.mktemp("fuzz-hf")
    return {"model.safetensors": _tiny_hf_dir(root / "st"), "pytorch_model.bin": _tiny_hf_dir(root / "bin", safe=False)}


@pytest.fixture(scope="module")
def hf_dir(hf_dirs):
    return hf_dirs["model.safetensors"]


@fuzz
@given(data=st.data(), which=st.sampled_from(["model.safetensors", "pytorch_model.bin", "config.json"]))
def test_huggingface_directory_bytes(tmp_path, hf_dirs, data, which):
    src = workdir(tmp_path, "hf")
    for f in hf_dirs["model.safetensors" if which == "config.json" else which].iterdir():
        shutil.copy(f, src)
    damage = data.draw(mutation((src / which).stat().st_size))
    (src / which).write_bytes(damage((src / which).read_bytes()))
    out = workdir(tmp_path, "hf-out") / "m.h5"
    # safetensors and torch pickles carry no checksum: a changed value converts, but never
    # as a traceback
    code, _ = cli("convert", src, out)
    assert out.exists() == (code == 0)


@fuzz
@given(field=st.sampled_from(["num_hidden_layers", "hidden_size", "num_attention_heads", "vocab_size",
                              "layer_norm_eps", "hidden_act", "num_hidden_groups", "inner_group_num",
                              "max_position_embeddings", "intermediate_size", "embedding_size"]),
       value=_JSON_VALUES | st.sampled_from([10**9, 10**100, 0, -1, 1e308, "gelu", "swish"]))
def test_huggingface_config_values(tmp_path, hf_dir, field, value):
    src = workdir(tmp_path, "hfc")
    for f in hf_dir.iterdir():
        shutil.copy(f, src)
    config = json.loads((src / "config.json").read_text())
    config[field] = value
    (src / "config.json").write_text(json.dumps(config))
    cli("convert", src, workdir(tmp_path, "hfc-out") / "m.h5")


# -- embed inputs, resume chunks, .npz inputs ---------------------------------------------------------

@fuzz
@given(fmt=st.sampled_from(["txt", "jsonl", "csv", "tsv"]),
       content=st.binary(max_size=300) | st.text(max_size=200).map(str.encode)
       | st.lists(st.dictionaries(st.sampled_from(["text", "id", "x"]), _JSON_VALUES, max_size=3),
                  max_size=4).map(lambda rows: "".join(json.dumps(r) + "\n" for r in rows).encode()))
def test_embed_inputs(tmp_path, fmt, content):
    folder = workdir(tmp_path, "embed")
    (folder / f"in.{fmt}").write_bytes(content)
    code, _ = cli("embed", "--model", DEMO_MODEL, "--input", folder / f"in.{fmt}", "-o", folder / "out.npy",
                  "--backend", "numpy", "--dtype", "float32", "--max-seq-length", "16")
    assert (folder / "out.npy").exists() == (code == 0)
    assert not (folder / "out.npy.partial").exists() or code != 0


TEXTS = [f"row {i}: the {'cat' if i % 3 else 'dog'} sat" for i in range(10)]
EMBED = ["--model", DEMO_MODEL, "--chunk-size", "2", "--backend", "numpy", "--dtype", "float32",
         "--max-seq-length", "16"]


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """A job stopped after three of its five chunks, and the uninterrupted result."""
    from albert_ref import embed_job
    folder = tmp_path_factory.mktemp("fuzz-resume")
    (folder / "in.txt").write_text("\n".join(TEXTS) + "\n")
    assert main(["embed", "--input", str(folder / "in.txt"), "-o", str(folder / "ref.npy"), *map(str, EMBED)]) == 0
    original, calls = embed_job.Encoder.encode_counted, []

    def stop_after_three(self, *args, **kwargs):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(1)
        return original(self, *args, **kwargs)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(embed_job.Encoder, "encode_counted", stop_after_three)
        assert main(["embed", "--input", str(folder / "in.txt"), "-o", str(folder / "out.npy"),
                     *map(str, EMBED)]) == 130
    return folder, np.load(folder / "ref.npy")


@fuzz
@given(data=st.data(), target=st.sampled_from(["chunk-000000.npz", "chunk-000001.npz", "chunk-000002.npz",
                                               "chunk-000001.sha256", "manifest.json"]))
def test_resume_chunks(tmp_path, interrupted, data, target):
    source, reference = interrupted
    folder = workdir(tmp_path, "resume")
    shutil.copy(source / "in.txt", folder)
    shutil.copytree(source / "out.npy.partial", folder / "out.npy.partial")
    path = folder / "out.npy.partial" / target
    path.write_bytes(data.draw(mutation(path.stat().st_size))(path.read_bytes()))
    code, err = cli("embed", "--input", folder / "in.txt", "-o", folder / "out.npy", *EMBED)
    if code == 0:
        assert np.load(folder / "out.npy").tobytes() == reference.tobytes()
    else:
        assert target == "manifest.json" and "--restart" in err


@pytest.fixture(scope="module")
def npz_original(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz-npz")
    np.savez(folder / "in.npz", input_ids=np.array([[2, 40, 41, 42, 3], [2, 50, 3, 0, 0]], np.int32),
             input_mask=np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], np.int32))
    assert main(["run", str(DEMO_MODEL), "--inputs", str(folder / "in.npz"), "--output", str(folder / "out.npz"),
                 "--backend", "numpy", "--dtype", "float32"]) == 0
    with np.load(folder / "out.npz") as out:
        return folder / "in.npz", {k: out[k] for k in out.files}


@fuzz
@given(data=st.data())
def test_npz_inputs(tmp_path, npz_original, data):
    path, expected = npz_original
    folder = workdir(tmp_path, "npz")
    (folder / "in.npz").write_bytes(data.draw(mutation(path.stat().st_size))(path.read_bytes()))
    code, _ = cli("run", DEMO_MODEL, "--inputs", folder / "in.npz", "--output", folder / "out.npz",
                  "--backend", "numpy", "--dtype", "float32")
    if code == 0:
        with np.load(folder / "out.npz") as out:
            assert {k: out[k].tobytes() for k in out.files} == {k: v.tobytes() for k, v in expected.items()}
    else:
        assert not (folder / "out.npz").exists()
