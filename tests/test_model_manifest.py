"""Format version 2: a manifest of everything that decides an output, hashed into the
model digest and checked on reading. Edits that keep a file self-consistent at the
level of a single dataset (a valid config value, swapped or aliased tensors with their
checksums, tokenizer options) must be refused; version-1 files still load."""
import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from albert_ref.cli import main
from albert_ref.errors import ModelFileError
from albert_ref.weights.model_file import GUARANTEES, ManifestError, ModelFile, read_header, read_model, write_model
from model_util import as_format_version_1
from test_model_file import _edit, good_file, model  # noqa: F401 (the fixtures)

BLOCK = "weights/bert/encoder/transformer/group_0/inner_group_0/attention_1/self/"


def _set_config(**changes):
    def edit(f):
        f.attrs["config"] = json.dumps({**json.loads(f.attrs["config"]), **changes})
    return edit


def _set_options(**changes):
    def edit(f):
        f["tokenizer"].attrs["options"] = json.dumps({**json.loads(f["tokenizer"].attrs["options"]), **changes})
    return edit


def _swap(f, a, b):
    f.move(a, a + "_")
    f.move(b, a)
    f.move(a + "_", b)


def _alias(f, target, alias):
    del f[alias]
    f[alias] = f[target]


@pytest.mark.parametrize("edit, error, match", [
    # other valid values: the tensors still fit the config, only the manifest can tell
    (_set_config(num_hidden_layers=2), ManifestError, "config.num_hidden_layers is 2, the manifest says 3"),
    (_set_config(hidden_act="gelu_erf"), ManifestError, "config.hidden_act"),
    (_set_config(layer_norm_eps=1e-5), ManifestError, "config.layer_norm_eps"),
    (_set_options(do_lower_case=True), ManifestError, "tokenizer.options.do_lower_case"),
    (_set_options(flavour="bogus"), ModelFileError, "flavour 'bogus' is not one of"),
    (lambda f: _alias(f, BLOCK + "query/kernel", BLOCK + "key/kernel"), ModelFileError, "linked more than once"),
    (lambda f: f.create_group("extra"), ModelFileError, "unexpected object.*extra"),
    (lambda f: f.create_group("weights/bert/empty"), ModelFileError, "unexpected object.*weights/bert/empty"),
    (lambda f: f.attrs.__setitem__("pipeline", "{}"), ModelFileError, "invalid pipeline"),
    # a valid pipeline slipped into a plain model would change its vectors: the manifest tells
    (lambda f: f.attrs.__setitem__("pipeline", '{"pooling": ["mean"], "max_seq_length": null, "dense": [], '
                                               '"normalize": true}'), ManifestError, "pipeline is .*the manifest says null"),
    (lambda f: f[BLOCK + "query/kernel"].attrs.__setitem__("scale", 2.0), ModelFileError, "unexpected attribute.*scale"),
    (lambda f: f.attrs.__setitem__("manifest", f.attrs["manifest"].replace(b'"gelu_tanh"', b'"gelu_erf"')),
     ManifestError, "manifest does not match the stored digest"),
    (lambda f: f.attrs.__setitem__("digest", "0" * 64), ManifestError, "manifest does not match the stored digest"),
    (lambda f: f.attrs.__delitem__("manifest"), ModelFileError, "missing attribute.*manifest"),
])
def test_edits_that_change_the_function_are_refused(good_file, edit, error, match):
    _edit(good_file, edit)
    for verify in (True, False):  # none of these needs the data hashed
        with pytest.raises(error, match=match):
            read_model(good_file, verify=verify)


def test_a_consistent_manifest_and_digest_still_have_to_match_the_contents(good_file):
    """Rewriting the manifest and its digest together does not make an edit pass: the
    manifest is compared with what the file holds."""
    import hashlib

    def forge(f):
        manifest = json.loads(f.attrs["manifest"])
        manifest["config"]["hidden_act"] = "relu"
        text = json.dumps(manifest, sort_keys=True, separators=(",", ":"))
        f.attrs["manifest"], f.attrs["digest"] = text, hashlib.sha256(text.encode()).hexdigest()
    _edit(good_file, forge)
    for read in (read_model, read_header):
        with pytest.raises(ManifestError, match="config.hidden_act is \"gelu_tanh\", the manifest says \"relu\""):
            read(good_file)


def test_a_manifest_not_in_canonical_form_is_refused(good_file):
    """The digest names the canonical manifest: one re-serialised (here with spaces), even
    with a matching digest, would give the file a second name."""
    import hashlib

    def respace(f):
        text = json.dumps(json.loads(f.attrs["manifest"]), sort_keys=True)
        f.attrs["manifest"], f.attrs["digest"] = text, hashlib.sha256(text.encode()).hexdigest()
    _edit(good_file, respace)
    for read in (read_model, read_header):
        with pytest.raises(ManifestError, match="not in canonical form"):
            read(good_file)


def _swap_data(f, a, b):
    a, b = f[a], f[b]
    ad, bd, asum, bsum = a[()], b[()], a.attrs["sha256"], b.attrs["sha256"]
    a[...], b[...] = bd, ad
    a.attrs["sha256"], b.attrs["sha256"] = bsum, asum


@pytest.mark.parametrize("swap", [_swap, _swap_data])
def test_swapped_tensors_with_their_checksums_are_caught_by_the_manifest(good_file, swap):
    """Whether the datasets trade names or their data and checksum attributes trade
    places. (verify=False trusts the data and its checksum attributes, so only a
    verifying read can tell.)"""
    _edit(good_file, lambda f: swap(f, BLOCK + "query/kernel", BLOCK + "key/kernel"))
    with pytest.raises(ManifestError, match="tensor .*self/(key|query)/kernel holds the data the manifest lists for "
                                            ".*self/(query|key)/kernel"):
        read_model(good_file)


