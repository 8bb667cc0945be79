"""Every expected failure of the command line is `albert-ref: error: ...` with exit status
2 and nothing half-written: bad output paths, thread counts, damaged inputs, configs and
tokenizers, archives; and a signal stops a command even where the shell ignored SIGINT."""
import json
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from albert_ref.cli import main
from albert_ref.weights import DEMO_MODEL
from albert_ref.weights.model_file import read_model, write_model
from model_util import as_format_version_1, random_model_file, tiny_config
from test_convert_cli import HUB, _tiny_hf_dir, hub_archive
from test_embed_resume import chunks, command, texts

HUB_SPM = HUB / "assets" / "30k-clean.model"


def fails(capsys, *argv, status=2):
    """Run the CLI in-process; it must fail with `status` and one named error, no traceback."""
    assert main([str(a) for a in argv]) == status
    err = capsys.readouterr().err
    assert err.startswith("albert-ref: error: ") and "Traceback" not in err, err
    return err


def _listing(path):
    return sorted(p.name for p in path.iterdir())


@pytest.fixture(scope="module")
def inputs_npz(tmp_path_factory):
    path = tmp_path_factory.mktemp("inputs") / "in.npz"
    np.savez(path, input_ids=np.array([[2, 10, 11, 3]], np.int32), input_mask=np.ones((1, 4), np.int32))
    return path


# -- output paths ---------------------------------------------------------------------------------

def _outputs(tmp_path, inputs_npz):
    """(argv ending in the output path) for each command that writes a file."""
    return {
        "convert": lambda out: ["convert", HUB, out],
        "run": lambda out: ["run", DEMO_MODEL, "--inputs", inputs_npz, "--output", out, "--backend", "numpy"],
        "embed": lambda out: ["embed", "hello", "-o", out, "--backend", "numpy"],
        "golden": lambda out: ["golden", DEMO_MODEL, "--inputs", inputs_npz, "-o", out],
    }


@pytest.mark.parametrize("command_name", ["convert", "run", "embed", "golden"])
def test_unwritable_output_paths(tmp_path, capsys, inputs_npz, command_name):
    argv = _outputs(tmp_path, inputs_npz)[command_name]
    (tmp_path / "a_dir").mkdir()
    suffix = {"convert": ".h5", "run": ".npz", "embed": ".npy", "golden": ".json"}[command_name]
    existing_dir = tmp_path / f"a_dir{suffix}"
    existing_dir.mkdir()
    assert "is a directory" in fails(capsys, *argv(existing_dir))
    missing = fails(capsys, *argv(tmp_path / "missing" / f"out{suffix}"))
    assert "is not an existing directory" in missing or "no such directory" in missing
    assert _listing(tmp_path) == ["a_dir", f"a_dir{suffix}"] and _listing(existing_dir) == []


@pytest.mark.parametrize("threads, match", [("0", "threads must be a positive integer"),
                                            ("-1", "threads must be a positive integer"),
                                            ("1000000", "threads must be between 1 and")])
def test_thread_counts_out_of_range(tmp_path, capsys, inputs_npz, threads, match):
    err = fails(capsys, "run", DEMO_MODEL, "--inputs", inputs_npz, "--output", tmp_path / "o.npz", "--threads", threads)
    assert match in err and _listing(tmp_path) == []


# -- run --inputs -----------------------------------------------------------------------------------

def _damaged_npz(tmp_path, inputs_npz, how):
    data = inputs_npz.read_bytes()
    path = tmp_path / "bad.npz"
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "crc":  # a flipped byte inside the stored (uncompressed) array data
        with zipfile.ZipFile(inputs_npz) as z:
            info = z.getinfo("input_ids.npy")
        at = info.header_offset + 30 + len(info.filename) + len(info.extra) + info.file_size - 1
        path.write_bytes(data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1:])
    elif how == "huge":  # a header claiming a 4 TB array
        header = "{'descr': '<i4', 'fortran_order': False, 'shape': (1000000, 1000000), }"
        header += " " * (118 - len(header)) + "\n"
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("input_ids.npy", b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode()
                       + b"\0" * 64)
    elif how == "npy":
        path = tmp_path / "ids.npy"
        np.save(path, np.zeros((1, 4), np.int32))
    elif how == "directory":
        path.mkdir()
    return path


@pytest.mark.parametrize("how, match", [("truncated", "not an .npz archive"), ("crc", "Bad CRC-32"),
                                        ("huge", "claims a 1000000x1000000 int32 array"),
                                        ("npy", "a single .npy array"), ("directory", "is a directory")])
def test_damaged_run_inputs(tmp_path, capsys, inputs_npz, how, match):
    bad = _damaged_npz(tmp_path, inputs_npz, how)
    out = tmp_path / "out" / "o.npz"
    out.parent.mkdir()
    assert match in fails(capsys, "run", DEMO_MODEL, "--inputs", bad, "--output", out, "--backend", "numpy")
    assert _listing(out.parent) == []


def test_embed_jsonl_nested_too_deep(tmp_path, capsys):
    path = tmp_path / "deep.jsonl"
    path.write_text('{"text": "ok"}\n' + "[" * 100_000 + "]" * 100_000 + "\n")
    assert "deep.jsonl:2: JSON nested too deeply" in fails(capsys, "embed", "--input", path, "--backend", "numpy")


# -- configs ----------------------------------------------------------------------------------------

