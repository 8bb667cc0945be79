"""`albert-ref embed`: every input and output format gives the API's vectors in input
order; truncation is reported; bad inputs fail clearly, leaving nothing behind."""
import fcntl
import json
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

import albert_ref
from albert_ref.cli import main
from albert_ref.embed_inputs import Inputs
from albert_ref.embed_job import Settings, job_description
from albert_ref.weights import DEMO_MODEL

TEXTS = ["hello world", "The quick brown fox jumps over the lazy dog.", "Zoë's café!", "a b c", "Short one."]


def embed(capsys, *args):
    """Run `albert-ref embed` in process: (exit code, stdout, stderr)."""
    code = main(["embed", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def test_stdout_json_with_the_demo_model(capsys, encoder):
    code, out, err = embed(capsys, *TEXTS)
    assert code == 0 and "bundled demo model" in err
    vectors = np.array(json.loads(out), np.float32)
    assert vectors.shape == (len(TEXTS), 128)
    assert vectors.tobytes() == encoder.encode(TEXTS).tobytes()  # the JSON digits lose no bit


def test_model_as_first_argument_or_option(capsys, encoder):
    want = encoder.encode(["hello"], pooling="mean").tobytes()
    for args in ([DEMO_MODEL, "hello"], ["--model", DEMO_MODEL, "hello"]):
        code, out, err = embed(capsys, "--pooling", "mean", *args)
        assert code == 0 and "demo model" not in err
        assert np.array(json.loads(out), np.float32).tobytes() == want


def write(path, content):
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def table(sep):
    return f"n{sep}body\n" + "".join(f'{i}{sep}"{t}"\n' + ("\n" if i == 1 else "") for i, t in enumerate(TEXTS))


# The same texts as each input format writes them, with a blank line or row after the second.
RECORDS = {
    "txt": ("\n".join(TEXTS[:2]) + "\n\n" + "\n".join(TEXTS[2:]) + "\n", []),
    "jsonl": ("".join(json.dumps({"n": i, "body": t}) + "\n" + "\n" * (i == 1) for i, t in enumerate(TEXTS)),
              ["--field", "body"]),
    "csv": (table(","), ["--field", "body"]),
    "tsv": (table("\t"), ["--field", "body"]),
}


@pytest.mark.parametrize("fmt", RECORDS)
def test_input_formats(capsys, tmp_path, encoder, fmt):
    content, options = RECORDS[fmt]
    path = write(tmp_path / f"in.{fmt}", content)
    code, out, err = embed(capsys, "--input", path, *options, "--output", tmp_path / "out.h5")
    assert code == 0, err
    assert "skipped 1 blank line" in err
    with h5py.File(tmp_path / "out.h5") as f:
        assert f["vectors"][:].tobytes() == encoder.encode(TEXTS).tobytes()
        assert f["ids"][:].tolist() == [0, 1, 3, 4, 5]  # the blank line keeps its number
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, "out.h5"])  # no partial folder left


@pytest.mark.parametrize("suffix", [".npy", ".h5", ".jsonl"])
def test_output_formats(capsys, tmp_path, encoder, suffix):
    out_path = tmp_path / f"out{suffix}"
    code, out, err = embed(capsys, "--pooling", "max", "--normalize", "-o", out_path, *TEXTS)
    assert code == 0, err
    assert out == f"wrote {out_path}: 5 vectors of 128 float32, max pooling, L2-normalized\n"
    want = encoder.encode(TEXTS, pooling="max", normalize=True)
    if suffix == ".npy":
        got, ids = np.load(out_path), None      # vectors only: row i is text i
    elif suffix == ".h5":
        with h5py.File(out_path) as f:
            got, ids = f["vectors"][:], f["ids"][:].tolist()
            assert f.attrs["pooling"] == "max" and f.attrs["normalize"] and f["truncated"][:].tolist() == [0] * 5
    else:
        rows = [json.loads(line) for line in out_path.read_text().splitlines()]
        got, ids = np.array([r["vector"] for r in rows], np.float32), [r["id"] for r in rows]
    assert got.dtype == np.float32 and got.tobytes() == want.tobytes()
    assert ids is None or list(ids) == [0, 1, 2, 3, 4]


# Each row's own id (--id-field), strings and integers, with a blank line after the second row.
KEYS = ["doc-a", 17, "Zoë", "0", -3]
KEYED = {
    "jsonl": "".join(json.dumps({"key": k, "body": t}) + "\n" + "\n" * (i == 1)
                     for i, (k, t) in enumerate(zip(KEYS, TEXTS))),
    "csv": "key,body\n" + "".join(f'{k},"{t}"\n' + "\n" * (i == 1) for i, (k, t) in enumerate(zip(KEYS, TEXTS))),
}


