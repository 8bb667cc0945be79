"""Portable float32 math: explicit FMA, bit casts, exp, tanh, erf/erfc and the two GELUs.

Every function here is the contract's definition (NUMERICS.md, "Transcendentals"): built
from IEEE float32 +, -, *, /, sqrt, comparisons/selects, exact bit manipulation and
explicit fused multiply-adds (`fma`, which emits `llvm.fma.f32`; LLVM lowers it to the
FMA instruction, or to a correctly rounded libm `fmaf` where there is none; it never
becomes a separate multiply and add). No fast-math flag is used anywhere in kernels/, so
LLVM may not reassociate or contract anything; and nothing calls libm's exp/tanh/erf (or
SVML), whose bits vary between machines.

The functions are branch-free (selects only) so that loops calling them vectorise; they
are `inline="always"` so that the vectoriser sees through them.

Under NUMBA_DISABLE_JIT=1 (Numba's debugging mode: every @njit function runs as Python)
the three intrinsics, which exist only as LLVM code, are bound to their pure-Python
twins `fma_exact`, `float32_bits` and `float32_from_bits`, which give the same bits.

Coefficients: fitted offline (Lawson-weighted least squares in float64, rounded to
float32; the fitting script is not part of this repository). The float32 values written
here are normative as they stand (NUMERICS.md section 7 lists them); their maximum errors
are measured by benchmarks/ulp_sweep.py and recorded in NUMERICS.md.
"""
from __future__ import annotations

import math
import struct

import numpy as np
from llvmlite import ir
from numba import config, njit, types
from numba.core import cgutils
from numba.extending import intrinsic

f32 = np.float32
i32 = np.int32


# --- explicit FMA and exact bit casts -------------------------------------------------

@intrinsic
def fma(typingctx, a, b, c):
    """float32 fused multiply-add a*b+c, one rounding (llvm.fma.f32)."""
    if not (a == types.float32 and b == types.float32 and c == types.float32):
        return None
    sig = types.float32(types.float32, types.float32, types.float32)

    def codegen(context, builder, signature, args):
        fnty = ir.FunctionType(ir.FloatType(), [ir.FloatType()] * 3)
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.fma.f32")
        return builder.call(fn, args)

    return sig, codegen


@intrinsic
def as_int32(typingctx, x):
    """The bit pattern of a float32 as an int32."""
    if x != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.int32(types.float32), codegen


@intrinsic
def as_float32(typingctx, n):
    """The float32 whose bit pattern is the int32 n."""
    if n != types.int32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


# --- the same three in pure Python (NumPy float32 scalars), bit for bit ---------------------

_FLOAT64, _INT64 = struct.Struct("<d"), struct.Struct("<q")
_F32_ROUNDS_TO_INF = float.fromhex("0x1.ffffffp+127")   # FLT_MAX + half an ulp: the tie rounds to inf


def fma_exact(a, b, c):
    """float32 fma(a, b, c) of NumPy float32 scalars, one rounding, in float64 arithmetic.

    a*b is exact in float64 (48 significant bits). p + c rounded to float64 and then to
    float32 would round twice, and that differs: fma(2^-12 (1 + 2^-18), 2^-12 (1 - 2^-18),
    1 + 2^-23) is exactly 1 + 3*2^-24 - 2^-60, just under a float32 midpoint; float64 rounds
    it onto the midpoint and float32 then ties to 1 + 2^-22, not 1 + 2^-23. So p + c is
    rounded to odd instead (TwoSum gives its exact error; an inexact sum with an even last
    bit moves one float64 ulp towards the error), and a sum rounded to odd at 53 bits rounds
    to nearest at 24 correctly (53 >= 24 + 2; Boldo and Melquiond), float32 subnormals and
    overflow included. Scalar Python float arithmetic (the CUDA simulator calls it once per
    element); operands must be float32, as the intrinsic's typing demands."""
    if not type(a) is type(b) is type(c) is np.float32:
        raise TypeError(f"fma: float32 operands only, got {type(a).__name__}, {type(b).__name__}, "
                        f"{type(c).__name__}")
    p = float(a) * float(b)
    cf = float(c)
    s = p + cf
    if math.isfinite(s):
        t = s - p
        err = (p - (s - t)) + (cf - t)            # s + err == p + c exactly
        if err != 0.0 and not _INT64.unpack(_FLOAT64.pack(s))[0] & 1:
            s = math.nextafter(s, math.copysign(math.inf, err))
    if abs(s) >= _F32_ROUNDS_TO_INF:
        return np.float32(math.copysign(math.inf, s))      # overflow, without NumPy's cast warning
    return np.float32(s)


def float32_bits(x):
    """as_int32 in pure Python."""
    return np.float32(x).view(np.int32)


def float32_from_bits(n):
    """as_float32 in pure Python."""
    return np.int32(n).view(np.float32)


