"""Dense layers on the GPU: y = act(x @ W + b), the CUDA twin of kernels/gemm.py.

The contract (NUMERICS.md, "Dot products"): out[m, n] = act(dot(x[m, :], W[:, n]) + b[n]),
with dot = s_0 + s_1 + ... (ascending, one rounding each), s_j the FMA chain over
k in [j*KB, min(K, (j+1)*KB)) ascending from +0.0, KB = 128. Exactly that, per output:

* Tiled shared-memory GEMM. A CTA of TY x TX threads owns a BM x BN output tile
  (BM = 8*TY, BN = 8*TX); each thread owns an 8 x 8 tile of outputs (rows TY_i*4 + r and
  BM/2 + TY_i*4 + r, columns likewise, so that shared-memory reads are 16-byte vectors)
  and keeps, per output, the running block chain `acc` in registers and the block total
  `tot` in a private shared-memory slot. K is walked in BK-wide shared-memory tiles (BK
  divides KB), ascending, the next tile prefetched into registers; after the tile that
  ends a KB block (or ends K), tot = acc (first block) or tot + acc, and acc restarts
  from +0.0. Threads and CTAs only ever split the set of outputs: no split-K, no
  atomics, so the bits do not depend on TY, TX, BK, the grid or the GPU.
* Tiles that run past K hold x = -0.0 and W = +0.0 there: fma(-0, +0, s) = -0 + s = s
  for every s (signed zeros and infinities included), so the padded terms of the last
  block are exact no-ops and every output's chain is the contract's, term for term.
  Rows past M and columns past N are computed from the same padding and never stored.
* Epilogue: y = act(tot + b[n]) (add.rn, then the activation of kernels/fmath.py compiled
  for the device), stored once. Each kernel is specialised for one activation.

Every float operation is an explicit primitive of kernels/cuda_fmath.py (fma.rn.f32 for
the chain, add.rn.f32 for the block sums and the bias), so the compiler cannot contract
or reorder anything.
"""
from __future__ import annotations

import functools

import numpy as np
from numba import cuda, float32

from .cuda_fmath import SHARED_ALIGN, add32, fma32, make_activation
from .gemm import ACT_CODES, KB

_ACT_NAMES = {code: name for name, code in ACT_CODES.items() if name is not None}   # 0 -> "linear"
_NEG0 = np.float32(-0.0)
_ZERO = np.float32(0.0)
_U = np.uint64        # index cast: unsigned indices skip Python's negative-index wraparound code

# (TY, TX, BK): TY*TX threads per CTA, output tile (8*TY) x (8*TX), k tile BK. Speed only:
# the bits are the same for every tile (tests/test_conformance.py runs three).
DEFAULT_TILE = (8, 16, 8)
STATIC_SMEM_LIMIT = 48 * 1024


def tile_smem_bytes(tile):
    TY, TX, BK = tile
    return 4 * (BK * (8 * TY + 4) + BK * 8 * TX + 64 * TY * TX)


