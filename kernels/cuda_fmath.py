"""The float32 primitives of the CUDA kernels, and kernels/fmath.py compiled for the device.

Bit parity with the CPU is a property of the generated code, so it is designed here, not
hoped for: NVVM contracts a plain `a*b + c` into an FMA even without fast-math, so no
CUDA kernel in kernels/ writes float arithmetic with Python operators. Every float32
operation is one of these calls, each a single IEEE operation whose PTX is fixed:

    fma32(a, b, c)  -> fma.rn.f32   (__nv_fmaf_rn: ONE rounding; NUMERICS.md's `fma`)
    add32(a, b)     -> add.rn.f32   (libdevice __nv_fadd_rn: never contracted)
    sub32(a, b)     -> sub.rn.f32   (__nv_fsub_rn)
    mul32(a, b)     -> mul.rn.f32   (__nv_fmul_rn: never contracted)
    div32(a, b)     -> div.rn.f32   (__nv_fdiv_rn: IEEE division)
    sqrt32(a)       -> sqrt.rn.f32  (__nv_fsqrt_rn: IEEE square root)

PTX does not fuse instructions that carry an explicit rounding modifier, and NVVM emits
them for these intrinsics alone, so the only FMAs in a kernel are the written ones
(tests/test_cuda_ptx.py reads the PTX of every kernel to check it). No kernel uses
fast-math, so there is no `.ftz` (subnormals are kept) and no `.approx`.

The transcendentals are NOT re-implemented. `exp32`, `tanh32`, `erf32`, `erfc32`,
`gelu_tanh32`, `gelu_erf32` and `relu32` below are compiled from the source text of
kernels/fmath.py itself: its functions are parsed, each float `+ - * /` of their bodies
is rewritten into `add32 / sub32 / mul32 / div32` (a mechanical AST rewrite, nothing else
changes), and the result is compiled with `cuda.jit(device=True)` against fmath's own
constants, with `fma`, `as_int32`, `as_float32` bound to the device primitives. An edit
to fmath.py is an edit to the device code too.

Simulator (NUMBA_ENABLE_CUDASIM=1, read when numba.cuda is first imported): kernels run
as Python, where `cuda.fma` rounds twice and libdevice does not exist. The same names
are then bound to exact Python float32 arithmetic (NumPy float32 scalars round every
+ - * / once; fmath's `fma_exact` is a correctly rounded fused multiply-add), so that the simulator
checks the kernels' logic bit for bit against the reference kernels. Each also refuses a
float64 operand, the simulator's twin of the device typing error below.
"""
from __future__ import annotations

import ast
import contextlib
import inspect
import types

import numpy as np
from numba import cuda

from . import fmath as _fm


def _simulator_enabled() -> bool:
    try:
        from numba.cuda.core import config
    except ImportError:  # older numba-cuda: the setting lives in numba's config
        from numba.core import config
    return bool(config.ENABLE_CUDASIM)


SIM = _simulator_enabled()
SIMULATOR_LOCKED = False  # lock_simulated_shared_arrays() installed (simulator only)


# --- the primitives -------------------------------------------------------------------------

