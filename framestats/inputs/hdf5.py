"""Opening and checking HDF5 inputs (h5py only; no torch).

Every failure is an InputError with one line that names the file and the problem.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import h5py
import numpy as np

from ..constants import NEXUS_DATASET
from ..errors import InputError, PathNotAllowed
from .reach import check_reach, open_dataset

T = TypeVar("T")

#: Names for the HDF5 filter ids users meet, for messages.
FILTER_NAMES = {
    1: "gzip",
    2: "shuffle",
    3: "fletcher32",
    4: "szip",
    5: "nbit",
    6: "scaleoffset",
    32000: "lzf",
    32001: "blosc",
    32004: "lz4",
    32008: "bitshuffle",
    32015: "zstd",
    32026: "blosc2",
}


@dataclass(frozen=True)
class DatasetInfo:
    """What `inspect` shows and planning needs about one dataset."""

    file: str
    name: str
    shape: tuple[int, ...]
    dtype: str
    chunks: tuple[int, ...] | None
    filters: tuple[str, ...]

    @property
    def frames_per_chunk(self) -> int:
        """Frames in one HDF5 chunk along axis 0 (1 for contiguous storage)."""
        return int(self.chunks[0]) if self.chunks else 1

    @property
    def frame_bytes(self) -> int:
        return int(np.dtype(self.dtype).itemsize * int(np.prod(self.shape[1:])))

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "name": self.name,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "chunks": list(self.chunks) if self.chunks else None,
            "filters": list(self.filters),
        }


def open_h5(path: str) -> h5py.File:
    """Open ``path`` read-only, turning every failure into one clear InputError."""
    if not os.path.exists(path):
        raise InputError(f"input file not found: {path}")
    if os.path.isdir(path):
        raise InputError(f"input is a folder, not an HDF5 file: {path}")
    if not os.access(path, os.R_OK):
        raise InputError(f"input file is not readable: {path}")
    if not h5py.is_hdf5(path):
        raise InputError(f"input is not an HDF5 file: {path}")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        reason = str(exc).split("(")[0].strip() or type(exc).__name__
        if "truncated" in str(exc):
            reason = "file is truncated"
        raise InputError(f"cannot open HDF5 file {path}: {reason}") from exc


def filter_names(dset: h5py.Dataset) -> tuple[str, ...]:
    """Names of the dataset's compression filters, in pipeline order."""
    plist = dset.id.get_create_plist()
    names = []
    for i in range(plist.get_nfilters()):
        code = plist.get_filter(i)[0]
        names.append(FILTER_NAMES.get(code, f"filter {code}"))
    return tuple(names)


def register_filters() -> bool:
    """Register hdf5plugin's filters (Bitshuffle-LZ4, LZ4, Zstd, Blosc, ...) with HDF5.

    Importing hdf5plugin loads a dozen filter libraries, so the producer does it only
    when a dataset needs a filter HDF5 lacks. Returns whether this call registered them
    (False: they already were).
    """
    if "hdf5plugin" in sys.modules:
        return False
    import hdf5plugin  # noqa: F401

    return True


def read_with_all_filters(read: Callable[[], T]) -> T:
    """``read()``; when it fails before all of hdf5plugin is loaded, load it and read once
    more (a virtual dataset's sources may need a plugin filter its layout does not name).
    The last failure propagates."""
    try:
        return read()
    except Exception:  # h5py raises OSError/RuntimeError/ValueError/KeyError for bad data
        if not register_filters():
            raise
    return read()


def missing_filters(dset: h5py.Dataset) -> list[str]:
    """Filters the dataset needs that this HDF5 library cannot decode (after hdf5plugin)."""
    plist = dset.id.get_create_plist()
    missing = []
    for i in range(plist.get_nfilters()):
        code, _flags, _values, raw_name = plist.get_filter(i)
        if not h5py.h5z.filter_avail(code) and not (
            register_filters() and h5py.h5z.filter_avail(code)
        ):
            name = FILTER_NAMES.get(code) or raw_name.decode(errors="replace") or "unknown"
            missing.append(f"{name} (HDF5 filter id {code})")
    return missing


