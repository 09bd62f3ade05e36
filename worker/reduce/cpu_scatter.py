"""The scatter strategy: numba loops that add each pixel into its region's accumulators.

Every pixel costs the same whatever the number of regions K: its label is looked up
(uint16 labels where K < 65535, else uint32) and its value added into a small record
of accumulators for that region. Unmasked pixels go to a record of their own (label 0),
which is never read, so the loop has no branch on the mask. Where runs of one label are
short (many rings, pixel bins) this beats the runs strategy, whose cost is per run.

Two things keep the loop from waiting on memory:

* ``GROUP`` frames go through it together: one label read serves ``GROUP`` values,
  each with its own accumulator in the record, and the accumulators of a record share
  one or two cache lines.
* For sums, neighbouring pixels go to two interleaved copies of the records (even and
  odd pixels), so two pixels of one region in a row do not both wait on the same
  memory location (a store, then a load of it). The copies are added at the end.

Records live in a reused scratch array of ``K + 1`` rows and are moved into the
``(B, K)`` outputs after each group. Frames come in as ``(B, pixels)`` with B a multiple
of ``GROUP`` (the caller pads the rest of a block with zero frames).

All statistics (``scatter_moments``) take one read: the same fields as the runs
strategy (see ``moments``). Stores bound this loop; min and max are updated behind a
branch (skipping the store where they stay) or always (no mispredicts), see
``_extremes``.
"""

from __future__ import annotations

import numba
import numpy as np

#: Frames that go through the loop together.
GROUP = 8

_jit = numba.njit(cache=True, nogil=True)


def label_table(flat_labels: np.ndarray, n_regions: int) -> np.ndarray:
    """The labels as the loops read them: the narrowest unsigned type that holds K."""
    dtype = np.uint16 if n_regions < np.iinfo(np.uint16).max else np.uint32
    return np.ascontiguousarray(flat_labels, dtype=dtype)


# -- sums -------------------------------------------------------------------------------


#: Records moved to the outputs per block of regions: a block's records stay in L1
#: while each output row gets a contiguous run (the outputs' rows are K apart).
FLUSH_BLOCK = 64


@_jit
def _flush_sums(rec, out, f0):  # type: ignore[no-untyped-def]
    """Rows f0 .. f0 + GROUP of ``out`` (B, K): the records' copies added up."""
    copies = rec.shape[1] // GROUP
    for k0 in range(1, rec.shape[0], FLUSH_BLOCK):
        k1 = min(k0 + FLUSH_BLOCK, rec.shape[0])
        for g in range(GROUP):
            for k in range(k0, k1):
                total = rec[k, g]
                for c in range(1, copies):
                    total += rec[k, c * GROUP + g]
                out[f0 + g, k - 1] = total


@_jit
def _int_sums(x, lab, rec, out):  # type: ignore[no-untyped-def]
    """int64 sums; ``rec`` (K + 1, 2 * GROUP): copy 0 in [0, GROUP), copy 1 after it."""
    one = np.uint64(1)
    two = np.uint64(2)
    group = np.uint64(GROUP)
    n = np.uint64(lab.size)
    for f0 in range(0, x.shape[0], GROUP):
        rec[:] = 0
        uf = np.uint64(f0)
        p = np.uint64(0)
        while p + one < n:
            a = rec[np.uint64(lab[p])]
            b = rec[np.uint64(lab[p + one])]
            g = np.uint64(0)
            while g < group:
                a[g] += np.int64(x[uf + g, p])
                b[group + g] += np.int64(x[uf + g, p + one])
                g += one
            p += two
        if p < n:  # an odd last pixel
            a = rec[np.uint64(lab[p])]
            g = np.uint64(0)
            while g < group:
                a[g] += np.int64(x[uf + g, p])
                g += one
        _flush_sums(rec, out, f0)


