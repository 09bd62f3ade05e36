"""Fused CPU region statistics with numba: reads of the raw frames, no staging copy.

Used by ``worker.kernel`` on the CPU whenever numba imports: sums and NaN counts
(sum/mean/count) in one read; min/max (``region_minmax``) and squared deviations from
the frame's region means (``region_ssd``, for std) in one more read each, only when
asked.

The mask is turned once into runs of constant label along the flattened frame
(``plan_runs``), each at most ``CHUNK`` pixels, and every frame is read run by run. Float and
(u)int8/uint16 frames go in groups of ``GROUP`` consecutive frames: each run is summed
in all of them in one loop (``GROUP`` rows streamed side by side, one accumulator
each), so the run's metadata, loop set-up and branch misses are paid once per group,
not per frame (short runs: 16 rings went from ~0.47x to ~0.7-0.9x of numpy.sum); the
last ``B % GROUP`` frames go one by one. Groups of 8 were slower (register pressure).

* integers: a run is summed in an integer accumulator that cannot overflow over
  ``CHUNK`` pixels (uint32 for (u)int8/uint16, int32 for int8/int16, int64 for 32-bit
  input) and added to an int64 total per region: exact, like numpy's int64 sums.
* floats: a run is summed in float64 (each pixel converted exactly). The loop is
  compiled with ``fastmath={"reassoc"}`` only: LLVM may split it into vector lanes
  (a different summation order, errors ~1e-16 relative, far inside 1e-12), but no
  flag that assumes finite or non-NaN values is set, so NaN and +/-inf propagate as
  in IEEE arithmetic. A run whose sum is NaN is summed again skipping NaN pixels and
  counting them: that is numpy's nansum (NaN skipped; +inf/-inf give +inf/-inf, both
  give NaN via inf - inf).

Runs use unsigned indices: numba's wraparound check on signed indices keeps LLVM from
vectorizing. Functions are compiled lazily, once per process and dtype signature
(``cache=True`` keeps the machine code on disk between processes).
"""

from __future__ import annotations

import numpy as np

try:
    import numba
except ImportError:  # pragma: no cover - exercised where numba is missing
    numba = None  # type: ignore[assignment]

#: numba is importable: the fused path can be used.
AVAILABLE = numba is not None
#: Longest run in pixels: 65535 * 16384 < 2**32 and 32768 * 16384 < 2**31, so the
#: per-run accumulators of 8/16-bit input cannot overflow.
CHUNK = 16384
#: Frames summed side by side per run (float input).
GROUP = 4

#: (kind, itemsize) -> accumulator of a run (integers).
_INT_ACC = {
    ("u", 1): "u32",
    ("u", 2): "u32",
    ("i", 1): "i32",
    ("i", 2): "i32",
    ("u", 4): "i64",
    ("i", 4): "i64",
}