def describe(dset: h5py.Dataset, file: str) -> DatasetInfo:
    return DatasetInfo(
        file=file,
        name=dset.name,
        shape=tuple(int(n) for n in dset.shape),
        dtype=dset.dtype.str,
        chunks=tuple(int(n) for n in dset.chunks) if dset.chunks else None,
        filters=filter_names(dset),
    )


def list_datasets(f: h5py.File) -> list[h5py.Dataset]:
    """Every dataset in the file (external links that do not resolve are skipped)."""
    found: list[h5py.Dataset] = []

    def visit(_name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset):
            found.append(obj)

    f.visititems(visit)
    return found


def choose_dataset(
    f: h5py.File, path: str, name: str | None, roots: tuple[str, ...] = ()
) -> h5py.Dataset:
    """The dataset named by ``--dataset``, else /entry/data/data, else the only 3-D one;
    with ``roots``, every file it reaches is checked before it is opened. Opened as the
    workers open it (``reach.open_dataset``)."""
    if name:
        if roots:
            check_reach(path, name, roots)
        obj = f.get(name)
        if obj is None:
            raise InputError(f"dataset {name} not found in {path}")
        if not isinstance(obj, h5py.Dataset):
            raise InputError(f"{name} in {path} is a group, not a dataset")
        del obj  # HDF5 opens a dataset with one set of access properties at a time
        chosen = name
    elif _reachable(path, NEXUS_DATASET, roots) and isinstance(f.get(NEXUS_DATASET), h5py.Dataset):
        chosen = NEXUS_DATASET
    else:
        cubes = [d.name for d in list_datasets(f) if d.ndim == 3]
        if not cubes:
            raise InputError(f"no 3-D dataset in {path}; name one with --dataset")
        if len(cubes) > 1:
            names = ", ".join(cubes)
            raise InputError(f"several 3-D datasets in {path} ({names}); choose one with --dataset")
        chosen = cubes[0]
        if roots:
            check_reach(path, chosen, roots)
    return open_dataset(f, chosen)


def _reachable(path: str, name: str, roots: tuple[str, ...]) -> bool:
    """Whether ``name`` can be read within ``roots`` (PathNotAllowed when it leads out;
    False when it is missing or dangles)."""
    if not roots:
        return True
    try:
        check_reach(path, name, roots)
    except PathNotAllowed:
        raise
    except InputError:
        return False
    return True


def check_frames_dataset(dset: h5py.Dataset, path: str) -> None:
    """A (N, H, W) numeric dataset with N >= 1 whose filters are available and whose first frame reads."""
    if dset.ndim != 3:
        raise InputError(
            f"dataset {dset.name} in {path} is {dset.ndim}-D {tuple(dset.shape)}; "
            "expected 3-D (frames, height, width)"
        )
    if dset.shape[0] < 1:
        raise InputError(f"dataset {dset.name} in {path} has zero frames")
    if dset.shape[1] < 1 or dset.shape[2] < 1:
        raise InputError(f"dataset {dset.name} in {path} has empty frames {tuple(dset.shape)}")
    kind = dset.dtype.kind
    if kind not in "uif" or dset.dtype.itemsize > 8 or (kind in "ui" and dset.dtype.itemsize > 4):
        raise InputError(
            f"dataset {dset.name} in {path} has dtype {dset.dtype}; supported: "
            "uint8/16/32, int8/16/32, float32/64"
        )
    missing = missing_filters(dset)
    if missing:
        raise InputError(
            f"dataset {dset.name} in {path} needs a compression filter that is not available: "
            + ", ".join(missing)
        )
    try:
        read_with_all_filters(lambda: dset[0:1])
    except Exception as exc:
        raise InputError(f"cannot read frame 0 of {dset.name} in {path}: {exc}") from exc