def test_version_1_files_load_with_their_weaker_guarantee(good_file, model, capsys):
    as_format_version_1(good_file)
    back = read_model(good_file)
    assert back.format_version == 1 and back.digest == model.digest == read_header(good_file).digest
    assert main(["info", str(good_file)]) == 0   # info says which guarantee the file has
    assert "covered by no stored checksum" in GUARANTEES[1] and GUARANTEES[1] in capsys.readouterr().out
    _edit(good_file, _set_config(hidden_act="gelu_erf"))  # what version 1 cannot catch...
    assert read_model(good_file).digest != model.digest  # ...but the digest still tells


def test_read_header_of_a_version_1_file_keeps_no_tensor(good_file, model, monkeypatch):
    """Without a manifest, the digest comes from each tensor's shape, dtype and stored
    checksum; nothing is copied off the file (xlarge: 235 MB), and a tensor's data is
    hashed only where its stored checksum is unusable, as read_model(verify=False) does."""
    from albert_ref.weights import model_file
    as_format_version_1(good_file)

    def no_copy(array):
        raise AssertionError("read_header copied a tensor")
    hashed = []

    def sha256(data):
        hashed.append(np.shape(data))
        return real_sha256(data)
    real_sha256 = model_file.sha256
    monkeypatch.setattr(model_file, "weight_copy", no_copy)
    monkeypatch.setattr(model_file, "sha256", sha256)
    assert read_header(good_file).digest == model.digest and hashed == []
    _edit(good_file, lambda f: f[BLOCK + "query/kernel"].attrs.__setitem__("sha256", "not a checksum"))
    header = read_header(good_file)
    assert hashed == [model.tensors[BLOCK[8:] + "query/kernel"].shape]   # that tensor alone
    monkeypatch.undo()
    assert header.digest == model.digest == read_model(good_file, verify=False).digest


def test_writing_always_writes_the_current_version(good_file, tmp_path, model):
    as_format_version_1(good_file)
    upgraded = tmp_path / "new.h5"
    write_model(upgraded, read_model(good_file))
    assert read_model(upgraded).format_version == 2 and read_model(upgraded).digest == model.digest


_CONFIG_EDITS = dict(num_hidden_layers=4, hidden_act="relu", layer_norm_eps=1e-6, initializer_range=0.5,
                     max_position_embeddings=40)


@settings(max_examples=20, deadline=None)
@given(what=st.sampled_from(["config", "options", "tokenizer", "rename", "tensor"]), seed=st.integers(0, 2**16))
def test_the_digest_covers_everything_that_decides_an_output(model, what, seed):
    rng = np.random.default_rng(seed)
    config, tensors = model.config, dict(model.tensors)
    spm, options = model.spm_model, dict(model.tokenizer_options)
    if what == "config":
        field = list(_CONFIG_EDITS)[seed % len(_CONFIG_EDITS)]
        value = _CONFIG_EDITS[field] if field != "max_position_embeddings" else config.max_position_embeddings + 1
        config = type(config)(**{**config.to_dict(), field: value})
        if field == "max_position_embeddings":
            tensors["bert/embeddings/position_embeddings"] = np.zeros((value, config.embedding_size), np.float32)
    elif what == "options":
        key = ["do_lower_case", "remove_space"][seed % 2]
        options[key] = not options[key]
    elif what == "tokenizer":
        spm = spm + bytes([seed % 256])
    elif what == "rename":  # two same-shape tensors trade names
        q, k = BLOCK[8:] + "query/kernel", BLOCK[8:] + "key/kernel"
        tensors[q], tensors[k] = tensors[k], tensors[q]
    else:
        name = sorted(tensors)[seed % len(tensors)]
        flat = tensors[name].copy().reshape(-1)
        flat.view(np.uint32)[rng.integers(flat.size)] ^= np.uint32(1 << int(rng.integers(32)))
        tensors[name] = flat.reshape(tensors[name].shape)
    changed = ModelFile(config, tensors, spm, options)
    assert changed.digest != model.digest


def test_read_header_reads_no_tensor_but_checks_what_it_reads(good_file):
    """`albert-ref tokenize` and a Dask client read the config, tokenizer, pipeline and digest
    alone (read_header): the same as read_model gives, the tokenizer's bytes hashed, config
    and options held to the manifest; damage to a tensor's data, which they never read,
    does not stop it."""
    from albert_ref.weights.model_file import ChecksumError, read_header
    full, part = read_model(good_file), read_header(good_file)
    assert (part.config, part.spm_model, part.tokenizer_options, part.pipeline, part.digest) == (
        full.config, full.spm_model, full.tokenizer_options, full.pipeline, full.digest)

    def flip_tensor(f):
        ds = f[BLOCK + "query/kernel"]
        ds[0, 0] = -ds[0, 0] - 1
    _edit(good_file, flip_tensor)
    with pytest.raises(ChecksumError):
        read_model(good_file)
    assert read_header(good_file).spm_model == full.spm_model

    _edit(good_file, _set_options(do_lower_case=True))
    with pytest.raises(ManifestError, match="tokenizer.options.do_lower_case"):
        read_header(good_file)


def test_read_header_checks_the_tokenizer_bytes(good_file):
    from albert_ref.weights.model_file import ChecksumError, read_header

    def flip(f):
        ds = f["tokenizer/sentencepiece"]
        ds[10] = ds[10] ^ 1
    _edit(good_file, flip)
    with pytest.raises(ChecksumError):
        read_header(good_file)