def plan_runs(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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


if numba is not None:
    _jit = numba.njit(cache=True, nogil=True)

    @_jit
    def _int_run_sum4_u32(r0, r1, r2, r3, start, length):  # type: ignore[no-untyped-def]
        """uint32 sums of [start:start + length] of four rows in one pass."""
        one = np.uint64(1)
        i = np.uint64(start)
        end = i + np.uint64(length)
        a0 = np.uint32(0)
        a1 = np.uint32(0)
        a2 = np.uint32(0)
        a3 = np.uint32(0)
        while i < end:
            a0 += np.uint32(r0[i])
            a1 += np.uint32(r1[i])
            a2 += np.uint32(r2[i])
            a3 += np.uint32(r3[i])
            i += one
        return a0, a1, a2, a3

    @_jit
    def _int_sums_u32(x, starts, lengths, region, out):  # type: ignore[no-untyped-def]
        one = np.uint64(1)
        n_frames = x.shape[0]
        f = 0
        while f + GROUP <= n_frames:  # groups of GROUP frames per run, as for floats
            r0, r1, r2, r3 = x[f], x[f + 1], x[f + 2], x[f + 3]
            for r in range(starts.size):
                k = region[r]
                a0, a1, a2, a3 = _int_run_sum4_u32(r0, r1, r2, r3, starts[r], lengths[r])
                out[f, k] += np.int64(a0)
                out[f + 1, k] += np.int64(a1)
                out[f + 2, k] += np.int64(a2)
                out[f + 3, k] += np.int64(a3)
            f += GROUP
        while f < n_frames:
            row = x[f]
            for r in range(starts.size):
                i = np.uint64(starts[r])
                end = i + np.uint64(lengths[r])
                acc = np.uint32(0)
                while i < end:
                    acc += np.uint32(row[i])
                    i += one
                out[f, region[r]] += np.int64(acc)
            f += 1

    @_jit
    def _int_sums_i32(x, starts, lengths, region, out):  # type: ignore[no-untyped-def]
        one = np.uint64(1)
        for f in range(x.shape[0]):
            row = x[f]
            for r in range(starts.size):
                i = np.uint64(starts[r])
                end = i + np.uint64(lengths[r])
                acc = np.int32(0)
                while i < end:
                    acc += np.int32(row[i])
                    i += one
                out[f, region[r]] += np.int64(acc)

    @_jit
    def _int_sums_i64(x, starts, lengths, region, out):  # type: ignore[no-untyped-def]
        one = np.uint64(1)
        for f in range(x.shape[0]):
            row = x[f]
            for r in range(starts.size):
                i = np.uint64(starts[r])
                end = i + np.uint64(lengths[r])
                acc = np.int64(0)
                while i < end:
                    acc += np.int64(row[i])
                    i += one
                out[f, region[r]] += acc

    @numba.njit(cache=True, nogil=True, fastmath={"reassoc"})
    def _run_sum(row, start, length):  # type: ignore[no-untyped-def]
        """float64 sum of row[start:start + length] (any order, IEEE non-finite rules)."""
        one = np.uint64(1)
        i = np.uint64(start)
        end = i + np.uint64(length)
        acc = 0.0
        while i < end:
            acc += np.float64(row[i])
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

    @numba.njit(cache=True, nogil=True, fastmath={"reassoc"})
    def _run_sum4(r0, r1, r2, r3, start, length):  # type: ignore[no-untyped-def]
        """float64 sums of [start:start + length] of four rows in one pass."""
        one = np.uint64(1)
        i = np.uint64(start)
        end = i + np.uint64(length)
        a0 = 0.0
        a1 = 0.0
        a2 = 0.0
        a3 = 0.0
        while i < end:
            a0 += np.float64(r0[i])
            a1 += np.float64(r1[i])
            a2 += np.float64(r2[i])
            a3 += np.float64(r3[i])
            i += one
        return a0, a1, a2, a3

    @_jit
    def _float_sums(x, starts, lengths, region, sums, nans):  # type: ignore[no-untyped-def]
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
                a0, a1, a2, a3 = _run_sum4(r0, r1, r2, r3, s, n)
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
                acc = _run_sum(row, starts[r], lengths[r])
                if acc != acc:
                    acc, c = _nan_run_sum(row, starts[r], lengths[r])
                    nans[f, region[r]] += c
                sums[f, region[r]] += acc
            f += 1

    _INT_FUNCS = {"u32": _int_sums_u32, "i32": _int_sums_i32, "i64": _int_sums_i64}

    @_jit
    def _minmax_int(x, starts, lengths, region, mins, maxs):  # type: ignore[no-untyped-def]
        """min and max per region of integer frames, compared in their own type (LLVM
        vectorizes it); ``mins``/``maxs`` start as NaN. Runs are never empty."""
        one = np.uint64(1)
        for f in range(x.shape[0]):
            row = x[f]
            for r in range(starts.size):
                i = np.uint64(starts[r])
                end = i + np.uint64(lengths[r])
                lo = row[i]
                hi = row[i]
                while i < end:
                    v = row[i]
                    lo = min(lo, v)
                    hi = max(hi, v)
                    i += one
                k = region[r]
                a = np.float64(lo)  # exact: at most 32 bits
                b = np.float64(hi)
                if not mins[f, k] <= a:  # NaN (nothing yet) or larger
                    mins[f, k] = a
                if not maxs[f, k] >= b:
                    maxs[f, k] = b

    @_jit
    def _minmax_float(x, starts, lengths, region, mins, maxs):  # type: ignore[no-untyped-def]
        """NaN-skipping min and max per region of float frames; ``mins``/``maxs`` start
        as NaN. Four independent accumulators per run (a compare chain per pixel would
        wait on the previous one)."""
        one = np.uint64(1)
        two = np.uint64(2)
        three = np.uint64(3)
        four = np.uint64(4)
        inf = np.inf
        for f in range(x.shape[0]):
            row = x[f]
            for r in range(starts.size):
                i = np.uint64(starts[r])
                end = i + np.uint64(lengths[r])
                l0 = l1 = l2 = l3 = inf
                h0 = h1 = h2 = h3 = -inf
                while i + four <= end:
                    v0 = np.float64(row[i])
                    v1 = np.float64(row[i + one])
                    v2 = np.float64(row[i + two])
                    v3 = np.float64(row[i + three])
                    # A comparison with NaN is False: NaN pixels are skipped.
                    l0 = v0 if v0 < l0 else l0
                    l1 = v1 if v1 < l1 else l1
                    l2 = v2 if v2 < l2 else l2
                    l3 = v3 if v3 < l3 else l3
                    h0 = v0 if v0 > h0 else h0
                    h1 = v1 if v1 > h1 else h1
                    h2 = v2 if v2 > h2 else h2
                    h3 = v3 if v3 > h3 else h3
                    i += four
                while i < end:
                    v0 = np.float64(row[i])
                    l0 = v0 if v0 < l0 else l0
                    h0 = v0 if v0 > h0 else h0
                    i += one
                lo = min(min(l0, l1), min(l2, l3))
                hi = max(max(h0, h1), max(h2, h3))
                if lo == inf and hi == -inf:
                    continue  # only NaN (+inf raises hi, -inf lowers lo)
                k = region[r]
                if not mins[f, k] <= lo:
                    mins[f, k] = lo
                if not maxs[f, k] >= hi:
                    maxs[f, k] = hi

    @numba.njit(cache=True, nogil=True, fastmath={"reassoc"})
    def _ssd(x, starts, lengths, region, mean, out):  # type: ignore[no-untyped-def]
        """sum((x - mean)**2) per region in float64; NaN and inf pixels add nothing."""
        one = np.uint64(1)
        inf = np.inf
        for f in range(x.shape[0]):
            row = x[f]
            for r in range(starts.size):
                k = region[r]
                m = mean[f, k]
                i = np.uint64(starts[r])
                end = i + np.uint64(lengths[r])
                acc = 0.0
                while i < end:
                    d = np.float64(row[i]) - m
                    t = d * d
                    acc += t if t < inf else 0.0  # NaN < inf is False too
                    i += one
                out[f, k] += acc


def usable(frames: np.ndarray) -> bool:
    """Whether ``region_sums`` reads these frames directly (C-contiguous, native order)."""
    return AVAILABLE and frames.flags.c_contiguous and frames.dtype.isnative


def region_sums(
    frames: np.ndarray,
    runs: tuple[np.ndarray, np.ndarray, np.ndarray],
    n_regions: int,
    kind: tuple[str, int],
) -> tuple[np.ndarray, np.ndarray]:
    """(sums, NaN counts) of (B, H, W) frames: int64 sums for integers, else float64."""
    if not usable(frames):
        raise ValueError("region_sums needs numba and C-contiguous native-order frames")
    x = frames.reshape(frames.shape[0], -1)
    starts, lengths, region = runs
    nans = np.zeros((x.shape[0], n_regions), dtype=np.int64)
    if kind[0] == "f":
        sums = np.zeros((x.shape[0], n_regions), dtype=np.float64)
        _float_sums(x, starts, lengths, region, sums, nans)
        return sums, nans
    out = np.zeros((x.shape[0], n_regions), dtype=np.int64)
    _INT_FUNCS[_INT_ACC[kind]](x, starts, lengths, region, out)
    return out, nans


def region_minmax(
    frames: np.ndarray, runs: tuple[np.ndarray, np.ndarray, np.ndarray], n_regions: int
) -> tuple[np.ndarray, np.ndarray]:
    """(min, max) float64 (B, K) of (B, H, W) frames, NaN pixels skipped; NaN where a
    region has no pixel that is not NaN."""
    if not usable(frames):
        raise ValueError("region_minmax needs numba and C-contiguous native-order frames")
    x = frames.reshape(frames.shape[0], -1)
    mins = np.full((x.shape[0], n_regions), np.nan)
    maxs = np.full((x.shape[0], n_regions), np.nan)
    (_minmax_float if frames.dtype.kind == "f" else _minmax_int)(x, *runs, mins, maxs)
    return mins, maxs


def region_ssd(
    frames: np.ndarray,
    runs: tuple[np.ndarray, np.ndarray, np.ndarray],
    mean: np.ndarray,
) -> np.ndarray:
    """Sum of squared deviations from ``mean`` (B, K) per region, float64 (B, K).

    NaN pixels are skipped; an infinite pixel adds nothing either (its region's sum is
    not finite, so its std is NaN whatever this says).
    """
    if not usable(frames):
        raise ValueError("region_ssd needs numba and C-contiguous native-order frames")
    x = frames.reshape(frames.shape[0], -1)
    mean = np.ascontiguousarray(mean, dtype=np.float64)
    out = np.zeros(mean.shape)
    _ssd(x, *runs, mean, out)
    return out
