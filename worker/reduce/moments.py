"""From one-pass accumulators to sum, mean, count, min, max and std.

Every engine reads each pixel once and keeps, per (frame, region), a few sums from which
all statistics follow. The CPU loops (``cpu_runs``, ``cpu_scatter``) fill one array
``acc`` of shape ``(5, B, K)`` (``new_accumulators``):

=====  ===============================  =====================================
field  integers (int64)                  floats (float64)
=====  ===============================  =====================================
0      sum                               sum of d = x - shift
1      sum of squares, low 64 bits       sum of d * d
2      sum of squares, high bits         count of non-NaN pixels
3      min                               min (NaN skipped)
4      max                               max (NaN skipped)
=====  ===============================  =====================================

**Integers are exact.** The int64 sum holds any region of < 2**31 pixels of 32-bit
values. A square of an 8/16-bit value is < 2**32, so a region's sum of squares fits
int64 (field 2 stays 0); a square of a 32-bit value reaches 2**64, so for (u)int32 the
squares are summed as 128-bit numbers (field 1 wraps modulo 2**64, field 2 counts the
carries). The variance then follows exactly (``integer_m2``): with q = floor(S / n) and
r = S - q n, the sum of squared deviations is M2 = T - r**2 / n where
T = sum((x - q)**2) = Q - q**2 n - 2 q r is an integer. Because min <= q <= max,
T <= n (max - min)**2, so T is computed in wrapping int64 arithmetic (exact modulo 2**64
and therefore exact) whenever n (max - min)**2 < 2**62; only regions beyond that (32-bit
data spanning more than ~2**31 / sqrt(n)) are widened to Python integers. M2 is either 0
or at least 1/2 (n M2 = sum over pairs (x_i - x_j)**2 >= n - 1), so the one rounding
of the final float64 subtraction costs a few ulps at most.

**Floats, one pass, numerically sound.** Accumulating x and x**2 loses everything when
the mean is large against the spread (1e6 + noise of 1e-3: x**2 ~ 1e12, variance
1e-6). So each (frame, region) is shifted by one of its own pixels (``shift_values``):
with d = x - c, M2 = sum(d**2) - sum(d)**2 / n, whose relative error is about
eps * sum(d**2) / M2 = eps * (1 + (mean - c)**2 / var): small while the shift lies within
a few standard deviations of the mean, as a pixel of the region does. A region where it
does not (a shift pixel far out in the tail; ``ILL_CONDITIONED``) is flagged and its
statistics are recomputed exactly, two-pass in float64, by the engine. The sum is
sum(d) + n c.
"""

from __future__ import annotations

import numba
import numpy as np

#: A float region whose sum(d**2) exceeds this many times its M2 is recomputed two-pass
#: (its one-pass relative error would exceed ~16 * sqrt(n) * 2**-53).
ILL_CONDITIONED = 16.0
#: n (max - min)**2 below this: the integer M2 is computed in int64 (see module doc).
_INT64_SAFE = float(2**62)


def new_accumulators(n_frames: int, n_regions: int, is_float: bool) -> np.ndarray:
    """Empty accumulators (5, B, K): zero sums and counts, min/max at their identities."""
    if is_float:
        acc = np.zeros((5, n_frames, n_regions))
        acc[3] = np.inf
        acc[4] = -np.inf
        return acc
    acc = np.zeros((5, n_frames, n_regions), dtype=np.int64)
    acc[3] = np.iinfo(np.int64).max
    acc[4] = np.iinfo(np.int64).min
    return acc


def shift_values(x: np.ndarray, first_pixel: np.ndarray) -> np.ndarray:
    """(B, K) float shifts: each region's first pixel in each frame, 0 where not finite."""
    shift = x[:, first_pixel].astype(np.float64)
    shift[~np.isfinite(shift)] = 0.0
    return shift


#: Order of the rows of ``finish_integers``/``finish_floats`` output.
ROWS = ("sum", "mean", "count", "min", "max", "std")


@numba.njit(cache=True, nogil=True)
def _divmod(a, n, inv):  # type: ignore[no-untyped-def]
    """floor(a / n) and a - n * floor(a / n) for int64 a and n > 0 (``inv`` = 1 / n)
    without an integer division: a float quotient, corrected where it rounded."""
    q = np.int64(np.floor(np.float64(a) * inv))
    r = a - q * n
    if r < 0 or r >= n:  # rare: |a| beyond 2**53, or inv rounded across an integer
        step = np.int64(np.floor(np.float64(r) * inv))
        q += step
        r -= step * n
        while r < 0:
            q -= 1
            r += n
        while r >= n:
            q += 1
            r -= n
    return q, r


