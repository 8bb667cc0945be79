"""Golden digests. tests/goldens/demo.json holds the bundled demo model's digests on three
tokenized rows (a sentence pair at full length, a row padded at the end, a row with a
hole in its mask); the contract promises them on every machine, so CI checks them here."""
import json
from pathlib import Path

import numpy as np
import pytest

import albert_ref
from albert_ref.cli import main
from albert_ref.testing import check_golden, reference
from albert_ref.testing.golden import GoldenError, digest
from albert_ref.weights import DEMO_MODEL
from albert_ref.weights.model_file import read_model
from albert_ref.weights.random_model import random_model_file

GOLDEN = Path(__file__).parent / "goldens" / "demo.json"


def golden_inputs():
    return [np.array(v, np.int32) for v in json.loads(GOLDEN.read_text())["inputs"].values()]


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_committed_demo_golden_reproduces(backend):
    report = check_golden(GOLDEN, backend=backend)
    assert report.ok, str(report)
    assert report.matched[:2] == ["hidden_states[0]", "hidden_states[1]"] and len(report.matched) == 7


def test_cli_regenerates_the_committed_golden(tmp_path, capsys):
    np.savez(tmp_path / "in.npz", **dict(zip(("input_ids", "input_mask", "segment_ids"), golden_inputs())))
    assert main(["golden", str(DEMO_MODEL), "--inputs", str(tmp_path / "in.npz")]) == 0
    assert capsys.readouterr().out == GOLDEN.read_text()


def test_cli_check_fails_naming_the_first_mismatch(tmp_path, capsys):
    assert main(["golden", "--check", str(GOLDEN)]) == 0
    assert "OK: 7 digests match" in capsys.readouterr().out
    doc = json.loads(GOLDEN.read_text())
    for name in ("hidden_states[2]", "pooled_output"):
        doc["outputs"][name]["sha256"] = "0" * 64
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    assert main(["golden", "--check", str(tmp_path / "bad.json"), str(DEMO_MODEL)]) == 1
    err = capsys.readouterr().err
    assert "FAIL: 2 of 7 digests differ, the first in computation order being hidden_states[2]" in err


def test_golden_refuses_another_model_or_contract():
    other = random_model_file(read_model(DEMO_MODEL).config, seed=1)
    with pytest.raises(GoldenError, match="made for model c59a5e93"):
        check_golden(GOLDEN, other)
    doc = json.loads(GOLDEN.read_text())
    doc["contract_version"] = 2
    with pytest.raises(GoldenError, match="contract version 2"):
        check_golden(doc)


def test_checking_your_own_outputs():
    ids, mask, segs = golden_inputs()
    contract = reference(DEMO_MODEL, ids, mask, segs)
    report = check_golden(GOLDEN, outputs=contract)
    assert report.ok and report.unchecked == [f"hidden_states[{i}]" for i in range(5)]
    blas = albert_ref.load(DEMO_MODEL, backend="numpy", dtype="float32")(ids, mask, segs)
    report = check_golden(GOLDEN, outputs=blas)  # close, but not the contract's bits
    assert not report and "first in computation order being sequence_output" in str(report)
    with pytest.raises(GoldenError, match="float64"):
        check_golden(GOLDEN, outputs={"pooled_output": contract["pooled_output"].astype(np.float64)})


def test_canonical_form_zeroes_padded_positions():
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    mask = np.array([[1, 1, 1], [1, 1, 0]])
    y = x.copy()
    y[1, 2] = np.nan
    assert digest(x, mask) == digest(y, mask) != digest(x)
    y[0, 0, 0] = -y[0, 0, 0]
    assert digest(x, mask) != digest(y, mask)


def test_golden_file_is_written_whole_or_not_at_all(tmp_path):
    out = tmp_path / "g.json"
    assert main(["golden", str(DEMO_MODEL), "--inputs", str(tmp_path / "missing.npz"), "-o", str(out)]) == 2
    np.savez(tmp_path / "bad.npz", input_ids=np.full((1, 4), 10 ** 6))
    assert main(["golden", str(DEMO_MODEL), "--inputs", str(tmp_path / "bad.npz"), "-o", str(out)]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.npz"]


def test_golden_failing_mid_write_leaves_nothing(tmp_path, monkeypatch):
    # the failure comes after the golden file has been opened and written to
    np.savez(tmp_path / "in.npz", input_ids=np.array([[2, 5, 7, 3]]))

    def disk_full(fd):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr("albert_ref.atomic.os.fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        main(["golden", str(DEMO_MODEL), "--inputs", str(tmp_path / "in.npz"), "-o", str(tmp_path / "g.json")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npz"]
