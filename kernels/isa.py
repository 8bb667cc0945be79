"""Instruction-set variants of the fast CPU kernels: the GEMM micro-tile and vector width.

NUMERICS.md fixes each output's FMA order, never the tile shape or the vector width, so
every variant gives the same bits; they differ in speed only. A variant keeps MR x NR
accumulators in MR * NR / VW vector registers, plus NR / VW vectors of B and one
broadcast of A, and must fit the register file of the CPUs it is meant for, or LLVM
spills in the innermost loop (4 x 64 in 16-float vectors is 32 ymm registers on AVX2,
which has 16).

The variant is chosen from the CPU that Numba compiles for (NUMBA_CPU_NAME and
NUMBA_CPU_FEATURES when set, else the host): a probe compiles a 16-float FMA with that
target and reads the widest vector registers and whether the FMA is an instruction.
`select` takes an explicit name (`albert_ref.load(..., isa=...)`, ALBERT_REF_ISA) instead,
and refuses an unknown name or a variant wider than the target's vectors.

Every variant is compiled from one source: `kernel_set` copies the template functions of
gemm.py and attention.py with a globals dict holding that variant's MR, NR, KBLOCKS and
micro-kernel (which bakes in its unroll), under a qualname suffixed with the variant's
name. Numba's on-disk cache keys its files on source file and qualname alone and treats
globals as constants, so each variant has its own cache entries, only the variants a
process uses are compiled, and a variant with other settings needs another name
(bench_gemm_tuning's and test_gemm_blocking's are named after their settings).
"""
from __future__ import annotations

import functools
import os
import platform
import types
from dataclasses import dataclass

from numba import njit

from albert_ref.errors import IsaError
from albert_ref.parts import run_parts

from . import attention as _attention
from . import gemm as _gemm

ENV = "ALBERT_REF_ISA"


@dataclass(frozen=True)
class Variant:
    name: str
    mr: int             # micro-tile rows
    nr: int             # micro-tile columns (and packed weight panel width)
    vw: int             # floats per vector
    doc: str
    unroll: int         # k steps per trip of the micro-kernel's loop
    kblocks: int        # KB-blocks of k per micro-kernel call: its B micro-panel is kblocks*KB x nr
    mc: int             # rows of a cache tile (its A block: mc x min(K, kchunk))
    nc: int             # columns of a cache tile (a multiple of nr below it)

    @property
    def bits(self) -> int:
        return 32 * self.vw


# Widest first. Shapes measured on xlarge GEMMs (benchmarks/RESULTS.md, "Kernel variants"):
# avx512 4 x 64 was tuned on Zen 5 (8 x 32 spills its 8 row pointers of A; 6 x 32, 12 x 32
# slower); under NUMBA_CPU_NAME=haswell, 4 x 24 and 6 x 16 tie at M = 1024, 8 x 8 and
# 4 x 16 reach 0.65-0.75x of them and avx512's 4 x 64 0.4x; at M = 128 (one sequence)
# 4 x 24 is 1.15x 6 x 16, whose last 2 rows run a whole 6-row tile; in 128-bit vectors
# with 16 registers, 4 x 12 is ahead of 6 x 8, and 8 x 12 and 4 x 16 spill.
#
# Blocking ("AVX2 tuning" in RESULTS.md): a micro-kernel call that covers several KB-blocks
# keeps its C tile in L1 between blocks and pays the call's set-up once per kblocks*KB
# steps; its B micro-panel (kblocks*KB x nr) then streams from L2, at nr*4 bytes per
# 6 FMA cycles (16 bytes a cycle for avx2, well within every AVX2 core's L2 bandwidth).
# Sizes are chosen for the smallest caches each variant meets, not for the Zen 4 they
# were measured on: avx2's B micro-panel of 1024 x 24 floats (96 KiB) and A block of
# 64 x 1024 (256 KiB) fit together in Zen 2/3's 512 KiB L2, and the micro-panel alone in
# Intel client parts' 256 KiB-1.25 MiB; avx512 (Zen 4/5, Xeon: 1-2 MiB L2) keeps 4 blocks
# (128 KiB panel) and 128-row tiles; sse (NEON cores have 1 MiB+ L2; SSE-only x86 is old and
# slow either way) follows avx2. Unrolling by 4 keeps 4-wide front ends fed.
VARIANTS = {v.name: v for v in (
    Variant("avx512", 4, 64, 16, "AVX-512: 16 of 32 zmm registers accumulate, 4 hold B",
            unroll=4, kblocks=4, mc=128, nc=256),
    Variant("avx2", 4, 24, 8, "256-bit FMA (AVX2): 12 of 16 ymm registers accumulate, 3 hold B",
            unroll=4, kblocks=8, mc=64, nc=240),
    Variant("sse", 4, 12, 4, "128-bit vectors (x86 without 256-bit FMA, Arm NEON): 12 accumulators, 3 of B",
            unroll=4, kblocks=8, mc=64, nc=240),
)}


@dataclass(frozen=True)
class Target:
    """The CPU Numba compiles for, as LLVM sees it."""
    cpu: str            # LLVM CPU name (e.g. znver4, haswell, generic)
    vector_bits: int    # widest float vector registers: 512, 256 or 128
    fma: bool           # a fused multiply-add instruction (not a libm call)

    @property
    def variants(self) -> tuple[str, ...]:
        """The variants this target runs natively, widest first."""
        return tuple(v.name for v in VARIANTS.values()
                     if v.bits <= self.vector_bits and (self.fma or v.bits == 128))


