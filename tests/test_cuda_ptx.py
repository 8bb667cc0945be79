"""The bit-parity design of the CUDA kernels, checked on their PTX (no GPU needed).

Every CUDA kernel is compiled for sm_90 (numba.cuda.compile_ptx, CUDA 13 libNVVM from the
`cuda` extra's wheels) and its PTX is read:

* every float32 arithmetic instruction carries an explicit IEEE rounding: fma.rn.f32 where
  NUMERICS.md fuses, add.rn / sub.rn / mul.rn.f32 where it rounds separately, div.rn and
  sqrt.rn (rcp.rn for 1/x) for division and square root. An instruction without `.rn`
  (add.f32, mul.f32) is one that ptxas may contract into an FMA: there must be none;
* no `.approx`, no `.ftz` (subnormals kept), no fast-math forms, no float64 at all;
* the FMAs are exactly the written ones: each fmath function's fma.rn count equals the
  number of `fma(...)` calls on its path through kernels/fmath.py;
* the GEMM's accumulators stay in registers (no local memory), the only speed check here.

Skipped when numba-cuda is not installed, or under the simulator (which has no compiler).
"""
from __future__ import annotations

import importlib.util
import os
import re

import pytest

if importlib.util.find_spec("numba_cuda") is None:
    pytest.skip("numba-cuda is not installed (pip install 'albert-ref[cuda]')", allow_module_level=True)
if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"):
    pytest.skip("the CUDA simulator compiles no PTX", allow_module_level=True)

from albert_ref.kernels import cuda_attention, cuda_embed, cuda_fmath, cuda_gemm, cuda_layernorm  # noqa: E402

CC = (9, 0)
F32 = "float32[::1]"
I64 = "int64"
DENSE_SIG = f"void({F32}, {F32}, {F32}, {F32}, {I64}, {I64}, {I64})"
LN_SIG = f"void({F32}, {F32}, {F32}, {F32}, float32, {F32}, {I64}, {I64})"
ATT_SIG = f"void({F32}, {F32}, {F32}, int32[::1], int32[::1], float32, {F32}, {I64}, {I64}, {I64}, {I64})"
EMB_SIG = f"void(int32[::1], int32[::1], {F32}, {F32}, {F32}, {F32}, {I64}, {I64})"

ACT_NAMES = {0: "linear", 1: "gelu_tanh", 2: "gelu_erf", 3: "relu", 4: "tanh"}
KERNELS = {
    **{f"dense_{ACT_NAMES[a]}": (lambda a=a: cuda_gemm.make_dense_kernel(a), DENSE_SIG) for a in ACT_NAMES},
    "dense_linear_tile_8x16x16": (lambda: cuda_gemm.make_dense_kernel(0, (8, 16, 16)), DENSE_SIG),
    "layer_norm_residual": (lambda: cuda_layernorm.make_layer_norm_kernel(True), LN_SIG),
    "layer_norm": (lambda: cuda_layernorm.make_layer_norm_kernel(False), LN_SIG),
    "attention": (lambda: cuda_attention.make_attention_kernel(), ATT_SIG),
    "embed": (cuda_embed.make_embed_kernel, EMB_SIG),
    "copy_rows": (cuda_gemm.make_copy_rows_kernel, "void(float32[:, :], float32[:, ::1])"),
}

# the float32 instructions a kernel may contain: IEEE-rounded arithmetic, exact operations
# (neg, abs, min, max, compare, select, moves, loads, stores, conversions from integers)
ALLOWED_F32 = re.compile(
    r"^(fma\.rn|add\.rn|sub\.rn|mul\.rn|div\.rn|sqrt\.rn|rcp\.rn|neg|abs|min|max|mov|selp|setp\.[a-z]+|"
    r"ld(\.[a-z.0-9]+)?|st(\.[a-z.0-9]+)?|cvt\.rn\.f32\.[su](32|64))\.f32$")
INSTRUCTION = re.compile(r"^\s*(?:@!?%p\d+\s+)?([a-z][a-z0-9]*(?:\.[a-z0-9]+)*)\s", re.M)

_PTX = {}


def ptx_of(name):
    if name not in _PTX:
        make, sig = KERNELS[name]
        _PTX[name] = cuda_fmath.compile_ptx(make(), sig, cc=CC)
    return _PTX[name]


def opcodes(ptx):
    counts = {}
    for m in INSTRUCTION.finditer(ptx):
        counts[m.group(1)] = counts.get(m.group(1), 0) + 1
    return counts


