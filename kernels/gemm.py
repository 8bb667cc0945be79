"""Dense layers: y = act(x @ W + b) under the dot-product contract (NUMERICS.md, "Dot products").

Contract: out[m, n] = act(dot(x[m, :], W[:, n]) + b[n]) where, for K terms,
  block s_j = fma chain over k in [j*KB, min(K, (j+1)*KB)) ascending, from +0.0,
  dot = s_0 + s_1 + ... + s_last (plain float32 adds, ascending j),   KB = 128.

Two implementations, which must agree bit for bit:

* `dense_ref`: plain scalar loops over the contract, obviously correct (slow).
* the fast path (`gemm_part`, run through `isa.KernelSet.dense`): packed-panel GEMM.
  B (the weight) is packed once into NR-column panels, A (the activations) is read in
  place, row-major; a micro-kernel written in LLVM IR (`make_micro`: MR x NR accumulators
  in <VW x float> registers, `llvm.fma.vVWf32`) computes up to KBLOCKS consecutive
  KB-blocks of an MR x NR tile, each from zero accumulators, and stores each (first block)
  or adds it (later blocks) into C before the next, which is exactly the contract's order.
  Threads take whole output tiles; no reduction is ever split. Bias + activation are
  applied to each tile right after its last block, while it is in cache.

The tile shape and vector width are not in the contract: they are the instruction-set
variant's (isa.py), and `gemm_tile` / `gemm_part` are templates that isa.py compiles
once per variant, reading the globals MR, NR (micro-tile rows and columns), KBLOCKS
(KB-blocks per micro-kernel call) and `_micro` (its micro-kernel) from the variant's
namespace. This module defines none of the four.
"""
from __future__ import annotations

import functools

import numpy as np
from llvmlite import ir
from numba import config, njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from albert_ref.memory import weight_array

from .fmath import fma, fma_exact, gelu_erf32, gelu_tanh32, relu32, tanh32

KB = 128      # contract: dot-product block length

# The code of each activation (config.ACTIVATIONS) as `activate` and `_epilogue` branch on it.
ACT_CODES = {None: 0, "linear": 0, "gelu_tanh": 1, "gelu_erf": 2, "relu": 3, "tanh": 4}
_F32 = np.float32
_JIT = dict(cache=True, error_model="numpy")
# An offset of 0 passed to gemm_tile as a plain `0` is typed Literal[int](0), and each
# mix of literal and int64 offsets would compile gemm_tile once more (0.5 s each): so
# callers pass this int64 zero (an origin offset) instead, and gemm_tile compiles once per variant.
ORIGIN = np.intp(0)


@njit(cache=True, inline="always", error_model="numpy")
def activate(v, act):
    if act == 1:
        return gelu_tanh32(v)
    if act == 2:
        return gelu_erf32(v)
    if act == 3:
        return relu32(v)
    if act == 4:
        return tanh32(v)
    return v


# --- reference ------------------------------------------------------------------------------

@njit(**_JIT)
def dot_ref(x, xs, w, ws, n):
    """The contract's dot product of x[0], x[xs], ... and w[0], w[ws], ... (n terms)."""
    total = _F32(0.0)
    for k0 in range(0, n, KB):
        s = _F32(0.0)
        for k in range(k0, min(n, k0 + KB)):
            s = fma(x[k * xs], w[k * ws], s)
        total = s if k0 == 0 else total + s
    return total


@njit(**_JIT)
def dense_ref(x, w, bias, act, out):
    """x [M, K], w [K, N] (plain, C order), bias [N] -> out [M, N]."""
    M, K = x.shape
    N = w.shape[1]
    wf = w.reshape(w.size)
    for m in range(M):
        xr = np.ascontiguousarray(x[m])
        for n in range(N):
            out[m, n] = activate(dot_ref(xr, 1, wf[n:], N, K) + bias[n], act)   # column n: wf[n + k*N]


# --- fast: the LLVM-IR micro-kernel ------------------------------------------------------------

