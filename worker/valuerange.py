"""Per-frame value-range masking and region padding for a job's blocks (numpy only).

``--valid-range LO:HI`` (or an Eiger master's saturation value) is stored in the
manifest as ``options["valid_range"] = [lo, hi]`` (None for an open end). Pixels
outside [lo, hi] are excluded frame by frame like NaN: the block is copied to float64
with those pixels set to NaN, and the reducer skips NaN and leaves them out of
``count``. That copy is the opt-in slow path; float64 holds every value of the
supported integer dtypes exactly, and integer sums stay exact below 2**53.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from framestats.messages import JobSpec

#: Statistics of a region with no pixel (matches the reducer's convention).
EMPTY = {"sum": 0.0, "count": 0.0}


class ValueRange:
    """Turns blocks into float64 with out-of-range pixels set to NaN, in reused buffers."""

    def __init__(self, lo: float | None, hi: float | None) -> None:
        self.lo = -np.inf if lo is None else float(lo)
        self.hi = np.inf if hi is None else float(hi)
        self._values: np.ndarray | None = None
        self._bad: np.ndarray | None = None

    @classmethod
    def from_spec(cls, spec: JobSpec) -> ValueRange | None:
        """The job's range, or None when it has none or it cannot exclude any value."""
        bounds = (spec.options or {}).get("valid_range")
        if not bounds:
            return None
        lo, hi = bounds
        dtype = np.dtype(spec.dtype)
        if dtype.kind in "ui":
            info = np.iinfo(dtype)
            if (lo is None or lo <= info.min) and (hi is None or hi >= info.max):
                return None
        return cls(lo, hi)

    def apply(self, block: np.ndarray) -> np.ndarray:
        """float64 copy of ``block`` with pixels outside [lo, hi] set to NaN (buffer reused)."""
        if (
            self._values is None
            or self._values.shape[0] < block.shape[0]
            or (self._values.shape[1:] != block.shape[1:])
        ):
            self._values = np.empty(block.shape, dtype=np.float64)
            self._bad = np.empty(block.shape, dtype=bool)
        assert self._bad is not None
        values = self._values[: block.shape[0]]
        bad = self._bad[: block.shape[0]]
        np.copyto(values, block, casting="unsafe")
        if self.lo > -np.inf:
            np.less(values, self.lo, out=bad)
            values[bad] = np.nan
        if self.hi < np.inf:
            np.greater(values, self.hi, out=bad)
            values[bad] = np.nan
        return values

    def close(self) -> None:
        self._values = None
        self._bad = None


def fit_regions(values: dict[str, np.ndarray], n_regions: int) -> dict[str, Any]:
    """Pad results to the job's K columns.

    The reducer counts regions up to the largest label left in the mask; when bad
    pixels took out every pixel of the top regions, those columns are empty regions.
    """
    out: dict[str, Any] = {}
    for stat, v in values.items():
        if v.shape[1] < n_regions:
            pad = np.full((v.shape[0], n_regions - v.shape[1]), EMPTY.get(stat, np.nan))
            v = np.concatenate([v, pad], axis=1)
        out[stat] = v
    return out