if config.DISABLE_JIT:
    fma, as_int32, as_float32 = fma_exact, float32_bits, float32_from_bits


_JIT = dict(cache=True, inline="always", error_model="numpy")

# --- exp ---------------------------------------------------------------------------------
# exp(x) = 2^n * p(r), n = round(x / ln2), r = x - n*ln2 (Cody-Waite, two FMAs),
# p(r) = 1 + r + r^2*q(r) evaluated by FMA Horner, 2^n applied exactly as two power-of-two
# factors (so that results in the subnormal range are rounded once).
EXP_LO = f32(-104.0)            # exp(-104) < 2^-150: result rounds to +0
EXP_HI = f32(89.0)              # exp(89) > FLT_MAX: result overflows to +inf
LOG2E = f32(float.fromhex("0x1.715476p+0"))
SHIFTER = f32(12582912.0)       # 1.5 * 2^23: adding it rounds to an integer (ties to even)
SHIFTER_BITS = i32(0x4B400000)
LN2_HI = f32(float.fromhex("0x1.62e400p-1"))   # 16 significant bits: n*LN2_HI is exact
LN2_LO = f32(float.fromhex("0x1.7f7d1cp-20"))
EXP_Q0 = f32(float.fromhex("0x1.fffffcp-2"))
EXP_Q1 = f32(float.fromhex("0x1.555490p-3"))
EXP_Q2 = f32(float.fromhex("0x1.5558f4p-5"))
EXP_Q3 = f32(float.fromhex("0x1.123a6cp-7"))
EXP_Q4 = f32(float.fromhex("0x1.6a234ep-10"))
ONE = f32(1.0)
TWO = f32(2.0)
HALF = f32(0.5)
ZERO = f32(0.0)
I127 = i32(127)
I23 = i32(23)
I1 = i32(1)


@njit(**_JIT)
def exp32(x):
    xc = x if x > EXP_LO else EXP_LO          # NaN -> EXP_LO here, restored at the end
    xc = xc if xc < EXP_HI else EXP_HI
    t = fma(xc, LOG2E, SHIFTER)
    nf = t - SHIFTER                          # exact: the integer n as a float
    r = fma(nf, -LN2_HI, xc)
    r = fma(nf, -LN2_LO, r)
    q = fma(fma(fma(fma(EXP_Q4, r, EXP_Q3), r, EXP_Q2), r, EXP_Q1), r, EXP_Q0)
    p = fma(fma(q, r, ONE), r, ONE)           # 1 + r*(1 + r*q)
    n = i32(as_int32(t) - SHIFTER_BITS)       # n in [-150, 128]
    h = i32(n >> I1)
    s1 = as_float32(i32((h + I127) << I23))
    s2 = as_float32(i32((n - h + I127) << I23))
    y = (p * s1) * s2
    return y if x == x else x


# --- tanh --------------------------------------------------------------------------------
# |x| < 0.75: x + x^3 * P(x^2) (odd minimax polynomial, FMA Horner).
# otherwise   : sign(x) * (1 - 2 / (exp(2|x|) + 1)); exp overflow gives exactly +-1.
TANH_SMALL = f32(0.75)
TANH_P0 = f32(float.fromhex("-0x1.55554ap-2"))
TANH_P1 = f32(float.fromhex("0x1.110db8p-3"))
TANH_P2 = f32(float.fromhex("-0x1.b97d3cp-5"))
TANH_P3 = f32(float.fromhex("0x1.5f7856p-6"))
TANH_P4 = f32(float.fromhex("-0x1.f5d34ap-8"))
TANH_P5 = f32(float.fromhex("0x1.c75368p-10"))


@njit(**_JIT)
def tanh32(x):
    a = abs(x)
    z = x * x
    p = fma(fma(fma(fma(fma(TANH_P5, z, TANH_P4), z, TANH_P3), z, TANH_P2), z, TANH_P1), z, TANH_P0)
    small = fma(p * z, x, x)                  # x + (P*z)*x
    e = exp32(a + a)
    big = ONE - TWO / (e + ONE)
    big = big if x >= ZERO else -big
    return small if a < TANH_SMALL else big


# --- erf / erfc ---------------------------------------------------------------------------
# |w| < 0.75: erf(w) = w + w*P(w^2)                      (FMA Horner, one final FMA)
# a = |w| >= 0.75: erfc(a) = exp(-a^2) * (1 + R(q)) / (1 + 2a), q = (a - 2) / (a + 2),
#   a clamped to 10.1 (erfc underflows to 0 before that); exp(-a^2) is taken as
#   exp(-s) * (1 - s_lo) with s = a*a rounded and s_lo = fma(a, a, -s) its exact
#   remainder, so the rounding of a^2 does not cost |a|^2 ulps.
ERF_SMALL = f32(0.75)
ERFC_CLAMP = f32(10.1)
ERF_P = tuple(f32(float.fromhex(h)) for h in (
    "0x1.06eba8p-3", "-0x1.81273ap-2", "0x1.ce2ac8p-4", "-0x1.b7a89cp-6", "0x1.4f2cbcp-8", "-0x1.61dfb6p-11"))