@numba.njit(cache=True, nogil=True)
def _finish_integers(acc, counts, out, widen):  # type: ignore[no-untyped-def]
    nan = np.nan
    for k in range(acc.shape[2]):
        n = counts[k]
        if n == 0:
            for f in range(acc.shape[1]):
                out[0, f, k] = 0.0
                out[2, f, k] = 0.0
                for row in (1, 3, 4, 5):
                    out[row, f, k] = nan
    for f in range(acc.shape[1]):
        for k in range(acc.shape[2]):
            n = counts[k]
            if n == 0:
                continue
            inv = 1.0 / n
            total = acc[0, f, k]
            lo = acc[3, f, k]
            hi = acc[4, f, k]
            out[0, f, k] = np.float64(total)
            out[1, f, k] = np.float64(total) / n  # as numpy: the int64 sum over n
            out[2, f, k] = n
            out[3, f, k] = np.float64(lo)
            out[4, f, k] = np.float64(hi)
            span = np.float64(hi) - np.float64(lo)
            if np.float64(n) * span * span >= _INT64_SAFE:
                widen[f, k] = True
                continue
            q, r = _divmod(total, n, inv)
            t = acc[1, f, k] - q * q * n - 2 * q * r  # wraps; exact (module doc)
            u, v = _divmod(r * r, n, inv)
            m2 = np.float64(t - u) - np.float64(v) * inv
            out[5, f, k] = np.sqrt(m2 * inv)


@numba.njit(cache=True, nogil=True)
def _finish_floats(acc, shift, out, flagged):  # type: ignore[no-untyped-def]
    nan = np.nan
    for f in range(acc.shape[1]):
        for k in range(acc.shape[2]):
            n = acc[2, f, k]
            out[2, f, k] = n
            if n == 0.0:
                out[0, f, k] = 0.0
                for row in (1, 3, 4, 5):
                    out[row, f, k] = nan
                continue
            d = acc[0, f, k]
            q = acc[1, f, k]
            total = d + n * shift[f, k]
            out[0, f, k] = total
            out[1, f, k] = total / n
            out[3, f, k] = acc[3, f, k]
            out[4, f, k] = acc[4, f, k]
            m2 = q - d * d / n
            if q - q == 0.0 and q > ILL_CONDITIONED * m2:  # finite and ill-conditioned
                flagged[f, k] = True
            if total - total == 0.0:  # numpy's nanstd is NaN for a region holding inf
                out[5, f, k] = np.sqrt(max(m2, 0.0) / n)
            else:
                out[5, f, k] = nan


def finish_integers(acc: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """All six statistics (``ROWS``, B, K) from integer accumulators; ``counts`` (K,)."""
    out = np.empty((6, *acc.shape[1:]))
    widen = np.zeros(acc.shape[1:], dtype=np.bool_)
    _finish_integers(acc, counts, out, widen)
    for f, k in zip(*np.nonzero(widen), strict=True):
        n = int(counts[k])
        m2 = _exact_m2(int(acc[0, f, k]), int(acc[1, f, k]) & (2**64 - 1), int(acc[2, f, k]), n)
        out[5, f, k] = (m2 / n) ** 0.5
    return out


def finish_floats(acc: np.ndarray, shift: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All six statistics (``ROWS``, B, K) from float accumulators, and the (B, K) mask of
    ill-conditioned regions whose sum, mean and std the caller must recompute."""
    out = np.empty((6, *acc.shape[1:]))
    flagged = np.zeros(acc.shape[1:], dtype=np.bool_)
    _finish_floats(acc, shift, out, flagged)
    return out, flagged


def _exact_m2(total: int, low: int, high: int, n: int) -> float:
    """M2 = (n Q - S**2) / n in Python integers; the division rounds once."""
    squares = (high << 64) | low
    return (n * squares - total * total) / n


def finish(
    stats: tuple[str, ...],
    sums: np.ndarray,
    counts: np.ndarray,
    mins: np.ndarray | None = None,
    maxs: np.ndarray | None = None,
    m2: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """The statistics as float64 (B, K); mean/min/max/std are NaN where nothing was
    counted, and std also where the sum is not finite (numpy's nanstd: inf - inf)."""
    counts = np.broadcast_to(counts, sums.shape)
    empty = counts == 0
    safe = np.where(empty, 1, counts)
    out: dict[str, np.ndarray] = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        for s in stats:
            if s == "sum":
                out[s] = np.asarray(sums, dtype=np.float64)
            elif s == "count":
                out[s] = counts.astype(np.float64)
            elif s == "mean":
                out[s] = np.where(empty, np.nan, sums / safe)
            elif s == "std":
                assert m2 is not None
                bad = empty | ~np.isfinite(sums)
                out[s] = np.where(bad, np.nan, np.sqrt(m2 / safe))
            else:
                values = mins if s == "min" else maxs
                assert values is not None
                out[s] = np.where(empty, np.nan, values.astype(np.float64))
    return out
