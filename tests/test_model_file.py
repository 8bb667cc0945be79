"""The .h5 model format: lossless round trip, validation on load, atomic writes."""
import hashlib
import json
import os

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from albert_ref.errors import ModelFileError
from albert_ref.weights.model_file import ModelFile, read_model, sha256, write_model
from model_util import as_format_version_1, random_model_file, smaps, tiny_config

EMB = "bert/embeddings/word_embeddings"


@pytest.fixture(scope="module")
def model():
    return random_model_file(tiny_config(num_hidden_groups=2, inner_group_num=2), heads=("mlm", "sop"),
                             spm_model=b"\x0a\x03abc not a real spm, just bytes", do_lower_case=False)


@pytest.fixture
def good_file(tmp_path, model):
    path = tmp_path / "m.h5"
    write_model(path, model)
    return path


def test_round_trip_is_bit_exact(good_file, model):
    back = read_model(good_file)
    assert back.config == model.config
    assert set(back.tensors) == set(model.tensors)
    for name, array in model.tensors.items():
        assert back.tensors[name].dtype == np.float32 and back.tensors[name].flags.c_contiguous
        assert np.array_equal(back.tensors[name].view(np.uint32), array.view(np.uint32)), name
    assert back.spm_model == model.spm_model
    assert back.tokenizer_options["do_lower_case"] is False
    assert back.heads == ("mlm", "sop")
    assert back.digest == model.digest
    assert back.provenance == model.provenance


def test_layout_is_documented_layout(good_file, model):
    with h5py.File(good_file) as f:
        assert f.attrs["format"] == b"albert-ref" and f.attrs["format_version"] == 2
        # text is fixed-length bytes (variable-length strings live in the unchecksummed global heap)
        assert all(f.attrs.get_id(k).dtype.kind == "S" for k in f.attrs if k != "format_version")
        assert f["weights/" + EMB].attrs.get_id("sha256").dtype.kind == "S"
        manifest = json.loads(f.attrs["manifest"])
        assert f.attrs["digest"].decode() == hashlib.sha256(f.attrs["manifest"]).hexdigest() == model.digest
        assert manifest["tensors"][EMB] == {"shape": [64, 8], "dtype": "<f4", "sha256": sha256(model.tensors[EMB])}
        assert manifest["config"] == model.config.to_dict()
        assert manifest["tokenizer"]["options"]["do_lower_case"] is False
        ds = f["weights/" + EMB]
        assert ds.chunks is None and ds.compression is None and ds.dtype == np.dtype("<f4")
        assert ds.attrs["sha256"].decode() == sha256(model.tensors[EMB])
        assert json.loads(f.attrs["config"])["hidden_act"] == "gelu_tanh"


def _no_leftovers(tmp_path):
    assert [p.name for p in tmp_path.iterdir()] == []


@pytest.mark.parametrize("damage, match", [
    (lambda t: t.__setitem__(EMB, np.where(np.arange(t[EMB].size).reshape(t[EMB].shape) == 7, np.nan, t[EMB]).astype(np.float32)),
     "word_embeddings: non-finite value nan at index \\(0, 7\\)"),
    (lambda t: t.pop("bert/pooler/dense/bias"), "missing tensor.*pooler/dense/bias"),
    (lambda t: t.__setitem__("bert/pooler/dense/bias", np.zeros(3, np.float32)), "pooler/dense/bias: shape"),
    (lambda t: t.__setitem__(EMB, t[EMB].astype(np.float64)), "word_embeddings: dtype float64"),
    (lambda t: t.__setitem__("bert/extra", np.zeros(3, np.float32)), "unexpected tensor.*bert/extra"),
    (lambda t: t.pop("cls/predictions/output_bias"), "incomplete mlm head"),
])
def test_writer_refuses_bad_models_and_leaves_nothing(tmp_path, model, damage, match):
    tensors = dict(model.tensors)
    damage(tensors)
    with pytest.raises(ModelFileError, match=match):
        write_model(tmp_path / "out.h5", ModelFile(model.config, tensors, model.spm_model))
    _no_leftovers(tmp_path)