if SIM:
    def _check(r, op):
        # np.float32 op np.float32 -> np.float32, rounded once (binary64 evaluation then
        # rounding to binary32 would give the same: 53 >= 2*24 + 2); a float64 result means
        # a Python float or float64 operand slipped in, which the device would reject too.
        if isinstance(r, (float, np.float64)):
            raise TypeError(f"{op}: float64 operand in a float32 kernel")
        return r

    def add32(a, b):
        return _check(a + b, "add32")

    def sub32(a, b):
        return _check(a - b, "sub32")

    def mul32(a, b):
        return _check(a * b, "mul32")

    def div32(a, b):
        return _check(a / b, "div32")

    def sqrt32(a):
        return _check(np.sqrt(a), "sqrt32")

    fma32 = _fm.fma_exact   # one rounding, like fma.rn.f32

    def lock_simulated_shared_arrays():
        """numba-cuda's simulator creates a block's shared array on first use with an
        unlocked check-then-set, so two threads of a block can each create one and then
        work on different "shared" arrays (seen as rare, wrong results). This installs the
        same logic, same key (the caller's file and line), under a lock. It patches
        numba-cuda for the whole process, so it is an explicit opt-in: the test suite and
        benchmarks/gpu_check.py call it; CudaOps under the simulator warns until it is."""
        global SIMULATOR_LOCKED
        if SIMULATOR_LOCKED:
            return
        SIMULATOR_LOCKED = True
        import sys
        import threading

        from numba.cuda.simulator import kernelapi
        original = kernelapi.FakeCUDAShared.array
        lock = threading.Lock()

        def array(self, shape, dtype, alignment=None):
            if alignment is not None:   # numba-cuda's simulator refuses it; numba's own has no such argument
                return original(self, shape, dtype, alignment)
            if shape == 0:
                return original(self, shape, dtype)
            if isinstance(dtype, kernelapi.types.Type):
                dtype = kernelapi.numpy_support.as_dtype(dtype)
            caller = sys._getframe(1)
            key = (caller.f_code.co_filename, caller.f_lineno)
            with lock:
                res = self._allocations.get(key)
                if res is None:
                    res = self._allocations[key] = np.empty(shape, dtype)
            return res

        kernelapi.FakeCUDAShared.array = array

    as_int32 = _fm.float32_bits
    as_float32 = _fm.float32_from_bits

    def device_function(fn):
        return fn

else:
    from numba.cuda import libdevice
    try:                                    # numba-cuda >= 0.2x carries its own types
        from numba.cuda import types as _t
        from numba.cuda.extending import overload
    except ImportError:                     # older numba-cuda: numba's
        from numba.core import types as _t
        from numba.core.extending import overload

    fma32 = libdevice.fmaf_rn
    mul32 = libdevice.fmul_rn
    div32 = libdevice.fdiv_rn
    sqrt32 = libdevice.fsqrt_rn
    as_int32 = libdevice.float_as_int
    as_float32 = libdevice.int_as_float

    # add32 / sub32 are also used for integers by the rewritten fmath code (exp32's
    # exponent arithmetic), so they are typed overloads: float32 -> the non-contractible
    # libdevice op, integers -> ordinary integer arithmetic, anything else (float64, mixed)
    # a typing error.
    def add32(a, b):
        return a + b

    def sub32(a, b):
        return a - b

    def _binop(name, float_impl, int_impl):
        def typer(a, b):
            if a == _t.float32 and b == _t.float32:
                return float_impl
            if isinstance(a, _t.Integer) and isinstance(b, _t.Integer):
                return int_impl
            raise TypeError(f"{name}: float32 or integer operands only, got {a} and {b}")
        return typer

    _inline = dict(forceinline=True)
    overload(add32, target="cuda", jit_options=_inline)(
        _binop("add32", lambda a, b: libdevice.fadd_rn(a, b), lambda a, b: a + b))
    overload(sub32, target="cuda", jit_options=_inline)(
        _binop("sub32", lambda a, b: libdevice.fsub_rn(a, b), lambda a, b: a - b))

    def device_function(fn):
        """A device function, inlined into every kernel that calls it."""
        return cuda.jit(device=True, forceinline=True)(fn)


def _shared_alignment():
    """16 (bytes) for shared arrays whose rows the kernels read as float4 vectors, where
    this numba-cuda takes an alignment; None under the simulator (which refuses one)."""
    if SIM:
        return None
    try:
        return 16 if "alignment" in inspect.signature(cuda.shared.array).parameters else None
    except (TypeError, ValueError):
        return None


SHARED_ALIGN = _shared_alignment()


# --- kernels/fmath.py, compiled for the device ------------------------------------------------

EXPORTED = ("exp32", "tanh32", "erf32", "erfc32", "gelu_tanh32", "gelu_erf32", "relu32")
_BINOPS = {ast.Add: "add32", ast.Sub: "sub32", ast.Mult: "mul32", ast.Div: "div32"}