def make_dense_kernel(act: int, tile=DEFAULT_TILE):
    """The Python source of a dense kernel for one activation code (kernels/gemm.py
    ACT_CODES) and one tiling:
    kernel(x, w, bias, out, M, N, K) over flat C-order float32 arrays x [M*K], w [K*N],
    bias [N], out [M*N]; launch with `dense_grid(M, N, tile)`.

    Per thread: `acc[8][8]` (the current block's chains) in registers; the block totals in
    shared memory, one private slot per (output, thread) (`Ts[(i*8 + j)*NT + tid]`: written
    and read by its owner thread only, so no synchronisation and no bank conflicts), which
    keeps the kernel at ~128 registers (four 128-thread CTAs per SM on sm_90)."""
    TY, TX, BK = tile
    if KB % BK:
        raise ValueError(f"BK={BK}: a k tile must not straddle a contract block (KB={KB})")
    NT = TY * TX
    BM, BN = 8 * TY, 8 * TX
    HM, HN = BM // 2, BN // 2
    AP = BM + 4                      # padded As row: conflict-free transposed stores, 16-byte rows
    A_LOADS, B_LOADS = BM * BK // NT, BK * BN // NT
    if NT % BK or NT % BN or (8 * BK) % TX or (8 * BK) % TY:
        raise ValueError(f"tile {tile}: needs TY % 8 == 0, BK | TY*TX, TX | 8*BK and TY | 8*BK")
    A_STEP = NT // BK                # rows between one thread's x loads
    B_STEP = NT // BN                # k rows between one thread's w loads
    if tile_smem_bytes(tile) > STATIC_SMEM_LIMIT:
        raise ValueError(f"tile {tile} needs {tile_smem_bytes(tile)} bytes of shared memory (> 48 KiB)")
    ASZ, BSZ, TSZ = BK * AP, BK * BN, 64 * NT
    ALIGN = SHARED_ALIGN             # 16 bytes (None: the simulator, or an old numba-cuda)
    activate = make_activation(_ACT_NAMES[act])

    def dense(x, w, bias, out, M, N, K):
        As = cuda.shared.array(ASZ, float32, alignment=ALIGN)   # As[k*AP + m]: x tile, transposed
        Bs = cuda.shared.array(BSZ, float32, alignment=ALIGN)   # Bs[k*BN + n]: w tile
        Ts = cuda.shared.array(TSZ, float32)                    # block totals, private slots
        tid = cuda.threadIdx.x
        tyi = tid // TX
        txi = tid % TX
        m0 = cuda.blockIdx.y * BM
        n0 = cuda.blockIdx.x * BN
        acc = cuda.local.array((8, 8), float32)
        af = cuda.local.array(8, float32)
        bf = cuda.local.array(8, float32)
        pa = cuda.local.array(A_LOADS, float32)                 # tile t+1, prefetched
        pb = cuda.local.array(B_LOADS, float32)
        for i in range(8):
            for j in range(8):
                acc[i, j] = _ZERO
                Ts[_U((i * 8 + j) * NT + tid)] = _ZERO
        nk = (K + BK - 1) // BK
        # this thread loads x[m0 + a_row + l*A_STEP, k0 + a_k] and w[k0 + b_k + l*B_STEP, n0 + b_col]
        a_row = tid // BK
        a_k = tid % BK
        b_k = tid // BN
        b_col = tid % BN
        a_left = M - m0 - a_row
        b_ok = n0 + b_col < N
        xi = (m0 + a_row) * K + a_k
        wi = b_k * N + n0 + b_col
        a_s = a_k * AP + a_row
        b_s = b_k * BN + b_col
        a_off = tyi * 4
        b_off = txi * 4

        for l in range(A_LOADS):
            ok = l * A_STEP < a_left and a_k < K
            As[_U(a_s + l * A_STEP)] = x[_U(xi + l * A_STEP * K)] if ok else _NEG0
        for l in range(B_LOADS):
            ok = b_ok and b_k + l * B_STEP < K
            Bs[_U(b_s + l * B_STEP * BN)] = w[_U(wi + l * B_STEP * N)] if ok else _ZERO
        cuda.syncthreads()

        for t in range(nk):
            k0 = t * BK
            k1 = k0 + BK
            if t + 1 < nk:                                      # loads of tile t+1 in flight
                xi += BK
                wi += BK * N
                for l in range(A_LOADS):
                    ok = l * A_STEP < a_left and k1 + a_k < K
                    pa[l] = x[_U(xi + l * A_STEP * K)] if ok else _NEG0
                for l in range(B_LOADS):
                    ok = b_ok and k1 + b_k + l * B_STEP < K
                    pb[l] = w[_U(wi + l * B_STEP * N)] if ok else _ZERO
            for kk in range(BK):                                # the chains, ascending k
                ab = kk * AP + a_off
                bb = kk * BN + b_off
                for r in range(4):
                    af[r] = As[_U(ab + r)]
                    af[4 + r] = As[_U(ab + HM + r)]
                    bf[r] = Bs[_U(bb + r)]
                    bf[4 + r] = Bs[_U(bb + HN + r)]
                for i in range(8):
                    for j in range(8):
                        acc[i, j] = fma32(af[i], bf[j], acc[i, j])
            if k1 % KB == 0 or k1 >= K:                         # a contract block ends here
                if k0 < KB:
                    for i in range(8):
                        for j in range(8):
                            Ts[_U((i * 8 + j) * NT + tid)] = acc[i, j]
                            acc[i, j] = _ZERO
                else:
                    for i in range(8):
                        for j in range(8):
                            p = _U((i * 8 + j) * NT + tid)
                            Ts[p] = add32(Ts[p], acc[i, j])
                            acc[i, j] = _ZERO
            cuda.syncthreads()
            if t + 1 < nk:
                for l in range(A_LOADS):
                    As[_U(a_s + l * A_STEP)] = pa[l]
                for l in range(B_LOADS):
                    Bs[_U(b_s + l * B_STEP * BN)] = pb[l]
            cuda.syncthreads()

        for i in range(8):
            gm = m0 + a_off + i if i < 4 else m0 + HM + a_off + (i - 4)
            if gm < M:
                for j in range(8):
                    gn = n0 + b_off + j if j < 4 else n0 + HN + b_off + (j - 4)
                    if gn < N:
                        v = add32(Ts[_U((i * 8 + j) * NT + tid)], bias[_U(gn)])
                        out[_U(gm * N + gn)] = activate(v)

    dense.__name__ = dense.__qualname__ = f"dense_act{act}_{TY}x{TX}x{BK}"
    return dense


@functools.lru_cache(maxsize=None)
def dense_kernel(act: int, tile=DEFAULT_TILE):
    """The compiled (lazily, on first launch) kernel for an activation code and tiling."""
    return cuda.jit(make_dense_kernel(act, tile))


def dense_grid(M, N, tile=DEFAULT_TILE):
    """(grid, threads per CTA) for an M x N output."""
    TY, TX, _ = tile
    return ((N + 8 * TX - 1) // (8 * TX), (M + 8 * TY - 1) // (8 * TY)), TY * TX


def launch_dense(x, w, bias, out, activation=None, tile=DEFAULT_TILE, stream=0):
    """out = act(x @ w + bias): x [M, K], w [K, N], out [M, N] C-contiguous float32 device
    arrays (2-D), bias [N]."""
    M, K = x.shape
    N = w.shape[1]
    if M == 0 or N == 0:
        return out
    grid, threads = dense_grid(M, N, tile)
    dense_kernel(ACT_CODES[activation], tuple(tile))[grid, threads, stream](
        x.reshape(M * K), w.reshape(K * N), bias, out.reshape(M * N), M, N, K)
    return out


def make_copy_rows_kernel():
    """dst [M, N] (C order) = src [M, N] (any strides): makes a strided view (the pooler's
    sequence_output[:, 0]) a dense operand. A copy: no arithmetic."""
    def copy_rows(src, dst):
        i = cuda.grid(1)
        n = dst.shape[1]
        if i < dst.shape[0] * n:
            dst[i // n, i % n] = src[i // n, i % n]
    return copy_rows


copy_rows_kernel = cuda.jit(make_copy_rows_kernel())


__all__ = ["DEFAULT_TILE", "copy_rows_kernel", "dense_grid", "dense_kernel", "launch_dense", "make_copy_rows_kernel",
           "make_dense_kernel", "tile_smem_bytes"]