def test_interrupted_write_leaves_nothing(tmp_path, model, monkeypatch):
    def boom(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(os, "replace", boom)  # the last step of an atomic write
    with pytest.raises(KeyboardInterrupt):
        write_model(tmp_path / "out.h5", model)
    _no_leftovers(tmp_path)


def _edit(path, fn):
    with h5py.File(path, "r+") as f:
        fn(f)


@pytest.mark.parametrize("edit, match", [
    (lambda f: f.attrs.__setitem__("format_version", 99), "format_version 99"),
    (lambda f: f.attrs.__setitem__("format", "something-else"), "not an albert-ref model"),
    (lambda f: f.attrs.__delitem__("config"), "missing attribute.*config"),
    (lambda f: f.attrs.__setitem__("config", "{"), "config is not valid JSON"),
    (lambda f: f.attrs.__setitem__("config", json.dumps({**json.loads(f.attrs["config"]), "hidden_size": 20})),
     "shape"),
    (lambda f: f.create_dataset("extra", data=[1]), "unexpected object.*extra"),
    (lambda f: f["weights/" + EMB].attrs.__setitem__("sha256", "0" * 64), "word_embeddings: SHA-256 mismatch"),
    (lambda f: f.__setitem__("weights/link", h5py.SoftLink("/weights/bert")), "SoftLink"),
    (lambda f: f.__setitem__("weights/ext", h5py.ExternalLink("other.h5", "/x")), "ExternalLink"),
    (lambda f: f["weights/bert/pooler/dense/bias"].__setitem__(0, np.nan), "SHA-256 mismatch"),
    (lambda f: f["tokenizer/sentencepiece"].__setitem__(0, 0), "tokenizer/sentencepiece: SHA-256 mismatch"),
])
def test_reader_names_what_is_wrong(good_file, edit, match):
    _edit(good_file, edit)
    with pytest.raises(ModelFileError, match=match):
        read_model(good_file)


def _replace_dataset(f, name, **kwargs):
    data = f[name][()]
    digest = f[name].attrs["sha256"]
    del f[name]
    f.create_dataset(name, data=data, **kwargs).attrs["sha256"] = digest


@pytest.mark.parametrize("kwargs, match", [
    (dict(compression="gzip"), "chunked or compressed"),
    (dict(chunks=(4,)), "chunked or compressed"),
])
def test_reader_refuses_non_contiguous_storage(good_file, kwargs, match):
    _edit(good_file, lambda f: _replace_dataset(f, "weights/bert/pooler/dense/bias", **kwargs))
    with pytest.raises(ModelFileError, match=match):
        read_model(good_file)


def test_reader_refuses_external_storage(good_file, tmp_path):
    raw = tmp_path / "raw.bin"
    raw.write_bytes(np.zeros(16, "<f4").tobytes())

    def make_external(f):
        del f["weights/bert/pooler/dense/bias"]
        f.create_dataset("weights/bert/pooler/dense/bias", shape=(16,), dtype="<f4", external=[(str(raw), 0, 64)])
    _edit(good_file, make_external)
    with pytest.raises(ModelFileError, match="external storage"):
        read_model(good_file)


def _set_bias(values):
    """An edit of the pooler bias's first elements, with a matching dataset checksum."""
    def edit(f):
        ds = f["weights/bert/pooler/dense/bias"]
        data = ds[()]
        data[:len(values)] = values
        ds[...] = data
        ds.attrs["sha256"] = sha256(data)
    return edit


@pytest.mark.parametrize("values, where", [([0.0, np.inf], "inf at index \\(1,\\)"),
                                           ([np.inf, -np.inf], "inf at index \\(0,\\)")])  # the sum is NaN
def test_nan_hidden_behind_a_matching_checksum_is_refused(good_file, values, where):
    _edit(good_file, _set_bias(values))
    with pytest.raises(ModelFileError, match=f"pooler/dense/bias: non-finite value {where}"):
        read_model(good_file)


def test_a_finite_tensor_whose_sum_overflows_is_read(good_file):
    """The finiteness check sums first; a sum that overflows is not a non-finite value."""
    _edit(good_file, _set_bias([3e38, 3e38, 3e38]))
    back = read_model(good_file, verify=False)   # the edit leaves the manifest's checksum behind
    assert np.all(back.tensors["bert/pooler/dense/bias"][:3] == np.float32(3e38))


def test_truncated_file(good_file):
    data = good_file.read_bytes()
    for cut in (len(data) // 2, 100):
        good_file.write_bytes(data[:cut])
        with pytest.raises(ModelFileError):
            read_model(good_file)


def test_missing_file(tmp_path):
    with pytest.raises(ModelFileError, match="no such model file"):
        read_model(tmp_path / "nope.h5")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pos=st.floats(0.0, 1.0), bit=st.integers(0, 7))
def test_any_bit_flip_is_detected_or_harmless(good_file, model, pos, bit):
    """A flipped bit anywhere either raises ModelFileError or leaves every tensor intact
    (it hit padding or unused metadata); it never yields different weights."""
    data = bytearray(good_file.read_bytes())
    i = int(pos * (len(data) - 1))
    data[i] ^= 1 << bit
    flipped = good_file.with_name("flipped.h5")
    flipped.write_bytes(bytes(data))
    try:
        back = read_model(flipped)
    except ModelFileError:
        return
    for name, array in model.tensors.items():
        assert np.array_equal(back.tensors[name].view(np.uint32), array.view(np.uint32))
    assert back.spm_model == model.spm_model


def _counting_sha256(monkeypatch):
    from albert_ref.weights import model_file
    hashed = []

    def counting(data):
        hashed.append(len(memoryview(data.data if isinstance(data, np.ndarray) else data).cast("B")))
        return sha256(data)
    monkeypatch.setattr(model_file, "sha256", counting)
    return hashed


def test_digest_uses_the_stored_checksums_and_never_hashes_twice(tmp_path, model, monkeypatch):
    fresh = ModelFile(model.config, dict(model.tensors), model.spm_model, model.tokenizer_options, model.provenance)
    expected = fresh.digest  # hashed from the data: nothing recorded yet
    path = tmp_path / "m.h5"
    hashed = _counting_sha256(monkeypatch)
    write_model(path, fresh)
    assert len(hashed) == len(model.tensors) + 1  # each tensor and the tokenizer, once
    assert fresh.checksums == {n: sha256(t) for n, t in model.tensors.items()}
    hashed.clear()
    assert fresh.digest == expected and hashed == []  # recorded by write_model
    unverified = read_model(path, verify=False)
    assert unverified.checksums == fresh.checksums
    assert unverified.digest == expected and hashed == []  # verify=False hashes nothing at all
    verified = read_model(path)
    assert len(hashed) == len(model.tensors) + 1
    assert verified.digest == expected and len(hashed) == len(model.tensors) + 1


def test_unverified_read_of_version_1_hashes_only_what_has_no_usable_checksum(good_file, model, monkeypatch):
    as_format_version_1(good_file)
    _edit(good_file, lambda f: f["weights/" + EMB].attrs.__delitem__("sha256"))
    with pytest.raises(ModelFileError, match="missing attribute.*sha256"):
        read_model(good_file)
    back = read_model(good_file, verify=False)
    assert EMB not in back.checksums and len(back.checksums) == len(model.tensors) - 1
    hashed = _counting_sha256(monkeypatch)
    assert back.digest == model.digest and hashed == [model.tensors[EMB].nbytes]


def test_unverified_read_of_version_2_takes_the_checksums_from_the_manifest(good_file, model, monkeypatch):
    _edit(good_file, lambda f: f["weights/" + EMB].attrs.__delitem__("sha256"))
    with pytest.raises(ModelFileError, match="missing attribute.*sha256"):
        read_model(good_file)
    hashed = _counting_sha256(monkeypatch)
    back = read_model(good_file, verify=False)
    assert back.digest == model.digest and hashed == []


@pytest.mark.parametrize("edit", [
    lambda f: f["weights/" + EMB].attrs.__setitem__("sha256", "0" * 64),
    lambda f: f["weights/bert/pooler/dense/bias"].__setitem__(0, 1.5),
    lambda f: f["tokenizer/sentencepiece"].__setitem__(0, 0),
])
def test_checksum_mismatches_raise_checksum_error(good_file, edit):
    from albert_ref.weights.model_file import ChecksumError
    _edit(good_file, edit)
    with pytest.raises(ChecksumError, match="SHA-256 mismatch"):
        read_model(good_file)
    read_model(good_file, verify=False)  # everything else about the file is valid


def test_other_damage_is_not_a_checksum_error(good_file):
    from albert_ref.weights.model_file import ChecksumError
    _edit(good_file, lambda f: f["weights/" + EMB].attrs.__delitem__("sha256"))
    with pytest.raises(ModelFileError) as info:
        read_model(good_file)
    assert not isinstance(info.value, ChecksumError)


def test_file_sha256_hashes_the_whole_file(tmp_path):
    import hashlib
    from albert_ref.weights.model_file import file_sha256
    for size in (0, 5, (1 << 24) + 3):  # empty, one block, across a block boundary
        path = tmp_path / f"f{size}"
        data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
        path.write_bytes(data)
        assert file_sha256(path) == hashlib.sha256(data).hexdigest()
    with pytest.raises(OSError):
        file_sha256(tmp_path / "missing")


def test_convert_sees_each_checked_tensor_once_and_the_digest_is_the_files(good_file, model):
    seen = []

    def convert(name, array):
        seen.append(name)
        assert np.array_equal(array.view(np.uint32), model.tensors[name].view(np.uint32))
        return ("converted", name)
    back = read_model(good_file, convert=convert)
    assert sorted(seen) == sorted(model.tensors)
    assert back.tensors == {name: ("converted", name) for name in model.tensors}
    assert back.digest == model.digest and back.heads == ("mlm", "sop")


def _mapped_kib(path) -> int:
    """Resident KiB of this process's mappings of `path`."""
    return sum(int(fields["Rss:"][0]) for _, _, mapped, fields in smaps() if mapped == str(path))


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="reads Linux's /proc/self/smaps")
@pytest.mark.parametrize("verify", [True, False])
def test_reading_holds_at_most_two_of_the_files_tensors(tmp_path, verify):
    """The data is read through a map of the file whose pages are dropped once a tensor has
    been hashed and converted (load() packs dense kernels this way, so a model's arrays and
    their packed copies never all coexist): while any tensor is converted, at most two
    tensors' worth of the file is resident in the process (plus the pages the kernel maps
    around a fault)."""
    from albert_ref.weights.model_file import FAULT_AROUND
    model = random_model_file(tiny_config(vocab_size=512, embedding_size=64, hidden_size=128, intermediate_size=512,
                                          num_attention_heads=2, num_hidden_layers=4, num_hidden_groups=4))
    path = tmp_path / "big.h5"
    write_model(path, model)
    largest = sorted(array.nbytes for array in model.tensors.values())[-2:]
    assert os.path.getsize(path) > 4 * sum(largest)   # the whole file resident would fail
    resident = []

    def convert(name, array):
        resident.append(_mapped_kib(path.resolve()))
        return array
    back = read_model(path, verify=verify, convert=convert)
    assert len(resident) == len(model.tensors)
    assert 0 < max(resident) and max(resident) * 1024 <= sum(largest) + 2 * (FAULT_AROUND + 4096), resident
    assert _mapped_kib(path.resolve()) == 0                          # unmapped at the end
    for name, array in back.tensors.items():   # the process's own, writable arrays (none on the map: unmapped)
        assert array.flags.writeable, name
        assert np.array_equal(array.view(np.uint32), model.tensors[name].view(np.uint32)), name


