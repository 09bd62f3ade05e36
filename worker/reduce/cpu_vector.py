"""The scatter strategy for all statistics of 16-bit integers, eight frames per vector.

``cpu_scatter`` adds each pixel of ``GROUP`` = 8 frames into its region's record one
frame at a time: per pixel and frame a load, two read-modify-writes and two compares,
scalar, because LLVM (through numba) does not vectorize across frames. Here the eight
frames of a pixel are one vector:

* a tile of the group's frames is transposed to (tile pixels, 8) (``_transpose8``:
  four 16-bit pixels per 64-bit word, lanes swapped with shifts and masks, which LLVM's
  loop vectorizer turns into vector shuffles);
* each pixel then updates its region's record with whole vectors (``_add_pixel``, LLVM
  vector IR through numba's ``intrinsic`` API): the 8 sums and 8 sums of squares in
  int64, min and max in the input's own 16-bit type (``rm``: one 16-byte vector each,
  where int64 records took four times the memory and slower compares).

Results are the same integers as the other strategies', bit for bit (exact int64 sums;
a square of a 16-bit value fits 32 bits, so it is formed in 32-bit lanes and widened).
Only for (u)int16 with min, max or std asked; ``cpu`` measures it against the others.
``_add_pixel`` uses numba's low-level extension API (``intrinsic``, ``cgutils``): numba is
pinned below 0.70 in pyproject.toml, and the tests of this strategy compile and run it
against the numpy reference.
"""

from __future__ import annotations

import sys
from typing import Any

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .cpu_scatter import FLUSH_BLOCK, GROUP

#: Pixels per transposed tile: (TILE, 8) 16-bit values = 32 KiB, in L1/L2 while read.
TILE = 2048
#: Input dtypes this strategy takes.
DTYPES = (np.dtype(np.uint16), np.dtype(np.int16))

_jit = numba.njit(cache=True, nogil=True)


def supports(dtype: np.dtype) -> bool:
    """16-bit integers, on a little-endian host (the transpose reads 4 pixels per 64-bit
    word, pixel 0 in the low bits)."""
    return dtype in DTYPES and sys.byteorder == "little"


@intrinsic
def _add_pixel(typingctx: Any, t: Any, i: Any, rs: Any, rm: Any, k: Any) -> Any:
    """Pixel ``i`` of the tile ``t`` (8 frames) into region ``k``'s records: ``rs[k]``
    (16 int64: sums, then squares) and ``rm[k]`` (16 of the input type: min, then max)."""
    if not (isinstance(t, types.Array) and t.dtype in (types.uint16, types.int16)):
        return None
    signed = t.dtype.signed
    lanes16 = ir.VectorType(ir.IntType(16), GROUP)
    lanes32 = ir.VectorType(ir.IntType(32), GROUP)
    lanes64 = ir.VectorType(ir.IntType(64), GROUP)

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        t_ty, i_ty, rs_ty, rm_ty, k_ty = sig.args
        t_val, i_val, rs_val, rm_val, k_val = args

        def vector(ary_ty: Any, ary_val: Any, row: Any, row_ty: Any, col: int, vec: Any) -> Any:
            ary = context.make_array(ary_ty)(context, builder, ary_val)
            index = [
                context.cast(builder, row, row_ty, types.intp),
                context.get_constant(types.intp, col),
            ]
            ptr = cgutils.get_item_pointer(context, builder, ary_ty, ary, index)
            return builder.bitcast(ptr, vec.as_pointer())

        extend = builder.sext if signed else builder.zext
        less = builder.icmp_signed if signed else builder.icmp_unsigned
        v = builder.load(vector(t_ty, t_val, i_val, i_ty, 0, lanes16), align=2)
        lo_ptr = vector(rm_ty, rm_val, k_val, k_ty, 0, lanes16)
        hi_ptr = vector(rm_ty, rm_val, k_val, k_ty, GROUP, lanes16)
        lo = builder.load(lo_ptr, align=2)
        hi = builder.load(hi_ptr, align=2)
        builder.store(builder.select(less("<", v, lo), v, lo), lo_ptr, align=2)
        builder.store(builder.select(less(">", v, hi), v, hi), hi_ptr, align=2)
        v32 = extend(v, lanes32)
        square = builder.zext(builder.mul(v32, v32), lanes64)  # < 2**32: exact
        sum_ptr = vector(rs_ty, rs_val, k_val, k_ty, 0, lanes64)
        sq_ptr = vector(rs_ty, rs_val, k_val, k_ty, GROUP, lanes64)
        sums = builder.load(sum_ptr, align=8)
        squares = builder.load(sq_ptr, align=8)
        builder.store(builder.add(sums, extend(v, lanes64)), sum_ptr, align=8)
        builder.store(builder.add(squares, square), sq_ptr, align=8)
        return context.get_dummy_value()

    return types.none(t, i, rs, rm, k), codegen


