"""A job's output file as numpy arrays, an xarray Dataset or pandas DataFrames.

Reads ``/results/<stat>`` (float64, frames x regions), ``/results/pixel_count`` and
``/results/frame_index`` and the root attributes: the paths every output has had, in
the flat layout and in the NeXus one (whose NXdata groups link to the same datasets).
pandas and xarray are imported only by ``to_pandas`` and ``to_xarray``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .constants import STATS
from .errors import InputError, StatisticNotFound

if TYPE_CHECKING:
    import pandas as pd
    import xarray as xr

#: Datasets of ``/results`` that are not statistics.
NOT_STATS = ("pixel_count", "frame_index")
#: Root attributes that hold JSON (parsed by ``provenance``).
JSON_ATTRS = ("input_files", "masks", "options", "chunking")


def _plain(value: Any) -> Any:
    """An HDF5 attribute value as plain Python (str, int, float, list)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    return value


def _needs(module: str, extra: str, what: str) -> Any:
    """``import module``, or an ImportError saying how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"{what} needs {module}: pip install {module} (or framestats[{extra}])"
        ) from exc


class Result:
    """A job's output: per-frame statistics per region, with provenance.

    ``res["mean"]`` is a float64 array (frames, regions); ``res.frame_index`` the
    source frame number of each row; ``res.pixel_count`` the pixels of each region
    (regions are numbered from 1: column ``k`` is region ``k + 1``). Statistics are
    read on first use and kept.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        import h5py

        self.path = os.fspath(path)
        if not os.path.exists(self.path):
            raise InputError(f"output file not found: {self.path}")
        try:
            with h5py.File(self.path, "r") as f:
                results = f.get("results")
                if not isinstance(results, h5py.Group):
                    raise InputError(f"{self.path} has no /results group (not a framestats output)")
                names = [k for k in results if k not in NOT_STATS]
                listed = _plain(results.attrs.get("statistics", ""))
                order = [s for s in str(listed).split(",") if s in names]
                known = [s for s in STATS if s in names and s not in order]
                self.stats: tuple[str, ...] = tuple(
                    order + known + sorted(set(names) - set(order) - set(known))
                )
                first = results[self.stats[0]] if self.stats else None
                n, k = (int(first.shape[0]), int(first.shape[1])) if first is not None else (0, 0)
                self.frame_index: np.ndarray = (
                    np.asarray(results["frame_index"][()], dtype=np.int64)
                    if "frame_index" in results
                    else np.arange(n, dtype=np.int64)
                )
                self.pixel_count: np.ndarray = (
                    np.asarray(results["pixel_count"][()], dtype=np.int64)
                    if "pixel_count" in results
                    else np.zeros(k, dtype=np.int64)
                )
                #: Root attributes (provenance) as plain Python values.
                self.attrs: dict[str, Any] = {key: _plain(v) for key, v in f.attrs.items()}
        except OSError as exc:
            raise InputError(f"cannot read {self.path}: {exc}") from exc
        self._cache: dict[str, np.ndarray] = {}

    # --- shape and provenance ---------------------------------------------------------

    @property
    def n_frames(self) -> int:
        return int(self.frame_index.shape[0])

    @property
    def n_regions(self) -> int:
        return int(self.pixel_count.shape[0])

    @property
    def regions(self) -> np.ndarray:
        """Region numbers 1..K, one per column."""
        return np.arange(1, self.n_regions + 1, dtype=np.int64)

    @property
    def job_id(self) -> str | None:
        value = self.attrs.get("job_id")
        return None if value is None else str(value)

    @property
    def provenance(self) -> dict[str, Any]:
        """The root attributes, with the JSON ones (input files, masks, options) parsed."""
        out = dict(self.attrs)
        for key in JSON_ATTRS:
            if isinstance(out.get(key), str):
                try:
                    out[key] = json.loads(out[key])
                except ValueError:
                    pass
        return out

    def __repr__(self) -> str:
        return (
            f"<Result {self.path}: {self.n_frames} frames x {self.n_regions} regions, "
            f"{', '.join(self.stats)}>"
        )

    # --- statistics -------------------------------------------------------------------

    def __contains__(self, stat: object) -> bool:
        return stat in self.stats

    def __iter__(self) -> Iterator[str]:
        return iter(self.stats)

    def keys(self) -> tuple[str, ...]:
        return self.stats

    def __getitem__(self, stat: str) -> np.ndarray:
        """The statistic ``stat``: float64 (frames, regions)."""
        if stat not in self.stats:
            raise StatisticNotFound(
                f"statistic {stat} is not in {self.path}; it has {','.join(self.stats)}"
            )
        if stat not in self._cache:
            import h5py

            try:
                with h5py.File(self.path, "r") as f:
                    values = np.asarray(f["results"][stat][()], dtype=np.float64)
            except OSError as exc:
                raise InputError(f"cannot read {self.path}: {exc}") from exc
            self._cache[stat] = values[:, None] if values.ndim == 1 else values
        return self._cache[stat]

    def default_stat(self) -> str:
        """``mean`` when the file has it, else its first statistic (what a plot shows)."""
        if "mean" in self.stats:
            return "mean"
        if not self.stats:
            raise InputError(f"{self.path} holds no statistic")
        return self.stats[0]

    # --- other libraries --------------------------------------------------------------

    def to_pandas(self, stat: str | Sequence[str] | None = None) -> pd.DataFrame:
        """A DataFrame indexed by frame (``frame_index``).

        One statistic (``to_pandas("mean")``): one column per region, named 1..K. Several
        or all (None): columns (statistic, region).
        """
        pd = _needs("pandas", "pandas", "to_pandas")
        index = pd.Index(self.frame_index, name="frame")
        if isinstance(stat, str):
            columns = pd.Index(self.regions, name="region")
            return pd.DataFrame(self[stat], index=index, columns=columns)
        chosen = list(self.stats if stat is None else stat)
        frames = {s: pd.DataFrame(self[s], index=index, columns=self.regions) for s in chosen}
        out = pd.concat(frames, axis=1, names=["stat", "region"])
        return out

    def to_xarray(self) -> xr.Dataset:
        """An xarray Dataset: one variable per statistic on dims (frame, region), with
        coordinates frame (``frame_index``), region (1..K) and pixel_count, and the
        provenance as attributes."""
        xr = _needs("xarray", "xarray", "to_xarray")
        attrs = {k: v for k, v in self.attrs.items() if isinstance(v, str | int | float)}
        return xr.Dataset(
            {s: (("frame", "region"), self[s]) for s in self.stats},
            coords={
                "frame": self.frame_index,
                "region": self.regions,
                "pixel_count": ("region", self.pixel_count),
            },
            attrs=attrs,
        )


def open(path: str | os.PathLike[str]) -> Result:
    """The output file at ``path`` (``Result``)."""
    return Result(path)