class _Rewrite(ast.NodeTransformer):
    """a + b -> add32(a, b), a - b -> sub32, a * b -> mul32, a / b -> div32. Integer-only
    operators (shifts, //, %) stay. Unary minus is exact and stays."""

    def visit_BinOp(self, node):
        self.generic_visit(node)
        name = _BINOPS.get(type(node.op))
        if name is None:
            return node
        return ast.copy_location(ast.Call(ast.Name(name, ast.Load()), [node.left, node.right], []), node)

    def visit_AugAssign(self, node):
        target = ast.Name(node.target.id, ast.Load()) if isinstance(node.target, ast.Name) else node.target
        return self.visit(ast.copy_location(
            ast.Assign([node.target], ast.BinOp(target, node.op, node.value), lineno=node.lineno), node))


def _is_njit(decorator):
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    return isinstance(target, ast.Name) and target.id == "njit"


def _fmath_source_functions():
    """Every @njit function of kernels/fmath.py (the intrinsics fma / as_int32 / as_float32
    are bound to the device primitives instead), decorators stripped."""
    tree = ast.parse(inspect.getsource(_fm))
    found = [node for node in tree.body
             if isinstance(node, ast.FunctionDef) and any(_is_njit(d) for d in node.decorator_list)]
    for node in found:
        node.decorator_list = []
    missing = set(EXPORTED) - {node.name for node in found}
    if missing:
        raise ImportError(f"kernels/fmath.py no longer defines {', '.join(sorted(missing))}; "
                          f"update kernels/cuda_fmath.py EXPORTED")
    return found


def _compile_fmath():
    nodes = [_Rewrite().visit(node) for node in _fmath_source_functions()]
    names = [node.name for node in nodes]
    module = ast.fix_missing_locations(ast.Module(body=nodes, type_ignores=[]))
    ns = {k: v for k, v in vars(_fm).items() if not k.startswith("__")}
    ns.update(fma=fma32, as_int32=as_int32, as_float32=as_float32, add32=add32, sub32=sub32, mul32=mul32,
              div32=div32, __name__=__name__ + "._fmath_device")
    exec(compile(module, _fm.__file__, "exec"), ns)
    for name in names:
        ns[name] = device_function(ns[name])
    return {name: ns[name] for name in names}, ast.unparse(module)


_DEVICE_FMATH, FMATH_DEVICE_SOURCE = _compile_fmath()
exp32 = _DEVICE_FMATH["exp32"]
tanh32 = _DEVICE_FMATH["tanh32"]
erf32 = _DEVICE_FMATH["erf32"]
erfc32 = _DEVICE_FMATH["erfc32"]
gelu_tanh32 = _DEVICE_FMATH["gelu_tanh32"]
gelu_erf32 = _DEVICE_FMATH["gelu_erf32"]
relu32 = _DEVICE_FMATH["relu32"]

def make_activation(name):
    """The device function of an activation (kernels/gemm.py's names: None / "linear",
    "gelu_tanh", "gelu_erf", "relu", "tanh"). A compile-time choice: each dense kernel is
    specialised for its activation, so no kernel carries the code of the others."""
    if name in (None, "linear"):
        def identity(x):
            return x
        return device_function(identity)
    return {"gelu_tanh": gelu_tanh32, "gelu_erf": gelu_erf32, "relu": relu32, "tanh": tanh32}[name]


# --- PTX without a GPU ---------------------------------------------------------------------------

@contextlib.contextmanager
def _device_cc(cc):
    """Compile device functions for `cc` when there is no driver to ask.

    numba-cuda compiles a device function (and an @overload, which is one) for "the
    current device's" compute capability, which needs a driver even under compile_ptx.
    Without one, answer with the target's cc for the duration of the compilation."""
    from numba.cuda import dispatcher
    try:
        dispatcher.get_current_device()
        have_device = True
    except Exception:  # no driver / no device
        have_device = False
    if have_device:
        yield
        return
    real = dispatcher.get_current_device
    dispatcher.get_current_device = lambda: types.SimpleNamespace(compute_capability=tuple(cc))
    try:
        yield
    finally:
        dispatcher.get_current_device = real


def compile_ptx(pyfunc, sig, cc=(9, 0)):
    """PTX of a kernel (a plain Python function, as the kernel factories return them) for
    compute capability `cc`; works without a GPU. Not available under the simulator."""
    if SIM:
        raise RuntimeError("compile_ptx needs the real numba.cuda, not the simulator")
    with _device_cc(cc):
        ptx, _ = cuda.compile_ptx(pyfunc, sig, cc=tuple(cc))
    return ptx
