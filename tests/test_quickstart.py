"""The README's quick start, as a new user runs it: a fresh virtual environment (no
system site-packages), a plain (not editable) `pip install .` of a copy of the source
tree, and `albert-ref embed "hello world"` printing one vector of the demo model's size."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from albert_ref.weights import DEMO_MODEL
from albert_ref.weights.model_file import read_model

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow  # a venv and a full install: a minute or two


def quick_start_commands() -> str:
    """The first ```sh block of the README."""
    block = re.search(r"```sh\n(.*?)```", (REPO / "README.md").read_text(encoding="utf-8"), re.DOTALL)
    assert block, "README.md has no ```sh block"
    return block.group(1).strip()


def test_readme_quick_start_in_a_fresh_venv(tmp_path):
    commands = quick_start_commands()
    assert 'albert-ref embed "hello world"' in commands
    source = tmp_path / "albert-ref"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", "build", "dist", "*.egg-info", "__pycache__", ".hypothesis", ".pytest_cache", ".benchmarks",
        "*.partial", ".venv"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True, timeout=120)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "NUMBA_CACHE"))}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env['PATH']}", VIRTUAL_ENV=str(venv))
    run = subprocess.run(["bash", "-c", commands], cwd=source, env=env, capture_output=True, text=True,
                         timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "bundled demo model" in run.stderr

    vectors = json.loads(run.stdout.strip().splitlines()[-1])
    hidden = read_model(DEMO_MODEL, verify=False).config.hidden_size
    assert len(vectors) == 1 and len(vectors[0]) == hidden
    assert all(isinstance(x, float) for x in vectors[0])

    where = subprocess.run([venv / "bin" / "python", "-c", "import albert_ref; print(albert_ref.__file__)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, check=True).stdout
    assert Path(where.strip()).is_relative_to(venv), where  # the installed copy ran, not the source tree
