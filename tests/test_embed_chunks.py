"""Resuming an `embed --output` job uses a saved chunk only if it matches the digest
recorded beside it and holds exactly its rows; any other chunk is recomputed, the user is
told, and the output is bit for bit that of an uninterrupted run."""
import json
import shutil

import h5py
import numpy as np
import pytest

from albert_ref import embed_job
from albert_ref.cli import main

CHUNK = 3
TEXTS = [f"text number {i} about {'cats' if i % 2 else 'dogs'}" for i in range(11)]


def command(inp, out):
    return ["embed", "--input", str(inp), "--output", str(out), "--chunk-size", str(CHUNK), "--backend", "numpy",
            "--dtype", "float32"]


def read(path):
    with h5py.File(path) as f:
        return {k: f[k][()] for k in ("vectors", "ids", "truncated")}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reference")
    (folder / "in.txt").write_text("\n".join(TEXTS) + "\n")
    assert main(command(folder / "in.txt", folder / "out.h5")) == 0
    return read(folder / "out.h5")


def interrupted_job(tmp_path, monkeypatch, after_chunks=3):
    """An input and output whose job was stopped (Ctrl-C) after `after_chunks` chunks."""
    inp, out = tmp_path / "in.txt", tmp_path / "out.h5"
    inp.write_text("\n".join(TEXTS) + "\n")
    original, calls = embed_job.Encoder.encode_counted, []

    def stop_after(self, *args, **kwargs):
        if len(calls) == after_chunks:
            raise KeyboardInterrupt
        calls.append(1)
        return original(self, *args, **kwargs)
    with monkeypatch.context() as m:
        m.setattr(embed_job.Encoder, "encode_counted", stop_after)
        assert main(command(inp, out)) == 130
    return inp, out, out.with_name("out.h5.partial")


def _chunk(folder, k):
    return folder / f"chunk-{k:06d}.npz"


def _resave(path, **changes):
    with np.load(path) as part:
        arrays = {**{k: part[k] for k in part.files}, **changes}
    path.unlink()
    np.savez(path, **arrays)


def _record(folder, k):
    """Forge the record: the chunk's present bytes as its digest."""
    import hashlib
    _chunk(folder, k).with_suffix(".sha256").write_text(hashlib.sha256(_chunk(folder, k).read_bytes()).hexdigest())


def _vectors(path):
    with np.load(path) as part:
        return part["vectors"]


DAMAGE = {
    "truncated": (lambda d: _chunk(d, 1).write_bytes(_chunk(d, 1).read_bytes()[:-40]), "SHA-256 differs"),
    "emptied": (lambda d: _chunk(d, 1).write_bytes(b""), "SHA-256 differs"),
    "flipped byte": (lambda d: _chunk(d, 1).write_bytes(bytes(b ^ (i == 200) for i, b in
                                                              enumerate(_chunk(d, 1).read_bytes()))), "SHA-256 differs"),
    "64 wide": (lambda d: _resave(_chunk(d, 1), vectors=np.zeros((CHUNK, 64), np.float32)), "SHA-256 differs"),
    "copy of another": (lambda d: shutil.copy(_chunk(d, 0), _chunk(d, 1)), "SHA-256 differs"),
    "vectors x 2": (lambda d: _resave(_chunk(d, 1), vectors=2 * _vectors(_chunk(d, 1))), "SHA-256 differs"),
    "NaN": (lambda d: _resave(_chunk(d, 1), vectors=np.full_like(_vectors(_chunk(d, 1)), np.nan)), "SHA-256 differs"),
    "directory": (lambda d: (_chunk(d, 1).unlink(), _chunk(d, 1).mkdir(), (_chunk(d, 1) / "x").write_text("x")),
                  "not a regular file"),
    # with the manifest forged to match, the contents are still checked
    "recorded copy": (lambda d: (shutil.copy(_chunk(d, 0), _chunk(d, 1)), _record(d, 1)), "row ids are not this"),
    "recorded 64 wide": (lambda d: (_resave(_chunk(d, 1), vectors=np.zeros((CHUNK, 64), np.float32)), _record(d, 1)),
                         "vectors are float32 \\(3, 64\\)"),
    "recorded NaN": (lambda d: (_resave(_chunk(d, 1), vectors=np.full_like(_vectors(_chunk(d, 1)), np.nan)),
                                _record(d, 1)), "not all finite"),
    "recorded garbage": (lambda d: (_chunk(d, 1).write_bytes(b"PK\x03\x04garbage"), _record(d, 1)),
                         "not a readable .npz"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_chunk_is_recomputed_and_reported(tmp_path, monkeypatch, capsys, reference, damage):
    import re
    inp, out, folder = interrupted_job(tmp_path, monkeypatch)
    capsys.readouterr()
    edit, reason = DAMAGE[damage]
    edit(folder)
    assert main(command(inp, out)) == 0
    err = capsys.readouterr().err
    assert re.search(f"chunk-000001.npz in .* cannot be used \\(.*{reason}.*\\): recomputing it", err), err
    assert "chunk-000000.npz" not in err and "chunk-000002.npz" not in err
    assert "resuming" in err and "6 of 11 texts already embedded" in err
    result = read(out)
    for key, array in reference.items():
        assert result[key].dtype == array.dtype and result[key].tobytes() == array.tobytes(), key
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt", "out.h5"]


def test_an_unrecorded_chunk_is_not_trusted(tmp_path, monkeypatch, capsys, reference):
    inp, out, folder = interrupted_job(tmp_path, monkeypatch)
    _chunk(folder, 1).with_suffix(".sha256").unlink()
    capsys.readouterr()
    assert main(command(inp, out)) == 0
    err = capsys.readouterr().err
    assert "chunk-000001.npz in" in err and "no digest recorded for it" in err and "6 of 11 texts" in err
    assert read(out)["vectors"].tobytes() == reference["vectors"].tobytes()


def test_an_older_manifest_is_not_trusted(tmp_path, monkeypatch, capsys, reference):
    """Version 2 kept the chunk digests in the manifest; its chunks are all recomputed."""
    inp, out, folder = interrupted_job(tmp_path, monkeypatch)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["version"] = 2
    manifest["chunks"] = {}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    capsys.readouterr()
    assert main(command(inp, out)) == 0
    err = capsys.readouterr().err
    assert "written by an older albert-ref" in err and "resuming" not in err
    assert read(out)["vectors"].tobytes() == reference["vectors"].tobytes()