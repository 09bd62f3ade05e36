"""The runs strategy: numba loops over runs of one label along the flattened frame.

The mask becomes runs of constant nonzero label (``plan_runs``), each at most ``CHUNK``
pixels, and every frame is read run by run, straight from the raw frames. A run's pixels
are contiguous, so its loop is vectorized by LLVM; its fixed cost (loop set-up, the
horizontal sum of the vector accumulators, a branch mispredict at its end, the update
of its region's totals) is paid once per run. So this strategy wins for masks of few,
long runs (a detector mask, a few rings or boxes) and loses to ``cpu_scatter`` where runs
are short.

Sums (``run_sums``, for sum/mean/count) go in groups of ``GROUP`` frames: each run is
summed in all of them in one loop (``GROUP`` rows streamed side by side), so the run's
cost is paid once per group, not per frame.

* integers: a run is summed in an accumulator that cannot overflow over ``CHUNK``
  pixels (uint32 for (u)int8/uint16, int32 for int8/int16, int64 for 32-bit input) and
  added to an int64 total per region: exact, like numpy's int64 sums.
* floats: a run is summed in float64 (each pixel converted exactly), compiled with
  ``fastmath={"reassoc"}`` only: LLVM may split the sum into vector lanes (another
  summation order, ~1e-16 relative), but no flag assumes finite or non-NaN values, so
  NaN and +/-inf propagate as in IEEE arithmetic. A run whose sum is NaN is summed again
  skipping and counting NaN pixels: numpy's nansum rules.

All statistics (``run_moments``) take one read too: per run, the sum, the sum of squares
(integers; see ``moments``) or the sums of deviations from a per-(frame, region) shift and
of their squares (floats), min, max and the count of non-NaN pixels, added into the
``moments`` layout.

Runs use unsigned indices: numba's wraparound check on signed indices keeps LLVM from
vectorizing. Functions are compiled on first use per dtype signature and cached on disk.
"""

from __future__ import annotations

import numba
import numpy as np
from numba.extending import overload

#: Longest run in pixels: 65535 * 16384 < 2**32 and 32768 * 16384 < 2**31, so the
#: per-run accumulators of 8/16-bit input cannot overflow (and a float64 run of
#: 128 KiB is still in L2 when the moments loop reads it a second time).
CHUNK = 16384
#: Frames summed side by side per run.
GROUP = 4

#: (kind, itemsize) -> accumulator of a run's sum (integers).
_INT_ACC: dict[tuple[str, int], type[np.integer]] = {
    ("u", 1): np.uint32,
    ("u", 2): np.uint32,
    ("i", 1): np.int32,
    ("i", 2): np.int32,
    ("u", 4): np.int64,
    ("i", 4): np.int64,
}

Runs = tuple[np.ndarray, np.ndarray, np.ndarray]


def plan_runs(labels: np.ndarray) -> Runs:
    """Runs of one nonzero label along the flattened labels: (starts, lengths, region).

    Runs longer than ``CHUNK`` are split; ``region`` is the 0-based region index.
    """
    flat = np.ascontiguousarray(labels).ravel()
    n = flat.size
    if n == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    starts = np.concatenate(([0], change))
    ends = np.concatenate((change, [n]))
    label = flat[starts]
    keep = label > 0
    starts, ends, label = starts[keep], ends[keep], label[keep]
    pieces = (ends - starts + CHUNK - 1) // CHUNK
    idx = np.repeat(np.arange(starts.size), pieces)
    part = np.arange(idx.size) - np.repeat(np.cumsum(pieces) - pieces, pieces)
    run_starts = starts[idx] + part * CHUNK
    lengths = np.minimum(ends[idx] - run_starts, CHUNK)
    return (
        run_starts.astype(np.int64),
        lengths.astype(np.int64),
        (label[idx] - 1).astype(np.int64),
    )


_jit = numba.njit(cache=True, nogil=True)
_jit_reassoc = numba.njit(cache=True, nogil=True, fastmath={"reassoc"})

# -- sums -------------------------------------------------------------------------------


@_jit_reassoc
def _run_sum(row, start, length, zero):  # type: ignore[no-untyped-def]
    """Sum of row[start:start + length] in the type of ``zero`` (see ``_run_sum4``)."""
    one = np.uint64(1)
    i = np.uint64(start)
    end = i + np.uint64(length)
    acc = zero
    while i < end:
        acc += type(zero)(row[i])
        i += one
    return acc


@_jit
def _nan_run_sum(row, start, length):  # type: ignore[no-untyped-def]
    """(sum skipping NaN, NaN count) of row[start:start + length]: nansum rules."""
    acc = 0.0
    skipped = 0
    for i in range(start, start + length):
        v = np.float64(row[i])
        if v == v:
            acc += v
        else:
            skipped += 1
    return acc, skipped