@pytest.mark.parametrize("verify", [True, False])
def test_a_damaged_tensor_fails_the_read_with_or_without_convert(good_file, verify):
    """A tensor damaged into a NaN is a checksum error when verifying (the hash runs beside
    the finiteness check and takes precedence), a non-finite value otherwise."""
    from albert_ref.weights.model_file import ChecksumError
    _edit(good_file, lambda f: f["weights/bert/pooler/dense/bias"].__setitem__(1, np.nan))
    for convert in (None, lambda name, array: array.copy()):
        with pytest.raises(ChecksumError if verify else ModelFileError, match="SHA-256" if verify else "non-finite"):
            read_model(good_file, verify=verify, convert=convert)


def test_a_tensor_without_stored_data_is_read_as_its_fill_values(good_file, model):
    """A dataset whose storage was never written (nothing to map) reads as HDF5 reads it,
    as its fill values, which then fail the tensor's checksum."""
    from albert_ref.weights.model_file import ChecksumError
    name = "bert/pooler/dense/bias"

    def unwritten(f):
        stored = f["weights/" + name].attrs["sha256"]
        del f["weights/" + name]
        f.create_dataset("weights/" + name, shape=model.tensors[name].shape, dtype="<f4", fillvalue=0.5)
        f["weights/" + name].attrs["sha256"] = stored
    _edit(good_file, unwritten)
    with pytest.raises(ChecksumError, match=f"{name}: SHA-256 mismatch"):
        read_model(good_file)
    back = read_model(good_file, verify=False)
    assert np.all(back.tensors[name] == 0.5)