def make_micro(mr, nr, vw, unroll):
    """The micro-kernel of an mr x nr tile held in nr/vw vectors of vw floats per row, its
    k loop unrolled `unroll` times (fewer loop-control instructions per FMA: 4-wide
    front ends such as Haswell's are close to their limit otherwise). It prefetches the C
    tile's lines for writing before its first block, so that folding a block into C, after
    hundreds of FMA cycles, finds them in L1. Under NUMBA_DISABLE_JIT, `micro_exact`."""
    if config.DISABLE_JIT:
        return functools.partial(micro_exact, mr, nr)
    nv = nr // vw

    @intrinsic
    def micro(typingctx, a, a_off, a_rs, b, b_off, kc, c, c_off, ldc, accumulate):
        """C[r, :] (=|+=) chain_k fma(A[r, k], B[k, :]) for an mr x nr tile, k < kc, one
        chain per KB-block of k (k = 0 being a block edge of the dot product), each stored
        (first block, accumulate == 0) or added into C before the next.

        a: flat A, element (r, k) at a_off + k + r*a_rs (row-major A, a_rs its row
        stride); b: packed B (nr
        floats per k) at b_off; c: flat float32 output, tile origin c_off, row stride ldc."""
        sig = types.void(a, types.intp, types.intp, b, types.intp, types.intp, c, types.intp,
                         types.intp, types.intp)

        def codegen(context, builder, signature, args):
            a_v, a_off_v, a_rs_v, b_v, b_off_v, kc_v, c_v, c_off_v, ldc_v, acc_v = args
            fty = ir.FloatType()
            vty = ir.VectorType(fty, vw)
            ity = ir.IntType(64)
            i32 = ir.IntType(32)
            a_ptr = builder.gep(context.make_array(signature.args[0])(context, builder, a_v).data, [a_off_v])
            b_ptr = builder.gep(context.make_array(signature.args[3])(context, builder, b_v).data, [b_off_v])
            c_ptr = builder.gep(context.make_array(signature.args[6])(context, builder, c_v).data, [c_off_v])
            a_rows = [builder.gep(a_ptr, [builder.mul(a_rs_v, ir.Constant(ity, r))]) for r in range(mr)]
            fma_v = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vty, [vty] * 3),
                                                   f"llvm.fma.v{vw}f32")
            c_rows = [builder.gep(c_ptr, [builder.mul(ldc_v, ir.Constant(ity, r))]) for r in range(mr)]
            i8p = ir.IntType(8).as_pointer()
            prefetch = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]), "llvm.prefetch.p0")
            for row in c_rows:      # every 64-byte line of the row: one per 16 floats, and its last
                for off in sorted(set(range(0, nr, 16)) | {nr - 1}):
                    builder.call(prefetch, [builder.bitcast(builder.gep(row, [ir.Constant(ity, off)]), i8p),
                                            ir.Constant(i32, 1), ir.Constant(i32, 3), ir.Constant(i32, 1)])
            zero = ir.Constant(vty, None)
            undef = ir.Constant(vty, ir.Undefined)
            splat_mask = ir.Constant(ir.VectorType(i32, vw), None)
            fn = builder.function

            def step(k, accs):
                bp = builder.gep(b_ptr, [builder.mul(k, ir.Constant(ity, nr))])
                bvec = [builder.load(builder.bitcast(builder.gep(bp, [ir.Constant(ity, vw * v)]), vty.as_pointer()),
                                     align=4) for v in range(nv)]
                new = []
                for r in range(mr):
                    av = builder.load(builder.gep(a_rows[r], [k]), align=4)
                    splat = builder.shuffle_vector(builder.insert_element(undef, av, ir.Constant(i32, 0)),
                                                   undef, splat_mask)
                    for v in range(nv):
                        new.append(builder.call(fma_v, [splat, bvec[v], accs[r * nv + v]]))
                return new

            def loop(name, k0, accs0, width, bound):
                """k from k0 while k + width <= bound, `width` steps per trip; returns (k, accs) after."""
                pre = builder.block
                head = fn.append_basic_block(f"{name}_head")
                body = fn.append_basic_block(f"{name}_body")
                done = fn.append_basic_block(f"{name}_done")
                builder.branch(head)
                builder.position_at_end(head)
                k = builder.phi(ity)
                k.add_incoming(k0, pre)
                accs = []
                for a0 in accs0:
                    p = builder.phi(vty)
                    p.add_incoming(a0, pre)
                    accs.append(p)
                last = builder.add(k, ir.Constant(ity, width - 1))
                builder.cbranch(builder.icmp_signed("<", last, bound), body, done)
                builder.position_at_end(body)
                new = accs
                for u in range(width):
                    new = step(builder.add(k, ir.Constant(ity, u)) if u else k, new)
                k_next = builder.add(k, ir.Constant(ity, width))
                end = builder.block
                builder.branch(head)
                k.add_incoming(k_next, end)
                for p, n in zip(accs, new):
                    p.add_incoming(n, end)
                builder.position_at_end(done)
                return k, accs

            ptrs = []
            for row in c_rows:
                for v in range(nv):
                    ptrs.append(builder.bitcast(builder.gep(row, [ir.Constant(ity, vw * v)]), vty.as_pointer()))
            # one trip per KB-block of k < kc (at least one: kc = 0 stores zeros): its chain from
            # zero accumulators, then stored into C (first block, accumulate == 0) or added to it
            pre = builder.block
            blk = fn.append_basic_block("mk_block")
            exit_ = fn.append_basic_block("mk_exit")
            builder.branch(blk)
            builder.position_at_end(blk)
            kb = builder.phi(ity)
            kb.add_incoming(ir.Constant(ity, 0), pre)
            add = builder.phi(ity)
            add.add_incoming(acc_v, pre)
            kb_next = builder.add(kb, ir.Constant(ity, KB))
            bound = builder.select(builder.icmp_signed("<", kb_next, kc_v), kb_next, kc_v)
            k, accs = kb, [zero] * (mr * nv)
            if unroll > 1:
                k, accs = loop("mk_unrolled", k, accs, unroll, bound)
            k, accs = loop("mk", k, accs, 1, bound)
            with builder.if_else(builder.icmp_signed("!=", add, ir.Constant(ity, 0))) as (then, otherwise):
                with then:
                    for p, acc in zip(ptrs, accs):
                        builder.store(builder.fadd(builder.load(p, align=4), acc), p, align=4)
                with otherwise:
                    for p, acc in zip(ptrs, accs):
                        builder.store(acc, p, align=4)
            add.add_incoming(ir.Constant(ity, 1), builder.block)
            kb.add_incoming(kb_next, builder.block)
            builder.cbranch(builder.icmp_signed("<", kb_next, kc_v), blk, exit_)
            builder.position_at_end(exit_)
            return context.get_dummy_value()

        return sig, codegen

    return micro


