"""albert_ref.testing used from outside: the README section's example run as a script,
and a throwaway project (its own directory, pytest.ini and conftest, a model of its own)
whose tests get `albert_oracle` from the installed pytest11 entry point, pass when the
implementation is right and fail with the report when it is not."""
import os
import re
import subprocess
import sys
from pathlib import Path

from albert_ref.config import AlbertConfig
from albert_ref.weights import DEMO_MODEL
from albert_ref.weights.model_file import write_model
from albert_ref.weights.random_model import random_model_file

README = Path(__file__).resolve().parents[1] / "README.md"

CONFTEST = '''\
import albert_ref
import numpy as np
import pytest


@pytest.fixture
def port_forgetting_the_mask(albert_model_path):
    model = albert_ref.load(albert_model_path, backend="numpy", dtype="float32")
    return lambda ids, mask: model(ids, np.ones_like(mask))
'''

BROKEN_TEST = '''\
import numpy as np
from albert_ref.testing import assert_close


def test_port_forgetting_the_mask(albert_oracle, port_forgetting_the_mask):
    ids = np.array([[2, 48, 12, 97, 3], [2, 31, 3, 0, 0]])
    mask = (ids != 0).astype(np.int32)
    assert_close(port_forgetting_the_mask(ids, mask), albert_oracle(ids, mask, precision="float64"),
                 input_mask=mask)
'''


def readme_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text().split("## Use as a test oracle", 1)[1].split("\n## ", 1)[0], re.S)


def run(args, cwd):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_readme_example_runs_as_written(tmp_path):
    script = readme_blocks()[0]
    assert len(script.strip().splitlines()) == 10
    (tmp_path / "example.py").write_text(script)
    result = run(["example.py"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("albert-ref compare: OK: sequence_output, pooled_output within tolerance")


def test_throwaway_project_uses_the_plugin_from_its_entry_point(tmp_path):
    write_model(tmp_path / "model.h5", random_model_file(
        AlbertConfig(vocab_size=100, embedding_size=8, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=8), seed=7))
    (tmp_path / "pytest.ini").write_text("[pytest]\nalbert_model = model.h5\n")
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_port.py").write_text(readme_blocks()[1])  # the README's plugin example
    (tmp_path / "test_broken.py").write_text(BROKEN_TEST)
    pytest = ["-m", "pytest", "-p", "no:cacheprovider"]

    result = run(pytest, tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    assert f"albert-ref oracle: {tmp_path / 'model.h5'}" in out  # the ini setting, relative to the rootdir
    assert "1 failed, 1 passed" in out and "test_broken.py::test_port_forgetting_the_mask" in out
    assert "FAIL sequence_output" in out and "beyond tolerance by batch: [0, " in out

    result = run(pytest + ["test_port.py", "--albert-model", str(DEMO_MODEL)], tmp_path)
    assert result.returncode == 0 and f"albert-ref oracle: {DEMO_MODEL}" in result.stdout

    result = run(pytest + ["test_port.py", "-p", "no:albert_ref"], tmp_path)  # the entry point's name
    assert result.returncode == 1 and "fixture 'albert_oracle' not found" in result.stdout


def test_oracle_and_cli_need_neither_hypothesis_nor_pytest(tmp_path):
    """Only albert_ref.testing.strategies (and the plugin, which pytest loads) may import them."""
    code = ("import sys; sys.modules.update(hypothesis=None, pytest=None)\n"
            "import albert_ref.testing, albert_ref.cli\n"
            "sys.exit(albert_ref.cli.main(['golden', '--check', sys.argv[1]]))")
    result = run(["-c", code, str(Path(__file__).parent / "goldens" / "demo.json")], tmp_path)
    assert result.returncode == 0, result.stderr
