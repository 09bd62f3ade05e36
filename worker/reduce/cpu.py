"""The CPU engine: compiled numba loops over the raw frames, in one of a few strategies.

A strategy is a way to visit a mask's pixels, named for what it does:

* ``runs`` (``cpu_runs``): runs of one label, each a contiguous vectorized loop; cost
  per run, so it wins for few, long runs.
* ``scatter`` (``cpu_scatter``): every pixel's value added into its region's
  accumulators; cost per pixel, whatever the number of regions K.
* ``scatter-branchless``: the same, but min and max always stored rather than behind a
  branch (for min/max/std only; faster where regions are small).
* ``scatter-vector`` (``cpu_vector``): the same for min/max/std of 16-bit integers, with
  the 8 frames of a group in one vector (other inputs: as ``scatter``).

Which one a mask gets is measured, not guessed (``choose``): on the first block of each
dtype the candidates run on a few of its frames and the fastest is kept for the
reducer's life, and for later reducers of the same mask in the process. All give the same integers bit for bit; float sums may differ in the
last bits (another summation order). ``strategy=`` forces one.

With only sum/mean/count asked, the loops add up sums and NaN counts; with min, max or
std too, they take all of them in the same single read (``moments``).
"""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import Callable, Mapping

import numba
import numpy as np

from . import cpu_runs, cpu_scatter, cpu_vector, moments

#: The strategies, by name ("scatter-branchless" differs from "scatter" only in how
#: min and max are updated, see ``cpu_scatter.scatter_moments``).
STRATEGIES = ("runs", "scatter", "scatter-branchless", "scatter-vector")
#: Frames of the first block that the strategies are timed on (each, best of ``_ROUNDS``).
_SAMPLE_FRAMES = cpu_scatter.GROUP
_ROUNDS = 2
#: Strategies measured in this process: (mask digest, dtype, all moments) -> name. A
#: worker reduces many jobs of one mask; each new reducer would otherwise pay for the
#: measurement again (a few times its sample per candidate).
_MEASURED: dict[tuple[bytes, np.dtype, bool], str] = {}


def choose(
    candidates: Mapping[str, Callable[[], object]],
    clock: Callable[[], float] = time.thread_time,
    rounds: int = _ROUNDS,
) -> str:
    """The name of the fastest candidate: each is run once untimed (compilation, caches),
    then ``rounds`` times interleaved with the others; the best time counts. The clock
    is this thread's CPU time, which other processes on a shared machine do not inflate."""
    for run in candidates.values():
        run()
    best = dict.fromkeys(candidates, float("inf"))
    for _ in range(rounds):
        for name, run in candidates.items():
            t0 = clock()
            run()
            best[name] = min(best[name], clock() - t0)
    return min(best, key=lambda name: best[name])