def test_a_billion_layers_is_refused_on_every_path(tmp_path, capsys):
    """Stored in an .h5, in an albert_config.json, in a Hugging Face config.json."""
    model = tmp_path / "m.h5"
    write_model(model, random_model_file(tiny_config()))
    with h5py.File(model, "r+") as f:
        f.attrs["config"] = json.dumps({**json.loads(f.attrs["config"]), "num_hidden_layers": 10**9})
    for cmd in ("verify", "info"):
        assert "'num_hidden_layers' is 1000000000, beyond the plausible range" in fails(capsys, cmd, model)

    hub = tmp_path / "hub"
    shutil.copytree(HUB, hub)
    config = hub / "assets" / "albert_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "num_hidden_layers": 10**9}))
    assert "num_hidden_layers" in fails(capsys, "convert", hub, tmp_path / "hub.h5")

    hf = _tiny_hf_dir(tmp_path / "hf")
    config = hf / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "num_hidden_layers": 10**9}))
    assert "num_hidden_layers" in fails(capsys, "convert", hf, tmp_path / "hf.h5")
    assert _listing(tmp_path) == ["hf", "hub", "m.h5"]


# -- tokenizers -------------------------------------------------------------------------------------

@pytest.mark.parametrize("spm, match", [
    (b"", "empty"),
    (np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes(), "corrupt sentencepiece model"),
    (HUB_SPM.read_bytes()[:-200], "corrupt sentencepiece model"),
    (read_model(DEMO_MODEL).spm_model, "379 pieces, but the model's vocab_size is 120"),
])
def test_converters_refuse_an_unusable_tokenizer(tmp_path, capsys, spm, match):
    (tmp_path / "x.model").write_bytes(spm)
    out = tmp_path / "out"
    out.mkdir()
    assert match in fails(capsys, "convert", HUB, out / "m.h5", "--spm", tmp_path / "x.model")
    assert _listing(out) == []


def test_huggingface_directory_with_a_garbage_tokenizer(tmp_path, capsys):
    hf = _tiny_hf_dir(tmp_path / "hf")
    (hf / "spiece.model").write_bytes(b"\x00garbage" * 100)
    assert "unusable tokenizer" in fails(capsys, "convert", hf, tmp_path / "m.h5")
    assert not (tmp_path / "m.h5").exists()


def test_verify_checks_the_tokenizer(tmp_path, capsys):
    path = tmp_path / "m.h5"
    write_model(path, random_model_file(tiny_config(), spm_model=read_model(DEMO_MODEL).spm_model))
    assert "tokenizer FAILED: the sentencepiece model has 379 pieces" in fails(capsys, "verify", path, status=1)
    assert main(["verify", str(DEMO_MODEL)]) == 0
    assert "tokenizer OK" in capsys.readouterr().out


def test_version_1_files_state_their_guarantee_and_convert_upgrades_them(tmp_path, capsys):
    old, new = tmp_path / "old.h5", tmp_path / "new.h5"
    shutil.copy(DEMO_MODEL, old)
    as_format_version_1(old)
    assert main(["info", str(old)]) == 0
    assert "format version 1" in capsys.readouterr().out
    assert main(["verify", str(old)]) == 0
    assert "format version 1" in capsys.readouterr().out
    assert main(["convert", str(old), str(new)]) == 0
    assert read_model(new).format_version == 2 and read_model(new).digest == read_model(DEMO_MODEL).digest


# -- archives ---------------------------------------------------------------------------------------

def test_damaged_gzip_stream_is_named(tmp_path, capsys):
    archive = hub_archive(tmp_path / "m.tar.gz")
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    archive.write_bytes(bytes(data))
    assert "damaged gzip stream" in fails(capsys, "convert", archive, tmp_path / "m.h5")
    assert _listing(tmp_path) == ["m.tar.gz"]


# -- signals ----------------------------------------------------------------------------------------

def test_sigint_stops_a_job_started_with_sigint_ignored(tmp_path):
    """A shell starts background jobs with SIGINT ignored; `kill -INT` must stop it all
    the same (exit 130, the finished chunks kept for resuming)."""
    inp, out = tmp_path / "in.txt", tmp_path / "out.h5"
    inp.write_text("\n".join(texts()) + "\n", encoding="utf-8")
    proc = subprocess.Popen([sys.executable, "-m", "albert_ref.cli", *command(inp, out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        while not chunks(out):
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130 and "run the same command again to resume" in err, err
    assert not out.exists()


# -- golden files -----------------------------------------------------------------------------------

@pytest.mark.parametrize("edit, match", [
    (lambda doc: doc["outputs"].__setitem__("pooled_output", 3), "are not objects with a shape and a sha256"),
    (lambda doc: doc["inputs"].__setitem__("input_ids", [["a"]]), "inputs are not int32 arrays"),
    (lambda doc: doc["inputs"].__setitem__("input_mask", [[2**40]]), "inputs are not int32 arrays"),
    (lambda doc: doc["inputs"].__setitem__("input_ids", [[1, 2], [3]]), "inputs are not int32 arrays"),
])
def test_malformed_golden_files(tmp_path, capsys, edit, match):
    doc = json.loads((Path(__file__).parent / "goldens" / "demo.json").read_text())
    edit(doc)
    (tmp_path / "g.json").write_text(json.dumps(doc))
    assert match in fails(capsys, "golden", "--check", tmp_path / "g.json", "--backend", "reference")


def test_golden_nested_too_deep(tmp_path, capsys):
    (tmp_path / "g.json").write_text("[" * 100_000 + "]" * 100_000)
    assert "cannot read golden file" in fails(capsys, "golden", "--check", tmp_path / "g.json")