_PROBE = """
declare <16 x float> @llvm.fma.v16f32(<16 x float>, <16 x float>, <16 x float>)
define void @probe(<16 x float>* %p) {
  %a = load <16 x float>, <16 x float>* %p
  %r = call <16 x float> @llvm.fma.v16f32(<16 x float> %a, <16 x float> %a, <16 x float> %a)
  store <16 x float> %r, <16 x float>* %p
  ret void
}
"""


@functools.lru_cache(maxsize=None)
def target() -> Target:
    """Numba's own target (triple, CPU name, features: its cache key), probed."""
    from numba.core.registry import cpu_target

    return probe(*cpu_target.target_context.codegen().magic_tuple())


def probe(triple: str, cpu: str, features: str) -> Target:
    """Compiles _PROBE for an LLVM target; any architecture LLVM has (aarch64 included: NEON's
    q registers print as v0.4s, neither ymm nor zmm, so 128 bits and fmla, no fmaf call)."""
    import llvmlite.binding as ll

    machine = ll.Target.from_triple(triple).create_target_machine(cpu=cpu, features=features)
    asm = machine.emit_assembly(ll.parse_assembly(_PROBE))
    bits = 512 if "zmm" in asm else 256 if "ymm" in asm else 128
    return Target(cpu=cpu, vector_bits=bits, fma="fmaf" not in asm)


def select(name: str | None = None) -> Variant:
    """The variant to run: `name`, else $ALBERT_REF_ISA, else the widest the target runs."""
    source = "isa"
    if name is None:
        name, source = os.environ.get(ENV) or None, ENV
    t = target()
    if name is None:
        return VARIANTS[t.variants[0]]
    if name not in VARIANTS:
        raise IsaError(f"unknown {source} {name!r}; choose one of {', '.join(VARIANTS)}")
    if name not in t.variants:
        raise IsaError(f"{source} {name!r} needs {VARIANTS[name].bits}-bit FMA vectors, but Numba compiles for "
                       f"{t.cpu} ({t.vector_bits}-bit vectors{'' if t.fma else ', no FMA instruction'}); "
                       f"this CPU runs: {', '.join(t.variants)}")
    return VARIANTS[name]


def describe(variant: Variant) -> str:
    """One line for benchmarks and logs: the compile target and the variant."""
    t = target()
    return (f"CPU {t.cpu} ({platform.machine()}, {t.vector_bits}-bit vectors{'' if t.fma else ', no FMA'}); "
            f"kernel variant {variant.name}: {variant.mr} x {variant.nr} tile, {variant.bits}-bit vectors "
            f"({variant.doc}); k loop unrolled {variant.unroll}x, {variant.kblocks} KB-blocks per call, "
            f"cache tiles <= {variant.mc} x {variant.nc}")


class KernelSet:
    """The fast kernels of one variant: dense (GEMM) and attention, each run as `threads`
    slices at once (albert_ref.parts)."""

    def __init__(self, variant: Variant):
        self.variant = v = variant
        ns = dict(vars(_gemm), MR=v.mr, NR=v.nr, KBLOCKS=v.kblocks, _micro=_gemm.make_micro(v.mr, v.nr, v.vw, v.unroll))
        ns["gemm_tile"] = _specialise(_gemm.gemm_tile, ns, v)
        self.gemm_part = _specialise(_gemm.gemm_part, ns, v)
        ans = dict(vars(_attention), MR=v.mr, NR=v.nr, gemm_tile=ns["gemm_tile"])
        self.attention_part = _specialise(_attention.attention_part, ans, v)

    def pack(self, w):
        """W [K, N] (float32) as this variant's NR-column panels."""
        return _gemm.pack_b(w, self.variant.nr)

    def gemm_packed(self, x, bp, bias, act, out, mc, nc, kchunk, threads=1):
        """out [M, N] = act(x @ W + bias) with explicit tiling (gemm.gemm_part)."""
        run_parts(self.gemm_part, threads, x, bp, bias, act, out, mc, nc, kchunk)

    def dense(self, x2, bp, bias, act, threads, out):
        """out [M, N] = act(x2 @ W + bias): x2 [M, K] float32 (C order), bp = self.pack(W)."""
        M, K = x2.shape
        mc, nc, kchunk = _gemm.tile_sizes(M, out.shape[1], K, threads, self.variant)
        self.gemm_packed(x2, bp, bias, act, out, mc, nc, kchunk, threads)
        return out

    def attention(self, q, k, v, mask, num_heads, scale, out, threads=1):
        """out = attention over q, k, v [B, S, H] (attention.attention_part)."""
        run_parts(self.attention_part, threads, q, k, v, mask, num_heads, scale, out)


def _specialise(template, namespace, variant):
    """`template` compiled against `namespace` as its globals, cached under its own name;
    serial and GIL-free, so that albert_ref.parts can run its slices on threads."""
    fn = types.FunctionType(template.__code__, namespace, template.__name__, template.__defaults__)
    fn.__qualname__ = f"{template.__qualname__}.{variant.name}"
    fn.__module__ = template.__module__
    fn.__doc__ = template.__doc__
    return njit(cache=True, nogil=True, error_model="numpy")(fn)


@functools.lru_cache(maxsize=None)
def kernel_set(name: str) -> KernelSet:
    """The kernels of variant `name` (built once per process; compiled on first call)."""
    return KernelSet(VARIANTS[name])
