"""The README's Python example runs as written (on the demo model instead of the real one)."""
import re
from pathlib import Path

from albert_ref.weights import DEMO_MODEL

README = Path(__file__).resolve().parents[1] / "README.md"


def test_python_example_runs():
    section = README.read_text().split("\n## Python\n", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, re.S)
    code = code.replace('"albert_xlarge_2.h5"', repr(str(DEMO_MODEL)))
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)
    out = scope["out"]
    assert out["sequence_output"].shape[:2] == scope["batch"].input_ids.shape
    assert out["pooled_output"].shape == (2, 128)