class CpuReducer:
    """Reduces native, C-contiguous blocks; see the module doc for the strategies."""

    def __init__(
        self,
        labels: np.ndarray,
        n_regions: int,
        stats: tuple[str, ...],
        strategy: str | None = None,
    ) -> None:
        if strategy is not None and strategy not in STRATEGIES:
            raise ValueError(f"unknown CPU strategy {strategy!r}: use one of {STRATEGIES}")
        if labels.size >= 2**31:
            raise ValueError(f"frames of {labels.size} pixels: the CPU loops take < 2**31")
        self.n_regions = n_regions
        self.stats = stats
        self.all_moments = bool({"min", "max", "std"} & set(stats))
        self.flat = np.ascontiguousarray(labels).ravel()
        self.pixel_count = np.bincount(self.flat, minlength=n_regions + 1)[1:].astype(np.int64)
        #: Forced strategy, else the one measured for each input dtype.
        self.strategy = strategy
        self.chosen: dict[np.dtype, str] = {}
        self._digest = hashlib.blake2b(self.flat.tobytes(), digest_size=16).digest()
        self._runs: cpu_runs.Runs | None = None
        self._labels: np.ndarray | None = None
        self._csr: tuple[np.ndarray, np.ndarray] | None = None
        self._copy: np.ndarray | None = None

    # -- mask layouts, built on first use ------------------------------------------------

    @property
    def runs(self) -> cpu_runs.Runs:
        if self._runs is None:
            self._runs = cpu_runs.plan_runs(self.flat)
        return self._runs

    @property
    def labels(self) -> np.ndarray:
        if self._labels is None:
            self._labels = cpu_scatter.label_table(self.flat, self.n_regions)
        return self._labels

    @property
    def csr(self) -> tuple[np.ndarray, np.ndarray]:
        """Masked pixel indices grouped by region, and each region's start (K + 1)."""
        if self._csr is None:
            masked = np.flatnonzero(self.flat)
            order = masked[np.argsort(self.flat[masked], kind="stable")]
            offsets = np.zeros(self.n_regions + 1, dtype=np.int64)
            np.cumsum(self.pixel_count, out=offsets[1:])
            self._csr = order.astype(np.int64), offsets
        return self._csr

    @property
    def first_pixel(self) -> np.ndarray:
        """(K,) a pixel of each region (any pixel for an empty one): the float shifts."""
        order, offsets = self.csr
        if order.size == 0:
            return np.zeros(self.n_regions, dtype=np.int64)
        return order[np.minimum(offsets[:-1], order.size - 1)]

    # -- reduction -----------------------------------------------------------------------

    def native(self, frames: np.ndarray) -> np.ndarray:
        """``frames`` as ``(B, pixels)``, C-contiguous in native byte order (big-endian
        or strided views are copied into one reused buffer)."""
        if not (frames.flags.c_contiguous and frames.dtype.isnative):
            dtype = frames.dtype.newbyteorder("=")
            nbytes = frames.size * dtype.itemsize
            if self._copy is None or self._copy.nbytes < nbytes:
                self._copy = np.empty(nbytes, dtype=np.uint8)
            out = self._copy[:nbytes].view(dtype).reshape(frames.shape)
            np.copyto(out, frames, casting="equiv")  # byte-swaps
            frames = out
        return frames.reshape(frames.shape[0], -1)

    def reduce(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        x = self.native(frames)
        strategy = self.strategy or self.chosen.get(x.dtype)
        if strategy is None:
            key = (self._digest, x.dtype, self.all_moments)
            strategy = _MEASURED.get(key)
            if strategy is None:
                sample = x[:_SAMPLE_FRAMES]
                candidates = self._candidates(x.dtype)
                runs = {s: functools.partial(self.run, s, sample) for s in candidates}
                strategy = _MEASURED[key] = choose(runs)
            self.chosen[x.dtype] = strategy
        return self.run(strategy, x)

    def _candidates(self, dtype: np.dtype) -> tuple[str, ...]:
        """The strategies worth measuring for this dtype and these statistics."""
        if not self.all_moments:
            return ("runs", "scatter")
        if cpu_vector.supports(dtype):
            return ("runs", "scatter-vector")  # the scalar scatter loops are 2-3x slower
        return ("runs", "scatter", "scatter-branchless")

    def run(self, strategy: str, x: np.ndarray) -> dict[str, np.ndarray]:
        """The statistics of frames ``x`` (B, pixels) with one strategy."""
        if not self.all_moments:
            with np.errstate(invalid="ignore", over="ignore"):
                sums, nans = self._sums(strategy, x)
            return moments.finish(self.stats, sums.astype(np.float64), self.pixel_count - nans)
        is_float = x.dtype.kind == "f"
        acc = moments.new_accumulators(x.shape[0], self.n_regions, is_float)
        shift = moments.shift_values(x, self.first_pixel) if is_float else None
        self._moments(strategy, x, acc, shift)
        if is_float:
            assert shift is not None
            rows, flagged = moments.finish_floats(acc, shift)
            if flagged.any():
                self._two_pass(x, flagged, rows)
        else:
            rows = moments.finish_integers(acc, self.pixel_count)
        return {s: rows[moments.ROWS.index(s)] for s in self.stats}

    def _sums(self, strategy: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if strategy == "runs":
            return cpu_runs.run_sums(x, self.runs, self.n_regions)
        padded, b = _pad(x, cpu_scatter.GROUP)
        sums, nans = cpu_scatter.scatter_sums(padded, self.labels, self.n_regions)
        return sums[:b], nans[:b]

    def _moments(
        self, strategy: str, x: np.ndarray, acc: np.ndarray, shift: np.ndarray | None
    ) -> None:
        if strategy == "runs":
            cpu_runs.run_moments(x, self.runs, acc, shift)
            return
        padded, b = _pad(x, cpu_scatter.GROUP)
        part = acc
        if padded is not x:
            part = moments.new_accumulators(padded.shape[0], self.n_regions, x.dtype.kind == "f")
            if shift is not None:
                shift = np.concatenate([shift, np.zeros((padded.shape[0] - b, shift.shape[1]))])
        if strategy == "scatter-vector" and cpu_vector.supports(x.dtype):
            cpu_vector.scatter_moments(padded, self.labels, part)
        else:
            branchless = strategy == "scatter-branchless"
            cpu_scatter.scatter_moments(padded, self.labels, part, shift, branchless)
        if part is not acc:
            acc[...] = part[:, :b]

    def _two_pass(self, x: np.ndarray, flagged: np.ndarray, rows: np.ndarray) -> None:
        """Exact two-pass float64 sum, mean and std of the flagged (frame, region) pairs."""
        frames, regions = np.nonzero(flagged)
        order, offsets = self.csr
        out = np.empty((2, frames.size))
        _two_pass(x, order, offsets, frames, regions, out)
        counts = rows[2, frames, regions]
        rows[0, frames, regions] = out[0]
        rows[1, frames, regions] = out[0] / counts
        rows[5, frames, regions] = np.sqrt(out[1] / counts)


def _pad(x: np.ndarray, group: int) -> tuple[np.ndarray, int]:
    """``x`` with zero frames appended up to a multiple of ``group``, and the real count."""
    b = x.shape[0]
    if b % group == 0:
        return x, b
    padded = np.zeros((b + group - b % group, x.shape[1]), dtype=x.dtype)
    padded[:b] = x
    return padded, b


@numba.njit(cache=True, nogil=True)
def _two_pass(x, order, offsets, frames, regions, out):  # type: ignore[no-untyped-def]
    for i in range(frames.size):
        row = x[frames[i]]
        k = regions[i]
        total = 0.0
        n = 0
        for j in range(offsets[k], offsets[k + 1]):
            v = np.float64(row[order[j]])
            if v == v:
                total += v
                n += 1
        mean = total / max(n, 1)
        m2 = 0.0
        for j in range(offsets[k], offsets[k + 1]):
            v = np.float64(row[order[j]])
            if v == v:
                m2 += (v - mean) * (v - mean)
        out[0, i] = total
        out[1, i] = m2