@_jit_reassoc
def _run_sum4(r0, r1, r2, r3, start, length, zero):  # type: ignore[no-untyped-def]
    """Sums of [start:start + length] of four rows in one pass, in the type of ``zero``:
    an integer accumulator that cannot overflow over ``CHUNK`` pixels, or float64
    (``reassoc``: LLVM may reorder the float additions into vector lanes; integer
    additions are reordered without it)."""
    one = np.uint64(1)
    i = np.uint64(start)
    end = i + np.uint64(length)
    a0 = zero
    a1 = zero
    a2 = zero
    a3 = zero
    while i < end:
        a0 += type(zero)(r0[i])
        a1 += type(zero)(r1[i])
        a2 += type(zero)(r2[i])
        a3 += type(zero)(r3[i])
        i += one
    return a0, a1, a2, a3


@_jit
def _sums(x, starts, lengths, region, sums, nans, zero):  # type: ignore[no-untyped-def]
    """Per-run sums (in the type of ``zero``) added into ``sums`` (B, K): int64 for
    integers, float64 for floats, whose NaN pixels are skipped and counted in ``nans``."""
    n_frames = x.shape[0]
    # Groups of GROUP frames: each run's (start, length, region) is read, and its
    # loop set up, once per group; the GROUP rows are streamed side by side.
    f = 0
    while f + GROUP <= n_frames:
        r0, r1, r2, r3 = x[f], x[f + 1], x[f + 2], x[f + 3]
        for r in range(starts.size):
            s = starts[r]
            n = lengths[r]
            k = region[r]
            a0, a1, a2, a3 = _run_sum4(r0, r1, r2, r3, s, n, zero)
            if a0 != a0:  # NaN pixel (or inf - inf): nansum rules, count NaN
                a0, c = _nan_run_sum(r0, s, n)
                nans[f, k] += c
            if a1 != a1:
                a1, c = _nan_run_sum(r1, s, n)
                nans[f + 1, k] += c
            if a2 != a2:
                a2, c = _nan_run_sum(r2, s, n)
                nans[f + 2, k] += c
            if a3 != a3:
                a3, c = _nan_run_sum(r3, s, n)
                nans[f + 3, k] += c
            sums[f, k] += a0
            sums[f + 1, k] += a1
            sums[f + 2, k] += a2
            sums[f + 3, k] += a3
        f += GROUP
    while f < n_frames:  # the last B % GROUP frames one by one
        row = x[f]
        for r in range(starts.size):
            acc = _run_sum(row, starts[r], lengths[r], zero)
            if acc != acc:
                acc, c = _nan_run_sum(row, starts[r], lengths[r])
                nans[f, region[r]] += c
            sums[f, region[r]] += acc
        f += 1


def run_sums(x: np.ndarray, runs: Runs, n_regions: int) -> tuple[np.ndarray, np.ndarray]:
    """(sums, NaN counts) (B, K) of frames ``x`` (B, pixels), C-contiguous and native:
    int64 sums for integers, float64 for floats."""
    starts, lengths, region = runs
    nans = np.zeros((x.shape[0], n_regions), dtype=np.int64)
    floats = x.dtype.kind == "f"
    zero = np.float64(0) if floats else _INT_ACC[(x.dtype.kind, x.dtype.itemsize)](0)
    sums = np.zeros((x.shape[0], n_regions), dtype=np.float64 if floats else np.int64)
    _sums(x, starts, lengths, region, sums, nans, zero)
    return sums, nans


# -- all statistics in one read -----------------------------------------------------------


def _add_square(low, high, v):  # type: ignore[no-untyped-def]
    """(low, high) + v * v: a running sum of squares as a 128-bit number (low 64 bits,
    wrapping, and the carries), compiled per input type by the overload below."""
    raise NotImplementedError("called from compiled code only")


@overload(_add_square, inline="always")
def _add_square_for(low, high, v):  # type: ignore[no-untyped-def]
    if v.bitwidth < 32:
        # (u)int8/16: a region's squares stay below 2**63, so no carry (and the loop
        # vectorizes).
        def small(low, high, v):  # type: ignore[no-untyped-def]
            w = np.int64(v)
            return low + np.uint64(w * w), high

        return small

    def wide(low, high, v):  # type: ignore[no-untyped-def]
        w = np.int64(v)
        sq = np.uint64(w * w)  # exact: < 2**64 (the int64 product wraps to it)
        low += sq
        return low, high + np.uint64(low < sq)

    return wide


def _store_squares(acc, f, k, low, high, v):  # type: ignore[no-untyped-def]
    """acc[1:3, f, k] += a run's squares (low, high), per input type (that of ``v``)."""
    raise NotImplementedError("called from compiled code only")


@overload(_store_squares, inline="always")
def _store_squares_for(acc, f, k, low, high, v):  # type: ignore[no-untyped-def]
    if v.bitwidth < 32:

        def small(acc, f, k, low, high, v):  # type: ignore[no-untyped-def]
            acc[1, f, k] += np.int64(low)

        return small

    def wide(acc, f, k, low, high, v):  # type: ignore[no-untyped-def]
        total = np.uint64(acc[1, f, k]) + low  # 128-bit addition
        acc[1, f, k] = np.int64(total)
        acc[2, f, k] += np.int64(high + np.uint64(total < low))

    return wide