@pytest.mark.parametrize("verify", [True, False])
def test_a_file_that_cannot_be_mapped_is_read_by_h5py_with_the_same_checks(good_file, model, monkeypatch, verify):
    """Some file systems refuse mmap: the read falls back to h5py, one tensor at a time."""
    from albert_ref.weights import model_file
    from albert_ref.weights.model_file import ChecksumError

    def refuse(*args, **kwargs):
        raise OSError(19, "No such device")
    monkeypatch.setattr(model_file.mmap, "mmap", refuse)
    back = read_model(good_file, verify=verify, convert=lambda name, array: array)
    for name, array in model.tensors.items():
        assert np.array_equal(back.tensors[name].view(np.uint32), array.view(np.uint32)), name
    assert back.digest == model.digest
    _edit(good_file, lambda f: f["weights/bert/pooler/dense/bias"].__setitem__(1, np.nan))
    with pytest.raises(ChecksumError if verify else ModelFileError, match="SHA-256" if verify else "non-finite"):
        read_model(good_file, verify=verify)


def test_a_converter_s_error_is_its_own_not_a_corrupt_file(good_file):
    """What fails while a valid tensor is converted (a backend without a GPU, out of memory)
    is raised as it is, not as the file's corruption."""
    def convert(name, array):
        raise RuntimeError("the converter failed")
    with pytest.raises(RuntimeError, match="^the converter failed$"):
        read_model(good_file, convert=convert)


@pytest.mark.skipif(os.name != "posix", reason="maps the file as POSIX systems do")
def test_a_converted_tensor_that_keeps_a_view_of_the_map_is_reported(good_file):
    """Nothing may stay on the file's map after reading (an in-place rewrite of the file
    would then fault the process): a converter result that holds a view is a bug, named."""
    with pytest.raises(RuntimeError, match="still reads from the file's memory map"):
        read_model(good_file, convert=lambda name, array: [array])