def micro_exact(mr, nr, a, a_off, a_rs, b, b_off, kc, c, c_off, ldc, accumulate):
    """The micro-kernel in Python, each output's fma chain and block folds in the compiled
    kernel's order: its stand-in where Numba runs kernels as Python."""
    for kb in range(0, max(kc, 1), KB):
        for r in range(mr):
            for n in range(nr):
                acc = _F32(0.0)
                for k in range(kb, min(kb + KB, kc)):
                    acc = fma_exact(a[a_off + r * a_rs + k], b[b_off + k * nr + n], acc)
                i = c_off + r * ldc + n
                c[i] = c[i] + acc if accumulate or kb else acc


# --- fast: packing and the tiled driver -------------------------------------------------------

def pack_b(w, nr):
    """W [K, N] (float32) -> [ceil(N/nr), K, nr]: NR-column panels, columns past N zero.
    Done once per weight, as the model is read. A layout copy, so NumPy does it (as fast as
    a Numba loop, releasing the GIL, and with nothing to compile or to load from Numba's
    cache before the weights can be read), into memory of its own (albert_ref.memory)."""
    K, N = w.shape
    full, rest = divmod(N, nr)
    out = weight_array((full + (rest > 0), K, nr))
    out[:full] = w[:, :full * nr].reshape(K, full, nr).transpose(1, 0, 2)
    if rest:
        out[full, :, :rest] = w[:, full * nr:]
        out[full, :, rest:] = 0.0
    return out


@njit(**_JIT)
def _epilogue(out, bias, i0, i1, j0, j1, act):
    # Loops over slices from 0: LLVM vectorizes these, not `range(j0, j1)` (8x slower).
    # One loop per code, as `activate` branches: 1-4 as ACT_CODES, any other code linear.
    b = bias[j0:j1]
    for i in range(i0, i1):
        row = out[i, j0:j1]
        if act == 1:
            for j in range(row.size):
                row[j] = gelu_tanh32(row[j] + b[j])
        elif act == 2:
            for j in range(row.size):
                row[j] = gelu_erf32(row[j] + b[j])
        elif act == 3:
            for j in range(row.size):
                row[j] = relu32(row[j] + b[j])
        elif act == 4:
            for j in range(row.size):
                row[j] = tanh32(row[j] + b[j])
        else:
            for j in range(row.size):
                row[j] = row[j] + b[j]