@_jit
def _float_sums(x, lab, rec, nans, out, nan_out):  # type: ignore[no-untyped-def]
    """float64 sums skipping NaN, and NaN counts (``nans`` (K + 1, GROUP)); +/-inf are
    added as they are, which gives numpy's nansum rules (inf - inf = NaN)."""
    one = np.uint64(1)
    group = np.uint64(GROUP)
    n = np.uint64(lab.size)
    for f0 in range(0, x.shape[0], GROUP):
        rec[:] = 0.0
        nans[:] = 0
        uf = np.uint64(f0)
        p = np.uint64(0)
        while p < n:
            # Two copies: even pixels in [0, GROUP), odd ones after it.
            copy = (p & one) * group
            k = np.uint64(lab[p])
            a = rec[k]
            g = np.uint64(0)
            while g < group:
                v = np.float64(x[uf + g, p])
                if v == v:
                    a[copy + g] += v
                else:
                    nans[k, g] += 1
                g += one
            p += one
        _flush_sums(rec, out, f0)
        _flush_sums(nans, nan_out, f0)


def scatter_sums(
    x: np.ndarray, lab: np.ndarray, n_regions: int, scratch: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(sums, NaN counts) (B, K) of frames ``x`` (B, pixels), B a multiple of GROUP:
    int64 sums for integers, float64 for floats."""
    b = x.shape[0]
    nans = np.zeros((b, n_regions), dtype=np.int64)
    if x.dtype.kind == "f":
        rec = np.empty((n_regions + 1, 2 * GROUP))
        counts = np.empty((n_regions + 1, GROUP), dtype=np.int64)
        sums = np.empty((b, n_regions))
        _float_sums(x, lab, rec, counts, sums, nans)
        return sums, nans
    rec = np.empty((n_regions + 1, 2 * GROUP), dtype=np.int64)
    out = np.empty((b, n_regions), dtype=np.int64)
    _int_sums(x, lab, rec, out)
    return out, nans


# -- all statistics in one read -----------------------------------------------------------
#
# One loop per input kind (integers, floats); what differs inside it (how a square is
# added, how min and max are updated) comes in as a small jitted function argument, so
# numba compiles one specialization per combination with nothing tested per pixel.

#: Fields of a record, each GROUP wide: the ``moments`` layout's five fields.
_FIELDS = 5
_inline = numba.njit(cache=True, nogil=True, inline="always")
#: Loops that take those functions as arguments are compiled in each process: numba cannot
#: always write a signature holding a function to its cache ("underlying object has
#: vanished" when a pool process compiles them).
_jit_uncached = numba.njit(cache=False, nogil=True)


@_inline
def _square(a, i, v):  # type: ignore[no-untyped-def]
    """Add v * v to a[i]: 8/16-bit input, where a region's squares fit int64."""
    a[i] += v * v


@_inline
def _wide_square(a, i, v):  # type: ignore[no-untyped-def]
    """Add v * v as a 128-bit number: low 64 bits (wrapping) in a[i], carries in
    a[i + GROUP]; for 32-bit input, whose squares reach 2**64."""
    sq = np.uint64(v * v)  # exact: < 2**64 (the int64 product wraps to it)
    low = np.uint64(a[i]) + sq
    a[i] = np.int64(low)
    a[i + np.uint64(GROUP)] += np.int64(low < sq)


@_inline
def _branchy_extremes(a, i, v):  # type: ignore[no-untyped-def]
    """min in a[i], max in a[i + GROUP], stored only where they change: after the first
    pixels of a large region they rarely do, and the branch is predicted."""
    if v < a[i]:
        a[i] = v
    if v > a[i + np.uint64(GROUP)]:
        a[i + np.uint64(GROUP)] = v


@_inline
def _branchless_extremes(a, i, v):  # type: ignore[no-untyped-def]
    """min and max always stored (conditional moves): faster where regions are small and
    the branch would be mispredicted often."""
    a[i] = min(a[i], v)
    a[i + np.uint64(GROUP)] = max(a[i + np.uint64(GROUP)], v)


@_jit
def _reset(rec, low, high):  # type: ignore[no-untyped-def]
    """Records of moments emptied: zero sums and counts, min/max at their identities."""
    for k in range(rec.shape[0]):
        for g in range(GROUP):
            rec[k, g] = 0
            rec[k, GROUP + g] = 0
            rec[k, 2 * GROUP + g] = 0
            rec[k, 3 * GROUP + g] = low
            rec[k, 4 * GROUP + g] = high


@_jit
def _flush(rec, acc, f0):  # type: ignore[no-untyped-def]
    """Move a group's records into ``acc`` (5, B, K) rows f0 .. f0 + GROUP."""
    for k0 in range(1, rec.shape[0], FLUSH_BLOCK):
        k1 = min(k0 + FLUSH_BLOCK, rec.shape[0])
        for field in range(_FIELDS):
            for g in range(GROUP):
                for k in range(k0, k1):
                    acc[field, f0 + g, k - 1] = rec[k, field * GROUP + g]


@_jit_uncached
def _int_moments(x, lab, rec, acc, square, extremes):  # type: ignore[no-untyped-def]
    """Integers: sum (field 0), squares (``square``: fields 1-2), min and max
    (``extremes``: fields 3-4)."""
    one = np.uint64(1)
    group = np.uint64(GROUP)
    n = np.uint64(lab.size)
    big = np.iinfo(np.int64).max
    for f0 in range(0, x.shape[0], GROUP):
        _reset(rec, big, -big)
        uf = np.uint64(f0)
        p = np.uint64(0)
        while p < n:
            a = rec[np.uint64(lab[p])]
            g = np.uint64(0)
            while g < group:
                v = np.int64(x[uf + g, p])
                a[g] += v
                square(a, group + g, v)
                extremes(a, np.uint64(3) * group + g, v)
                g += one
            p += one
        _flush(rec, acc, f0)


@_jit_uncached
def _float_moments(x, lab, rec, shift, acc, extremes):  # type: ignore[no-untyped-def]
    """Floats: sums of d = x - shift and of d * d, count, min, max; NaN skipped.
    ``shift`` (K + 1, B) holds each frame's shift per label (row 0 unused)."""
    one = np.uint64(1)
    group = np.uint64(GROUP)
    n = np.uint64(lab.size)
    inf = np.inf
    for f0 in range(0, x.shape[0], GROUP):
        _reset(rec, inf, -inf)
        uf = np.uint64(f0)
        p = np.uint64(0)
        while p < n:
            k = np.uint64(lab[p])
            a = rec[k]
            c = shift[k]
            g = np.uint64(0)
            while g < group:
                v = np.float64(x[uf + g, p])
                if v == v:
                    d = v - c[uf + g]
                    a[g] += d
                    a[group + g] += d * d
                    a[np.uint64(2) * group + g] += 1.0
                    extremes(a, np.uint64(3) * group + g, v)
                g += one
            p += one
        _flush(rec, acc, f0)


def scatter_moments(
    x: np.ndarray,
    lab: np.ndarray,
    acc: np.ndarray,
    shift: np.ndarray | None,
    branchless: bool = False,
) -> None:
    """Write the moments of frames ``x`` (B, pixels), B a multiple of GROUP, into ``acc``
    (``moments`` layout (5, B, K)); ``shift`` (B, K) for floats. min and max are updated
    behind a branch or, ``branchless``, always stored; which is faster depends on the
    regions' sizes."""
    n_regions = acc.shape[2]
    if x.dtype.kind == "f":
        assert shift is not None
        table = np.zeros((n_regions + 1, x.shape[0]))
        table[1:] = shift.T
        rec = np.empty((n_regions + 1, _FIELDS * GROUP))
        extremes = _branchless_extremes if branchless else _branchy_extremes
        _float_moments(x, lab, rec, table, acc, extremes)
        return
    rec = np.empty((n_regions + 1, _FIELDS * GROUP), dtype=np.int64)
    square = _wide_square if x.dtype.itemsize == 4 else _square
    extremes = _branchless_extremes if branchless else _branchy_extremes
    _int_moments(x, lab, rec, acc, square, extremes)