@_jit
def _transpose8(x64, x, f0, p0, m, t, t64):  # type: ignore[no-untyped-def]
    """Pixels p0 .. p0 + m of frames f0 .. f0 + 8 into ``t[:m]`` (m, 8). ``x64`` is ``x``
    as uint64 words of 4 pixels (p0 a multiple of 4), ``t64`` is ``t`` flat as uint64
    (pixel i: frames 0-3 in word 2i, 4-7 in 2i + 1). Each 4x4 block of 16-bit values is
    transposed as 2x2 blocks of 16 bits, then of 32 bits."""
    lo16 = np.uint64(0x0000FFFF0000FFFF)
    hi16 = np.uint64(0xFFFF0000FFFF0000)
    lo32 = np.uint64(0x00000000FFFFFFFF)
    hi32 = np.uint64(0xFFFFFFFF00000000)
    s16 = np.uint64(16)
    s32 = np.uint64(32)
    q0 = np.uint64(p0 // 4)
    words = min(np.uint64(m // 4), np.uint64(x64.shape[1]) - q0)
    for half in range(2):  # frames 0-3, then 4-7
        r0 = x64[f0 + 4 * half]
        r1 = x64[f0 + 4 * half + 1]
        r2 = x64[f0 + 4 * half + 2]
        r3 = x64[f0 + 4 * half + 3]
        out = np.uint64(half)
        for q in range(words):
            j = q0 + q
            w0 = r0[j]
            w1 = r1[j]
            w2 = r2[j]
            w3 = r3[j]
            a0 = (w0 & lo16) | ((w1 & lo16) << s16)
            a1 = ((w0 >> s16) & lo16) | (w1 & hi16)
            a2 = (w2 & lo16) | ((w3 & lo16) << s16)
            a3 = ((w2 >> s16) & lo16) | (w3 & hi16)
            o = np.uint64(8) * q + out
            t64[o] = (a0 & lo32) | (a2 << s32)
            t64[o + np.uint64(2)] = (a1 & lo32) | (a3 << s32)
            t64[o + np.uint64(4)] = (a0 >> s32) | (a2 & hi32)
            t64[o + np.uint64(6)] = (a1 >> s32) | (a3 & hi32)
    for i in range(4 * words, m):  # the last pixels of a frame of 4n + 1..3 pixels
        for g in range(GROUP):
            t[i, g] = x[f0 + g, p0 + i]


@_jit
def _moments(x, x64, lab, rs, rm, acc, t, t64, low, high):  # type: ignore[no-untyped-def]
    """All frames of ``x`` (B, pixels), B a multiple of GROUP, into ``acc`` (5, B, K)."""
    n = lab.size
    big = np.iinfo(np.int64).max
    for f0 in range(0, x.shape[0], GROUP):
        rs[:] = 0
        rm[:, :GROUP] = high  # min starts at the type's largest value
        rm[:, GROUP:] = low
        for p0 in range(0, n, t.shape[0]):
            m = min(t.shape[0], n - p0)
            _transpose8(x64, x, f0, p0, m, t, t64)
            for i in range(m):
                _add_pixel(t, i, rs, rm, lab[p0 + i])  # type: ignore[call-arg]
        for k0 in range(1, rs.shape[0], FLUSH_BLOCK):
            k1 = min(k0 + FLUSH_BLOCK, rs.shape[0])
            for g in range(GROUP):
                f = f0 + g
                for k in range(k0, k1):
                    lo = np.int64(rm[k, g])
                    hi = np.int64(rm[k, GROUP + g])
                    empty = hi < lo  # no pixel: the identities of the int64 records
                    acc[0, f, k - 1] = rs[k, g]
                    acc[1, f, k - 1] = rs[k, GROUP + g]
                    acc[2, f, k - 1] = 0
                    acc[3, f, k - 1] = big if empty else lo
                    acc[4, f, k - 1] = -big if empty else hi


def scatter_moments(x: np.ndarray, lab: np.ndarray, acc: np.ndarray) -> None:
    """Write the moments of 16-bit frames ``x`` (B, pixels), C-contiguous, B a multiple of
    GROUP, into ``acc`` (the ``moments`` layout (5, B, K))."""
    n_regions = acc.shape[2]
    n = x.shape[1]
    x64 = x[:, : n - n % 4].view(np.uint64)
    t = np.empty((TILE, GROUP), dtype=x.dtype)
    rs = np.empty((n_regions + 1, 2 * GROUP), dtype=np.int64)
    rm = np.empty((n_regions + 1, 2 * GROUP), dtype=x.dtype)
    info = np.iinfo(x.dtype)
    low, high = x.dtype.type(info.min), x.dtype.type(info.max)
    _moments(x, x64, lab, rs, rm, acc, t, t.reshape(-1).view(np.uint64), low, high)