def gemm_tile(a, a0, lda, M, bp, c, c0, ldc, N, i0, i1, j0, j1, ka, kz, tmp, edge):
    """C[i0:i1, j0:j1] (= if ka == 0, else +=) the contract's blocks of k in [ka, kz)
    (ka, kz multiples of KB, or kz == K) of A times packed B [panels, K, NR]; no bias.

    A and C are flat float32 arrays addressed by origin and row stride (so that a head's
    columns of q, or of the attention output, are used in place): A row r at a0 + r*lda,
    M rows; C row r at c0 + r*ldc, N columns. i0 % MR == j0 % NR == 0. Tiles that cross
    row M or column N go through tmp [MR*NR]; edge [MR, K] holds a last partial row panel,
    zero-padded, so that no row past M is ever read."""
    K = bp.shape[1]
    bf = bp.reshape(bp.size)
    ef = edge.reshape(edge.size)
    tail = M - M % MR                       # rows >= tail form a partial panel
    if i1 > tail:
        for r in range(MR):
            for k in range(ka, kz):
                edge[r, k] = a[a0 + (tail + r) * lda + k] if tail + r < M else 0.0
    for k0 in range(ka, kz, KB * KBLOCKS):
        kc = min(KB * KBLOCKS, kz - k0)
        acc = 1 if k0 > 0 else 0
        for j in range(j0, j1, NR):
            b_off = ((j // NR) * K + k0) * NR
            for i in range(i0, i1, MR):
                if i + MR <= M and j + NR <= N:
                    _micro(a, a0 + i * lda + k0, lda, bf, b_off, kc, c, c0 + i * ldc + j, ldc, acc)
                else:
                    # the tile through tmp, which holds C's part of it (when adding to C)
                    rows = min(MR, M - i)
                    cols = min(NR, N - j)
                    if acc:
                        for r in range(rows):
                            for col in range(cols):
                                tmp[r * NR + col] = c[c0 + (i + r) * ldc + j + col]
                    if i + MR <= M:
                        _micro(a, a0 + i * lda + k0, lda, bf, b_off, kc, tmp, 0, NR, acc)
                    else:
                        _micro(ef, k0, K, bf, b_off, kc, tmp, 0, NR, acc)
                    for r in range(rows):
                        for col in range(cols):
                            c[c0 + (i + r) * ldc + j + col] = tmp[r * NR + col]


def gemm_part(x, bp, bias, act, out, mc, nc, kchunk, part, parts):
    """Slice `part` of `parts` of out [M, N] = act(x @ B + bias), x [M, K] C order, B packed
    (albert_ref.parts runs the slices at once).

    The output is cut into tiles of at most mc x nc, near-equal in whole micro-tiles (so
    that no slice is left with the narrow last ones: N = 2048 in 240-column tiles would
    leave one 128 wide), the tiles are numbered, and slice p takes the p-th of `parts`
    equal runs of them. It walks K in chunks of kchunk (a multiple of KB) in ascending
    order and, within a chunk, its tiles; so each output receives its KB-blocks in
    ascending order, from one slice, and the bits do not depend on mc, nc, kchunk or
    parts. Chunking only keeps the working set of A and B in cache."""
    M, N = out.shape
    K = x.shape[1]
    kchunk = max(KB, kchunk - kchunk % KB)  # chunk edges must be block edges
    mc = max(MR, mc - mc % MR)              # tiles must hold whole micro-tiles
    nc = max(NR, nc - nc % NR)
    xf = x.reshape(M * K)
    oflat = out.reshape(M * N)
    mp = (M + MR - 1) // MR                 # micro-tile rows and columns
    np_ = (N + NR - 1) // NR
    mt = (mp + mc // MR - 1) // (mc // MR)  # tile rows and columns
    nt = (np_ + nc // NR - 1) // (nc // NR)
    tiles = mt * nt
    t0 = tiles * part // parts
    t1 = tiles * (part + 1) // parts
    tmp = np.empty(MR * NR, dtype=np.float32)
    edge = np.empty((MR, K if M % MR else 0), dtype=np.float32)
    for ka in range(0, K, kchunk):
        kz = min(K, ka + kchunk)
        for t in range(t0, t1):
            i0 = (t % mt) * mp // mt * MR
            i1 = min(M, (t % mt + 1) * mp // mt * MR)
            j0 = (t // mt) * np_ // nt * NR
            j1 = min(N, (t // mt + 1) * np_ // nt * NR)
            gemm_tile(xf, ORIGIN, K, M, bp, oflat, ORIGIN, N, N, i0, i1, j0, j1, ka, kz, tmp, edge)
            if kz == K:
                _epilogue(out, bias, i0, i1, j0, j1, act)


def tile_sizes(M, N, K, threads, variant):
    """Cache/parallel tiling for an isa.Variant: its mr x nr micro-tile, tiles of at most
    its mc x nc (speed only, never the bits)."""
    mr, nr = variant.mr, variant.nr
    mc = min(variant.mc, -(-M // mr) * mr)   # gemm_part rounds tiles to whole micro-tiles
    nc = variant.nc
    while nc > nr and (-(-M // mc)) * (-(-N // nc)) < 4 * threads:
        nc = max(nr, (nc // 2) - (nc // 2) % nr)
    kchunk = 1024 if M * N >= (1 << 20) else K
    return mc, nc, max(KB, kchunk)
