"""`albert-ref convert | run | tokenize | info | verify` as a user runs them, and failed
conversions that must leave nothing behind."""
import gzip
import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from albert_ref.cli import main
from model_util import flip_byte

FIXTURES = Path(__file__).parent / "fixtures" / "tf"
HUB = FIXTURES / "hub_module"


def cli(*args):
    """Run the installed console script, as a user would."""
    exe = shutil.which("albert-ref") or pytest.fail("albert-ref console script is not installed")
    return subprocess.run([exe, *map(str, args)], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def hub_h5(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "hub.h5"
    r = cli("convert", HUB, out)
    assert r.returncode == 0, r.stderr
    assert "tf_hub_module" in r.stdout and "tokenizer: yes" in r.stdout
    return out


def test_run_writes_the_tokens_signature(hub_h5, tmp_path):
    with np.load(HUB / "inputs.npz") as f:
        np.savez(tmp_path / "in.npz", **f)
        mask = f["input_mask"]
    r = cli("run", hub_h5, "--inputs", tmp_path / "in.npz", "--output", tmp_path / "out.npz",
            "--backend", "numpy", "--dtype", "float64")
    assert r.returncode == 0, r.stderr
    with np.load(tmp_path / "out.npz") as out, np.load(HUB / "expected.npz") as exp:
        real = mask.astype(bool)
        np.testing.assert_allclose(out["sequence_output"][real], exp["sequence_output_f64"][real], atol=1e-9, rtol=0)
        np.testing.assert_allclose(out["pooled_output"], exp["pooled_output_f64"], atol=1e-9, rtol=0)


def test_run_bad_inputs_leave_no_output(hub_h5, tmp_path):
    with np.load(HUB / "inputs.npz") as f:
        np.savez(tmp_path / "in.npz", input_ids=f["input_ids"] + 10**6, input_mask=f["input_mask"])
    r = cli("run", hub_h5, "--inputs", tmp_path / "in.npz", "--output", tmp_path / "out.npz", "--backend", "numpy")
    assert r.returncode == 2 and "input_ids[0, 0]" in r.stderr and "vocab_size" in r.stderr
    assert not (tmp_path / "out.npz").exists()
    np.savez(tmp_path / "empty.npz", nothing=np.zeros(1))
    r = cli("run", hub_h5, "--inputs", tmp_path / "empty.npz", "--output", tmp_path / "out.npz", "--backend", "numpy")
    assert r.returncode == 2 and "no input_ids" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.npz", "in.npz"]  # no output, no temporary


def test_run_failing_mid_write_leaves_nothing(hub_h5, tmp_path, monkeypatch):
    # the failure comes after the output has been opened and written to
    shutil.copy(HUB / "inputs.npz", tmp_path / "in.npz")

    def disk_full(fd):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr("albert_ref.atomic.os.fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        main(["run", str(hub_h5), "--inputs", str(tmp_path / "in.npz"), "--output", str(tmp_path / "out.npz"),
              "--backend", "numpy"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npz"]


def test_tokenize_json(hub_h5):
    r = cli("tokenize", hub_h5, "Hello, world", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["pieces"][0] == "[CLS]" and doc["pieces"][-1] == "[SEP]"
    assert doc["input_ids"][0] == 2 and doc["input_ids"][-1] == 3
    assert len(doc["pieces"]) == len(doc["input_ids"]) == len(doc["segment_ids"])
    r = cli("tokenize", hub_h5, "first", "second", "--pair", "--json")
    doc = json.loads(r.stdout)
    assert doc["input_ids"].count(3) == 2 and doc["segment_ids"][-1] == 1


def test_info_and_verify(hub_h5):
    r = cli("info", hub_h5, "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["provenance"]["source_format"] == "tf_hub_module"
    assert info["tokenizer"]["flavour"] == "original"
    r = cli("verify", hub_h5)
    assert r.returncode == 0 and "OK" in r.stdout
    assert info["checksums"].startswith("OK")


def test_verify_detects_corruption(hub_h5, tmp_path):
    bad = tmp_path / "bad.h5"
    data = bytearray(hub_h5.read_bytes())
    # Flip a byte inside the largest tensor's data (word embeddings sit well past the metadata).
    with __import__("h5py").File(hub_h5) as f:
        offset = f["weights/bert/embeddings/word_embeddings"].id.get_offset()
    data[offset + 10] ^= 0x40
    bad.write_bytes(bytes(data))
    r = cli("verify", bad)
    assert r.returncode == 1 and "word_embeddings: SHA-256 mismatch" in r.stderr
    r = cli("info", bad)  # still describes the file, but says the checksums failed
    assert r.returncode == 1 and "hidden 32" in r.stdout and "checksums: FAILED" in r.stdout


def _corrupt_copy(tmp_path, damage):
    src = tmp_path / "src"
    shutil.copytree(HUB, src)
    damage(src)
    return src


@pytest.mark.parametrize("damage, match", [
    (lambda d: (d / "variables" / "variables.index").write_bytes((d / "variables" / "variables.index").read_bytes()[:-20]),
     "variables.index"),
    (lambda d: (d / "assets" / "albert_config.json").unlink(), "albert_config.json"),
    (lambda d: (d / "assets" / "albert_config.json").write_text('{"hidden_size": 7}'), "missing required field"),
    (lambda d: (d / "assets" / "albert_config.json").write_text(
        json.dumps({**json.loads((HUB / "assets" / "albert_config.json").read_text()), "num_attention_heads": 1,
                    "hidden_size": 8})), "shape"),
])
def test_failed_conversion_leaves_no_file(tmp_path, damage, match):
    src = _corrupt_copy(tmp_path, damage)
    out = tmp_path / "out" / "model.h5"
    out.parent.mkdir()
    assert main(["convert", str(src), str(out)]) == 2
    assert list(out.parent.iterdir()) == []


def test_failed_conversion_message(tmp_path, capsys):
    src = _corrupt_copy(tmp_path, lambda d: (d / "assets" / "albert_config.json").unlink())
    main(["convert", str(src), str(tmp_path / "m.h5")])
    assert "no albert_config.json" in capsys.readouterr().err


def hub_archive(path: Path, gz: bool = True, compresslevel: int = 9, padding: int = 0) -> Path:
    """HUB as a downloaded TF-Hub archive: .tar.gz (gz) or plain .tar, `padding` zero bytes
    after the tar's end-of-archive marker (as tar's blocking factor adds)."""
    import tarfile
    body = io.BytesIO()
    with tarfile.open(fileobj=body, mode="w") as tar:
        tar.add(HUB / "variables", arcname="variables")
        tar.add(HUB / "assets", arcname="assets")
    data = body.getvalue() + bytes(padding)
    path.write_bytes(gzip.compress(data, compresslevel, mtime=0) if gz else data)
    return path


@pytest.mark.parametrize("gz", [True, False])
def test_hub_archive_converts_as_its_directory(hub_h5, tmp_path, gz):
    from albert_ref.weights.model_file import read_model
    archive = hub_archive(tmp_path / ("m.tar.gz" if gz else "m.tar"), gz)
    assert main(["convert", str(archive), str(tmp_path / "m.h5")]) == 0
    got, want = read_model(tmp_path / "m.h5"), read_model(hub_h5)
    assert got.provenance["source_format"] == "tf_hub_module" and archive.name in got.provenance["sources"]
    assert got.tensors.keys() == want.tensors.keys()
    assert all(got.tensors[k].tobytes() == want.tensors[k].tobytes() for k in want.tensors)


# A stored (level 0) gzip inflates a flipped byte without complaint: only its CRC-32, at the
# stream's end, tells. Flipped in the first tar header (tarfile fails first) or in the tar's
# zero padding after its end-of-archive marker (which tarfile never reads), it is the
# download that is damaged.
@pytest.mark.parametrize("name, damage, message", [
    ("m.tar.gz", lambda a: a.write_bytes(a.read_bytes()[: a.stat().st_size // 2]), "damaged gzip stream"),
    ("m.tar.gz", lambda a: flip_byte(a, 10 + 5 + 100, 0x20), "damaged gzip stream"),
    ("m.tar.gz", lambda a: flip_byte(a, a.stat().st_size - 8 - 1024 - 2000, 0x20), "damaged gzip stream"),
    ("m.tar.gz", lambda a: a.write_bytes(a.read_bytes()[:-3]), "damaged gzip stream"),
    ("m.tar", lambda a: a.write_bytes(a.read_bytes()[: a.stat().st_size // 2]), "unreadable archive"),
])
def test_damaged_hub_archive_is_named_and_leaves_no_file(tmp_path, capsys, name, damage, message):
    archive = hub_archive(tmp_path / name, name.endswith(".gz"), compresslevel=0)
    damage(archive)
    assert main(["convert", str(archive), str(tmp_path / "m.h5")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "m.h5").exists()


def test_sound_gzip_of_a_truncated_tar_is_an_unreadable_archive(tmp_path, capsys):
    archive = hub_archive(tmp_path / "m.tar", gz=False)
    (tmp_path / "m.tar.gz").write_bytes(gzip.compress(archive.read_bytes()[: archive.stat().st_size // 2]))
    assert main(["convert", str(tmp_path / "m.tar.gz"), str(tmp_path / "m.h5")]) == 2
    err = capsys.readouterr().err
    assert "unreadable archive" in err and "damaged gzip" not in err


@pytest.mark.parametrize("gz, damaged", [(True, False), (True, True), (False, False)])
def test_hub_archive_is_read_once(tmp_path, monkeypatch, gz, damaged):
    """One pass over the archive gives the modules, the gzip checks and the provenance's
    SHA-256: a damaged gzip is not decompressed again to name the damage, and the digest
    is not taken by reading the file again."""
    import builtins
    archive = hub_archive(tmp_path / ("m.tar.gz" if gz else "m.tar"), gz, padding=0 if gz else 1 << 20)
    if damaged:
        flip_byte(archive, archive.stat().st_size - 8 - 1024 - 2000, 0x20)
    read = []
    real_open = builtins.open

    class Counting(io.BufferedReader):
        def read(self, size=-1):
            data = super().read(size)
            read.append(len(data))
            return data

    def counting_open(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, Path)) and Path(file) == archive:
            return Counting(real_open(file, "rb", buffering=0))
        return real_open(file, mode, *args, **kwargs)
    monkeypatch.setattr(builtins, "open", counting_open)
    status = main(["convert", str(archive), str(tmp_path / "m.h5")])
    monkeypatch.undo()
    assert status == (2 if damaged else 0)
    assert sum(read) <= archive.stat().st_size + 2      # + the magic bytes, read before the pass
    if not damaged:
        from albert_ref.weights.model_file import file_sha256, read_model
        assert read_model(tmp_path / "m.h5").provenance["sources"][archive.name] == file_sha256(archive)


def test_unknown_source(tmp_path, capsys):
    assert main(["convert", str(tmp_path / "nothing"), str(tmp_path / "m.h5")]) == 2
    assert "no such checkpoint" in capsys.readouterr().err


def _tiny_hf_dir(path, poison=None, safe=True):
    from peers import require_peers
    torch, transformers = require_peers()
    cfg = transformers.AlbertConfig(vocab_size=30, embedding_size=8, hidden_size=8, num_hidden_layers=1,
                                    num_attention_heads=2, intermediate_size=16, max_position_embeddings=16)
    model = transformers.AlbertModel(cfg)
    if poison:
        with torch.no_grad():
            poison(model)
    model.save_pretrained(path, safe_serialization=safe)
    return path


def test_nan_weight_in_source_leaves_no_file(tmp_path, capsys):
    src = _tiny_hf_dir(tmp_path / "hf", poison=lambda m: m.pooler.weight.__setitem__((0, 3), float("nan")))
    out = tmp_path / "out"
    out.mkdir()
    assert main(["convert", str(src), str(out / "m.h5")]) == 2
    assert "bert/pooler/dense/kernel: non-finite value nan at index (3, 0)" in capsys.readouterr().err
    assert list(out.iterdir()) == []


def test_pickle_that_runs_code_leaves_no_file(tmp_path, capsys):
    import pickle
    src = _tiny_hf_dir(tmp_path / "hf", safe=False)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))
    (src / "pytorch_model.bin").write_bytes(pickle.dumps({"x": Evil()}))
    out = tmp_path / "out"
    out.mkdir()
    assert main(["convert", str(src), str(out / "m.h5")]) == 2
    assert "system" in capsys.readouterr().err
    assert not marker.exists() and list(out.iterdir()) == []


def test_info_digest_of_a_damaged_file_describes_its_data(hub_h5, tmp_path):
    from albert_ref.weights.model_file import ModelFile, read_model
    bad = tmp_path / "bad.h5"
    shutil.copy(hub_h5, bad)
    with __import__("h5py").File(bad, "r+") as f:
        ds = f["weights/bert/pooler/dense/bias"]
        ds[0] = ds[0] + 1
    r = cli("info", bad, "--json")
    assert r.returncode == 1
    m = read_model(bad, verify=False)
    as_read = ModelFile(m.config, m.tensors, m.spm_model, m.tokenizer_options, m.provenance)  # no stored checksums
    assert json.loads(r.stdout)["digest"] == as_read.digest != m.digest
