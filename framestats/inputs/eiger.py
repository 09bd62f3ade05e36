"""Dectris Eiger / NeXus master files and virtual datasets (h5py only; no torch).

An Eiger master file ``NAME_master.h5`` holds no frames itself: ``/entry/data/data_000001``,
``data_000002``, ... are external links to data files ``NAME_data_00000N.h5``, each with
an (n_i, H, W) dataset (Bitshuffle-LZ4 in practice). The detector's metadata lives under
``/entry/instrument/detector/detectorSpecific``: the ``pixel_mask`` (NeXus convention:
a pixel is bad where ``pixel_mask & 0xFFFF`` is non-zero; the upper 16 bits only tag
properties) and the count cutoff above which values are invalid.

Here links are resolved by hand (relative to the master's folder) rather than left to
HDF5, so that a missing data file is an error naming it, and the workers read each data
file directly (DATA_ROOT then applies to the real file).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

import h5py
import numpy as np

from ..errors import InputError

#: Group holding the frames (a dataset ``data`` or links ``data_NNNNNN``).
DATA_GROUP = "/entry/data"
#: Group whose presence marks the Dectris (Eiger) layout.
DETECTOR_SPECIFIC = "/entry/instrument/detector/detectorSpecific"
#: The detector's own bad-pixel mask in an Eiger master file.
PIXEL_MASK = DETECTOR_SPECIFIC + "/pixel_mask"
#: Where the value above which counts are invalid may be stored, in order of preference.
SATURATION_PATHS = (
    DETECTOR_SPECIFIC + "/countrate_correction_count_cutoff",
    DETECTOR_SPECIFIC + "/saturation_value",
    "/entry/instrument/detector/saturation_value",
)

_DATA_LINK = re.compile(r"^data_(\d+)$")


@dataclass(frozen=True)
class DataLink:
    """One ``/entry/data/data_NNNNNN`` entry of a master file, resolved to a file."""

    name: str
    number: int
    #: The file holding the frames (absolute), or the master itself for an internal link.
    file: str
    #: The dataset path inside ``file``.
    dataset: str
    external: bool


@dataclass(frozen=True)
class DetectorMeta:
    """What an Eiger master file says about its detector."""

    master: str
    #: Path of the pixel mask dataset in ``master``, or None when it has none.
    pixel_mask: str | None
    #: Largest valid count, or None when the file does not say.
    saturation: float | None
    #: Dataset path the saturation value was read from.
    saturation_from: str | None


def is_eiger(f: h5py.File) -> bool:
    """True for a file in the Dectris layout (it has the detectorSpecific group)."""
    return isinstance(f.get(DETECTOR_SPECIFIC), h5py.Group)


def data_links(f: h5py.File, path: str) -> list[DataLink]:
    """The ``data_NNNNNN`` entries of /entry/data in link order; empty when there are none.

    External links are resolved relative to the master's folder (absolute names are
    kept); nothing is opened here.
    """
    group = f.get(DATA_GROUP)
    if not isinstance(group, h5py.Group):
        return []
    folder = os.path.dirname(os.path.abspath(path))
    links: list[DataLink] = []
    for name in group:
        match = _DATA_LINK.match(name)
        if not match:
            continue
        link = group.get(name, getlink=True)
        external = isinstance(link, h5py.ExternalLink)
        if external:
            file, dataset = os.path.normpath(os.path.join(folder, link.filename)), link.path
        else:
            obj = group.get(name)
            if not isinstance(obj, h5py.Dataset):
                raise InputError(
                    f"{DATA_GROUP}/{name} in {path} is not a dataset or an external link"
                )
            file, dataset = os.path.abspath(path), obj.name
        links.append(DataLink(name, int(match.group(1)), file, dataset, external))
    links.sort(key=lambda link: (link.number, link.name))
    return links


def _scalar(obj: Any) -> float | None:
    if not isinstance(obj, h5py.Dataset) or obj.size != 1 or obj.dtype.kind not in "uif":
        return None
    value = float(np.asarray(obj[()]).reshape(-1)[0])
    if not np.isfinite(value) or value <= 0:
        return None
    return int(value) if value.is_integer() else value


def detector_meta(f: h5py.File, path: str) -> DetectorMeta | None:
    """Pixel mask location and saturation of an Eiger master file; None for other files."""
    if not is_eiger(f):
        return None
    mask = f.get(PIXEL_MASK)
    saturation, source = None, None
    for candidate in SATURATION_PATHS:
        value = _scalar(f.get(candidate))
        if value is not None:
            saturation, source = value, candidate
            break
    return DetectorMeta(
        master=os.path.abspath(path),
        pixel_mask=PIXEL_MASK if isinstance(mask, h5py.Dataset) else None,
        saturation=saturation,
        saturation_from=source,
    )


def virtual_source_files(dset: h5py.Dataset, path: str) -> list[tuple[str, str]]:
    """(file, dataset) of every source of a virtual dataset, resolved like HDF5 does.

    HDF5 reads a missing source as fill values without a word; so every source file
    must exist, be HDF5 and hold its dataset, else InputError naming it.
    """
    folder = os.path.dirname(os.path.abspath(path))
    seen: dict[tuple[str, str], None] = {}
    for vmap in dset.virtual_sources():
        name = vmap.file_name
        if name == ".":
            target = os.path.abspath(path)
        elif os.path.isabs(name):
            target = name
        else:
            # HDF5 looks beside the virtual file first, then in the working folder.
            beside = os.path.join(folder, name)
            target = beside if os.path.exists(beside) or not os.path.exists(name) else name
            target = os.path.abspath(target)
        seen[(os.path.normpath(target), vmap.dset_name)] = None
    sources = list(seen)
    for target, source_dset in sources:
        where = f"source of virtual dataset {dset.name} in {path}"
        if not os.path.exists(target):
            raise InputError(f"{where} is missing: {target}")
        if not os.access(target, os.R_OK):
            raise InputError(f"{where} is not readable: {target}")
        if target == os.path.abspath(path):
            obj = dset.file.get(source_dset)
        else:
            if not h5py.is_hdf5(target):
                raise InputError(f"{where} is not an HDF5 file: {target}")
            try:
                with h5py.File(target, "r") as src:
                    obj = src.get(source_dset)
                    is_dataset = isinstance(obj, h5py.Dataset)
            except OSError as exc:
                raise InputError(f"{where} cannot be opened: {target} ({exc})") from exc
            if not is_dataset:
                raise InputError(f"{where} has no dataset {source_dset}: {target}")
            continue
        if not isinstance(obj, h5py.Dataset):
            raise InputError(f"{where} has no dataset {source_dset}: {target}")
    return sources