@pytest.mark.parametrize("fmt", KEYED)
def test_id_field_is_kept_beside_each_vector(capsys, tmp_path, encoder, fmt):
    path = write(tmp_path / f"in.{fmt}", KEYED[fmt])
    want = encoder.encode(TEXTS).tobytes()
    as_read = KEYS if fmt == "jsonl" else [str(k) for k in KEYS]   # a table's cells are text
    for suffix in (".jsonl", ".h5"):
        out_path = tmp_path / f"out{suffix}"
        code, _, err = embed(capsys, "-i", path, "--field", "body", "--id-field", "key", "-o", out_path, "--chunk-size", 2)
        assert code == 0, err
        if suffix == ".jsonl":
            rows = [json.loads(line) for line in out_path.read_text(encoding="utf-8").splitlines()]
            assert [r["id"] for r in rows] == as_read
            assert [r["row"] for r in rows] == [0, 1, 3, 4, 5]
            got = np.array([r["vector"] for r in rows], np.float32)
        else:
            with h5py.File(out_path) as f:
                assert [k.decode() for k in f["keys"][:]] == [str(k) for k in KEYS]
                assert f["ids"][:].tolist() == [0, 1, 3, 4, 5]
                got = f["vectors"][:]
        assert got.tobytes() == want


def test_output_job_with_a_pooling_of_another_width(capsys, tmp_path, encoder):
    """An --output job whose pooling is wider than the default (two modes concatenated):
    its chunks are checked against that width, not the default pooling's."""
    out_path = tmp_path / "out.h5"
    code, out, err = embed(capsys, "--pooling", "mean,cls", "-o", out_path, *TEXTS)
    assert code == 0, err
    with h5py.File(out_path) as f:
        got = f["vectors"][:]
    assert got.shape == (5, 256) and got.tobytes() == encoder.encode(TEXTS, pooling="mean,cls").tobytes()


def test_id_field_is_part_of_the_job():
    # a resumed job must not mix chunks embedded under different ids
    encoder = albert_ref.Encoder(DEMO_MODEL)
    settings = Settings("pooled", False, 32, 64, 1024)
    ids = np.arange(2)
    describe = [job_description(encoder, Inputs(["a", "b"], ids, "x", 0, keys), settings, Path("o.h5"))
                for keys in (None, ["1", "2"], ["1", "3"], [1, 2])]
    assert len({json.dumps(d, sort_keys=True) for d in describe}) == 4


def test_pairs_from_arguments_lines_and_fields(capsys, tmp_path, encoder):
    pairs = [("Who wrote it?", "Tolstoy did."), ("Is it long?", "Very.")]
    want = encoder.encode(pairs, pooling="cls").tobytes()
    write(tmp_path / "p.txt", "".join(f"{a}\t{b}\n" for a, b in pairs))
    write(tmp_path / "p.jsonl", "".join(json.dumps({"q": a, "a": b}) + "\n" for a, b in pairs))
    for args in (["--pair", *[t for p in pairs for t in p]], ["--pair", "--input", tmp_path / "p.txt"],
                 ["--input", tmp_path / "p.jsonl", "--field", "q", "--field", "a"]):
        code, out, err = embed(capsys, "--pooling", "cls", *args)
        assert code == 0, err
        assert np.array(json.loads(out), np.float32).tobytes() == want


def test_truncation_is_reported(capsys, tmp_path):
    code, out, err = embed(capsys, "--max-seq-length", "5", "-o", tmp_path / "o.h5", "one two three four five", "hi")
    assert code == 0
    assert "1 of 2 texts were longer than max_seq_length 5 tokens and were truncated" in err
    with h5py.File(tmp_path / "o.h5") as f:
        assert f["truncated"][0] > 0 and f["truncated"][1] == 0