def assert_ieee_only(ptx, what):
    ops = opcodes(ptx)
    bad = sorted(op for op in ops if op.endswith(".f32") and not ALLOWED_F32.match(op))
    assert not bad, f"{what}: float32 instructions outside the contract: {bad}"
    for word in (".approx", ".ftz", ".sat", "mad.", "ex2", "lg2", "rsqrt", "tanh.", "sin.", "cos."):
        assert word not in ptx, f"{what}: PTX contains {word!r}"
    assert not re.search(r"\.f64\b", ptx), f"{what}: float64 arithmetic or conversion in a float32 kernel"
    return ops


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_kernel_ptx_is_ieee_and_unfused(name):
    ops = assert_ieee_only(ptx_of(name), name)
    if name.startswith("dense"):
        assert ops.get("fma.rn.f32", 0) >= 64, "the 8x8 FMA chains"
        assert ops.get("add.rn.f32", 0) >= 1, "block sums and bias: add.rn"
        assert not any(op.startswith(("ld.local", "st.local")) for op in ops), "accumulators spilled to local memory"
        assert "ld.shared.v4.f32" in ops, "the 16-byte shared-memory operand loads"
    if name.startswith("layer_norm"):
        for op in ("fma.rn.f32", "add.rn.f32", "sub.rn.f32", "mul.rn.f32", "div.rn.f32", "sqrt.rn.f32"):
            assert op in ops, f"{name}: no {op}"
    if name == "attention":
        for op in ("fma.rn.f32", "add.rn.f32", "sub.rn.f32", "mul.rn.f32", "div.rn.f32"):
            assert op in ops, f"attention: no {op}"
    if name == "embed":
        assert ops.get("add.rn.f32") == 2 and "fma.rn.f32" not in ops


# fma(...) calls on each function's path through kernels/fmath.py (callees included):
# exp32 9 (1 round + 2 Cody-Waite + 4 Horner + 2); tanh32 6 + exp32; _erf_small 6;
# _erfc_tail 9 Horner + 1 + exp32 + 1 = 20; erf32/erfc32 1 + 20 + 6; gelu_tanh32 1 + exp32;
# gelu_erf32 1 + 20 + 6; relu32 0.
FMA_COUNTS = {"exp32": 9, "tanh32": 15, "erf32": 27, "erfc32": 27, "gelu_tanh32": 10, "gelu_erf32": 27, "relu32": 0}


def _map_kernel(fn):
    from numba import cuda

    def kernel(x, out):
        i = cuda.grid(1)
        if i < x.shape[0]:
            out[i] = fn(x[i])
    return kernel


@pytest.mark.parametrize("name", sorted(FMA_COUNTS))
def test_fmath_device_ptx(name):
    """fmath.py compiled for the device: one fma.rn.f32 per written fma, nothing else fused."""
    ptx = cuda_fmath.compile_ptx(_map_kernel(getattr(cuda_fmath, name)), f"void({F32}, {F32})", cc=CC)
    ops = assert_ieee_only(ptx, name)
    assert ops.get("fma.rn.f32", 0) == FMA_COUNTS[name], (name, ops)


def test_fma_counts_match_fmath_source():
    """FMA_COUNTS above is what fmath.py's source says (so an edit there updates this test's
    expectation or fails it, never silently)."""
    import ast
    import inspect

    from albert_ref.kernels import fmath
    tree = ast.parse(inspect.getsource(fmath))
    funcs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}

    def count(name, seen=()):
        total = 0
        for node in ast.walk(funcs[name]):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                if node.func.id == "fma":
                    total += 1
                elif node.func.id in funcs and node.func.id not in seen:
                    total += count(node.func.id, seen + (name,))
        return total

    assert {name: count(name) for name in FMA_COUNTS} == FMA_COUNTS


def test_device_fmath_is_fmath_source():
    """The device functions are fmath.py's own functions with + - * / made explicit."""
    src = cuda_fmath.FMATH_DEVICE_SOURCE
    assert "def exp32(x):" in src and "def gelu_erf32(x):" in src
    assert "y = mul32(mul32(p, s1), s2)" in src          # exp32's scaling, two roundings
    assert "big = sub32(ONE, div32(TWO, add32(e, ONE)))" in src
    body = "\n".join(line for line in src.splitlines() if not line.lstrip().startswith(('"""', "#")))
    assert not re.search(r"[^\s(,]\s[+*/]\s|\s-\s(?![0-9])", body), "an un-rewritten float operator"


def test_cuda_kernels_use_no_fastmath_and_no_libm():
    """No CUDA kernel source turns on fastmath or calls CUDA's libm exp/tanh/erf (whose bits
    are not the contract's); the PTX tests above check the instructions themselves."""
    from pathlib import Path
    here = Path(cuda_gemm.__file__).parent
    for path in sorted(here.glob("cuda_*.py")):
        text = path.read_text()
        assert "fastmath=True" not in text, path.name
        assert "math.exp" not in text and "math.tanh" not in text and "math.erf" not in text, path.name