@_jit
def _int_moments(x, starts, lengths, region, acc):  # type: ignore[no-untyped-def]
    """Integers: sum, sum of squares (fields 1-2, see ``_add_square``), min and max of
    each run in its input's type, added into ``acc``."""
    one = np.uint64(1)
    for f in range(x.shape[0]):
        row = x[f]
        for r in range(starts.size):
            i = np.uint64(starts[r])
            end = i + np.uint64(lengths[r])
            k = region[r]
            s = np.int64(0)
            low = np.uint64(0)
            high = np.uint64(0)
            lo = row[i]
            hi = row[i]
            while i < end:
                v = row[i]
                s += np.int64(v)
                low, high = _add_square(low, high, v)
                lo = min(lo, v)
                hi = max(hi, v)
                i += one
            acc[0, f, k] += s
            _store_squares(acc, f, k, low, high, lo)  # lo: a value of the input type
            acc[3, f, k] = min(acc[3, f, k], np.int64(lo))
            acc[4, f, k] = max(acc[4, f, k], np.int64(hi))


@_jit_reassoc
def _float_run_sums(row, start, length, c):  # type: ignore[no-untyped-def]
    """Sums of d = x - c and of d * d, and the count, over a run's non-NaN pixels
    (vectorized: the NaN test is a select, the sums may be reordered)."""
    one = np.uint64(1)
    i = np.uint64(start)
    end = i + np.uint64(length)
    s = 0.0
    q = 0.0
    n = 0.0
    while i < end:
        v = np.float64(row[i])
        valid = v == v
        d = v - c if valid else 0.0
        s += d
        q += d * d
        n += 1.0 if valid else 0.0
        i += one
    return s, q, n


@_jit
def _key_extremes(bits, start, length, shift, mask, nan_above, top, bottom):  # type: ignore[no-untyped-def]
    """min and max of a run of floats as integer keys, NaN skipped: ``bits`` is the run
    viewed as signed integers of the float's width, and key = b ^ ((b >> shift) & mask)
    orders like the floats (negative ones have their magnitude bits flipped). An integer
    min/max is vectorized by LLVM; a float one that must skip NaN is not. ``top`` and
    ``bottom`` (no key of a non-NaN float) come back for a run of NaN only."""
    one = np.uint64(1)
    i = np.uint64(start)
    end = i + np.uint64(length)
    lo = top
    hi = bottom
    while i < end:
        b = bits[i]
        key = b ^ ((b >> shift) & mask)
        nan = (b & mask) > nan_above
        lo = min(lo, top if nan else key)
        hi = max(hi, bottom if nan else key)
        i += one
    return lo, hi


@_jit
def _float_moments(x, bits, starts, lengths, region, shift, acc, keys, cell):  # type: ignore[no-untyped-def]
    """Floats: sums of d = x - shift[f, k] and of d * d, the count of non-NaN pixels,
    min and max (NaN pixels are skipped by every one of them). The run is read twice,
    the second time from cache. ``keys`` = (shift, mask, nan_above, top, bottom) of the
    float width (see ``_key_extremes``); ``cell`` a 1-element integer array whose float
    view turns a key back into its float."""
    kshift, mask, nan_above, top, bottom = keys
    value = cell.view(x.dtype)
    for f in range(x.shape[0]):
        row = x[f]
        raw = bits[f]
        for r in range(starts.size):
            k = region[r]
            s, q, n = _float_run_sums(row, starts[r], lengths[r], shift[f, k])
            acc[0, f, k] += s
            acc[1, f, k] += q
            acc[2, f, k] += n
            lo, hi = _key_extremes(raw, starts[r], lengths[r], kshift, mask, nan_above, top, bottom)
            if lo == top:
                continue  # NaN only
            cell[0] = lo ^ ((lo >> kshift) & mask)
            acc[3, f, k] = min(acc[3, f, k], np.float64(value[0]))
            cell[0] = hi ^ ((hi >> kshift) & mask)
            acc[4, f, k] = max(acc[4, f, k], np.float64(value[0]))


#: Float width -> (signed integer of that width, ``_key_extremes``' constants: shift,
#: mask, largest non-NaN magnitude bits, top, bottom).
_KEYS: dict[int, tuple[type[np.signedinteger], tuple[int, ...]]] = {
    4: (np.int32, (31, 2**31 - 1, 0x7F800000, 2**31 - 1, -(2**31))),
    8: (np.int64, (63, 2**63 - 1, 0x7FF0000000000000, 2**63 - 1, -(2**63))),
}


def run_moments(x: np.ndarray, runs: Runs, acc: np.ndarray, shift: np.ndarray | None) -> None:
    """Add the moments of frames ``x`` (B, pixels) into ``acc`` (``moments`` layout)."""
    if x.dtype.kind == "f":
        assert shift is not None
        int_type, constants = _KEYS[x.dtype.itemsize]
        keys = tuple(int_type(c) for c in constants)
        cell = np.zeros(1, dtype=int_type)
        _float_moments(x, x.view(int_type), *runs, shift, acc, keys, cell)
    else:
        _int_moments(x, *runs, acc)