def test_stdin_lines():
    r = subprocess.run([sys.executable, "-m", "albert_ref.cli", "embed", "--pooling", "mean"],
                       input="hello world\n\nsecond line\n".encode(), capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr
    vectors = np.array(json.loads(r.stdout), np.float32)
    assert vectors.tobytes() == albert_ref.Encoder(DEMO_MODEL).encode(["hello world", "second line"],
                                                                      pooling="mean").tobytes()


BAD_INPUTS = {
    "missing file": (lambda d: ["--input", d / "nope.txt"], "cannot read .*nope.txt: No such file"),
    "directory": (lambda d: ["--input", d], "cannot read .*: Is a directory"),
    "undecodable": (lambda d: ["--input", write(d / "x.txt", b"fine\nbad \xff byte\n")],
                    r"x.txt:2: not valid UTF-8 \(byte 0xff at column 5\)"),
    "empty file": (lambda d: ["--input", write(d / "e.txt", "")], "e.txt: no texts to embed"),
    "blank lines only": (lambda d: ["--input", write(d / "b.txt", "\n  \n")], r"no texts to embed \(only 2 blank"),
    "missing field": (lambda d: ["--input", write(d / "m.jsonl", '{"text": "a"}\n{"body": "b"}\n')],
                      r"m.jsonl:2: no field 'text' \(it has: 'body'\)"),
    "field not a string": (lambda d: ["--input", write(d / "n.jsonl", '{"text": 3}\n')], "field 'text' is 3"),
    "bad json": (lambda d: ["--input", write(d / "j.jsonl", '{"text": "a"}\n{oops\n')], "j.jsonl:2: not valid JSON"),
    "missing column": (lambda d: ["--input", write(d / "c.csv", "a,b\n1,2\n"), "--field", "text"],
                       r"c.csv: no column 'text' in the header \(columns: 'a', 'b'\)"),
    "ragged row": (lambda d: ["--input", write(d / "r.tsv", "text\tn\nx\t1\ny\n")], "r.tsv:3: 1 fields"),
    "unknown input": (lambda d: ["--input", write(d / "in.doc", "x")], "unknown input format"),
    "unknown output": (lambda d: ["hello", "-o", d / "out.csv"], "unknown output format .csv"),
    "odd pairs": (lambda d: ["--pair", "a", "b", "c"], "even number"),
    "no model": (lambda d: ["--model", d / "none.h5", "x"], "no such model file"),
    "id field missing": (lambda d: ["-i", write(d / "k.jsonl", '{"text": "a", "id": 1}\n{"text": "b"}\n'), "--id-field",
                                    "id"], r"k.jsonl:2: no field 'id' \(it has: 'text'\); choose one with --id-field"),
    "id not a scalar": (lambda d: ["-i", write(d / "k.jsonl", '{"text": "a", "id": null}\n'), "--id-field", "id"],
                        "k.jsonl:1: field 'id' is null, not a string or an integer"),
    "id column missing": (lambda d: ["-i", write(d / "k.csv", "text\nx\n"), "--id-field", "id", "-o", d.parent / "o.h5"],
                          r"k.csv: no column 'id' in the header \(columns: 'text'\); choose one with --id-field"),
    "id field of lines": (lambda d: ["-i", write(d / "k.txt", "x\n"), "--id-field", "id"],
                          "--id-field applies to .jsonl, .csv and .tsv inputs"),
    "id field of arguments": (lambda d: ["--id-field", "id", "x"], "--id-field and --input-format apply to --input"),
    "ids into .npy": (lambda d: ["-i", write(d / "k.jsonl", '{"text": "a", "id": 1}\n'), "--id-field", "id"],
                      r"--id-field needs --output FILE.h5 or FILE.jsonl: a .npy file holds vectors only"),
    "too long": (lambda d: ["--max-seq-length", "600", "x"], "exceeds the model's max_position_embeddings"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_inputs_fail_clearly_and_write_nothing(capsys, tmp_path, case):
    args, match = BAD_INPUTS[case]
    (tmp_path / "in").mkdir()
    argv = args(tmp_path / "in")
    before = sorted(p.name for p in (tmp_path / "in").iterdir())
    code, out, err = embed(capsys, *argv, *([] if "-o" in argv else ["-o", tmp_path / "out.npy"]))
    assert code == 2 and out == ""
    error = err.splitlines()[-1]
    assert error.startswith("albert-ref: error: ") and re.search(match, error), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]
    assert sorted(p.name for p in (tmp_path / "in").iterdir()) == before


def test_a_different_unfinished_job_is_kept_until_restart(capsys, tmp_path):
    out_path = tmp_path / "o.npy"
    partial = tmp_path / "o.npy.partial"
    partial.mkdir()
    (partial / "manifest.json").write_text(json.dumps({"job": {"pooling": "cls"}}))
    code, _, err = embed(capsys, "-o", out_path, "hello")
    assert code == 2 and "holds an unfinished job for a different command" in err and "--restart" in err
    assert not out_path.exists() and (partial / "manifest.json").exists()
    code, _, err = embed(capsys, "-o", out_path, "--restart", "hello")
    assert code == 0 and out_path.exists() and not partial.exists()


def test_a_running_job_is_not_joined(capsys, tmp_path):
    partial = tmp_path / "o.npy.partial"
    partial.mkdir()
    with open(partial / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        code, _, err = embed(capsys, "-o", tmp_path / "o.npy", "hello")
    assert code == 2 and "in use by another albert-ref embed" in err