ERF_P0, ERF_P1, ERF_P2, ERF_P3, ERF_P4, ERF_P5 = ERF_P
ERFC_R = tuple(f32(float.fromhex(h)) for h in (
    "0x1.1ba038p-2", "-0x1.7bf5e4p-4", "-0x1.5407aap-3", "0x1.4ff936p-3", "-0x1.bc32a6p-5",
    "-0x1.065abap-7", "0x1.1e688ap-7", "0x1.202594p-10", "-0x1.793512p-10", "-0x1.d4ee6ep-15"))
ERFC_R0, ERFC_R1, ERFC_R2, ERFC_R3, ERFC_R4, ERFC_R5, ERFC_R6, ERFC_R7, ERFC_R8, ERFC_R9 = ERFC_R
GELU_ERF_CLAMP = f32(14.3)
INV_SQRT2 = f32(float.fromhex("0x1.6a09e6p-1"))


@njit(**_JIT)
def _erf_small(w):
    z = w * w
    p = fma(fma(fma(fma(fma(ERF_P5, z, ERF_P4), z, ERF_P3), z, ERF_P2), z, ERF_P1), z, ERF_P0)
    return fma(w, p, w)


@njit(**_JIT)
def _erfc_tail(a, s, s_lo):
    """erfc(a) for a >= 0.75 (a <= 10.1), given s + s_lo == a*a exactly (s = a*a rounded)."""
    q = (a - TWO) / (a + TWO)
    r = fma(fma(fma(fma(fma(fma(fma(fma(fma(ERFC_R9, q, ERFC_R8), q, ERFC_R7), q, ERFC_R6), q, ERFC_R5),
                                q, ERFC_R4), q, ERFC_R3), q, ERFC_R2), q, ERFC_R1), q, ERFC_R0)
    r = (r + ONE) / fma(TWO, a, ONE)
    e = exp32(-s)
    e = fma(e, -s_lo, e)
    return r * e


@njit(**_JIT)
def erfc32(w):
    a = abs(w)
    a = a if a < ERFC_CLAMP else ERFC_CLAMP
    s = a * a
    tail = _erfc_tail(a, s, fma(a, a, -s))
    big = tail if w >= ZERO else TWO - tail
    small = ONE - _erf_small(w)
    return small if abs(w) < ERF_SMALL else (big if w == w else w)


@njit(**_JIT)
def erf32(w):
    a = abs(w)
    a = a if a < ERFC_CLAMP else ERFC_CLAMP
    s = a * a
    big = ONE - _erfc_tail(a, s, fma(a, a, -s))
    big = big if w >= ZERO else -big
    return _erf_small(w) if abs(w) < ERF_SMALL else (big if w == w else w)


# --- GELU ----------------------------------------------------------------------------------
# tanh form: 0.5*x*(1 + tanh(u)) == x / (1 + exp(-2u)), u = sqrt(2/pi)*(x + 0.044715*x^3).
# The right-hand form has no cancellation for negative x.
GELU_C3 = f32(0.044715)
GELU_M2C = f32(-2.0 * float(np.sqrt(2.0 / np.pi)))  # -2*sqrt(2/pi), rounded once


@njit(**_JIT)
def gelu_tanh32(x):
    x3 = (x * x) * x
    v = fma(GELU_C3, x3, x)                   # x + 0.044715*x^3
    e = exp32(v * GELU_M2C)                   # exp(-2u)
    return x / (ONE + e)


# erf form: 0.5*x*(1 + erf(x/sqrt2)) == 0.5*x*erfc(-x/sqrt2); for x < 0 the erfc tail is
# used directly (no cancellation), with exp(-x^2/2) taken from x itself (x*x split exactly).
@njit(**_JIT)
def gelu_erf32(x):
    w = -(x * INV_SQRT2)
    a = abs(w)
    big_arg = a >= ERF_SMALL
    a = a if a < ERFC_CLAMP else ERFC_CLAMP
    xc = abs(x)
    xc = xc if xc < GELU_ERF_CLAMP else GELU_ERF_CLAMP  # 14.3/sqrt2 > 10.1: same clamp, in x
    s = xc * xc
    s_lo = fma(xc, xc, -s)
    tail = _erfc_tail(a, s * HALF, s_lo * HALF)
    big = tail if w >= ZERO else TWO - tail
    c = big if big_arg else ONE - _erf_small(w)
    y = (x * HALF) * c
    return y if x == x else x


@njit(**_JIT)
def relu32(x):
    return ZERO if x < ZERO else x
