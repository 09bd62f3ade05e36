"""The output file's layout: the flat ``/results`` datasets, also a NeXus file.

Readers of the flat layout find what they always did: ``/results/<stat>`` (float64,
frames x regions), ``/results/pixel_count``, ``/results/frame_index`` and the
provenance as root attributes. NeXus viewers (silx view, h5web, NeXpy) follow the
``default`` chain from the root::

    /                   NXroot   @default=entry
    /entry              NXentry  @default=<stat>  title, start_time, end_time
    /entry/process      NXprocess  program, version, date, configuration (NXnote, JSON)
    /entry/<stat>       NXdata   @signal=<stat> @axes=[frame_index, region]
      <stat>            hard link to /results/<stat>  @interpretation=spectrum
      frame_index       hard link to /results/frame_index
      pixel_count       hard link to /results/pixel_count
      region            1..K

One NXdata per statistic (``mean`` the default when present), so each plots on its
own scale. The datasets are hard links (NeXus: "the actual data might be stored in
another group and (hard) linked to the NXdata group"), never copies, and attributes
set through one path show through the others.

Which axis a line plot runs along: NeXus' ``interpretation="spectrum"`` makes the last
dimension the spectrum, and our last dimension is the region. ``default_slice=[".",
"0"]`` (NXdata, NeXus 2024) asks for dimension 0 (frames) to be plotted with region 1
selected; h5web applies it to its line plot (``applyDefaultSlice`` in
``vis-packs/nexus/utils.ts``): frames on x, a slider over the regions.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import h5py
import numpy as np

from framestats import __version__
from framestats.messages import JobSpec

#: The NXentry's name (the root's ``default``).
ENTRY = "entry"
#: Root attributes whose value is JSON, expanded in the NXprocess's configuration note.
JSON_ATTRS = ("input_files", "masks", "options", "chunking")


def _strings(*values: str) -> np.ndarray:
    """An HDF5 array attribute of variable-length UTF-8 strings."""
    return np.array(values, dtype=h5py.string_dtype())


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def configuration(attrs: dict[str, Any]) -> str:
    """The provenance (root attributes) as one JSON document, JSON-valued ones expanded."""
    out: dict[str, Any] = {}
    for key, value in attrs.items():
        if isinstance(value, np.generic):
            value = value.item()
        if key in JSON_ATTRS and isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                pass
        out[key] = value
    return json.dumps(out, indent=1, sort_keys=True, default=str)


def create(
    f: h5py.File,
    spec: JobSpec,
    attrs: dict[str, Any],
    counts: np.ndarray,
    frame_index: np.ndarray,
) -> dict[str, h5py.Dataset]:
    """Lay out a job's output in an empty open file: root attributes (attrs), pixel counts,
    frame index, the NeXus groups and links; returns each statistic's empty (N, K) float64
    dataset for the caller to fill.

    The datasets are not pre-filled (writing their NaN fill value first would write the
    output twice): the caller writes every row before anyone reads the file.
    """
    n, k = spec.n_frames, spec.n_regions
    date = str(attrs.get("end_time") or _iso(time.time()))

    # The flat layout, as every reader has known it.
    results = f.create_group("results")
    datasets = {
        s: results.create_dataset(
            s, shape=(n, k), dtype=np.float64, fillvalue=np.nan, fill_time="never"
        )
        for s in spec.stats
    }
    results.create_dataset("pixel_count", data=np.asarray(counts, dtype=np.int64))
    results.create_dataset("frame_index", data=np.asarray(frame_index, dtype=np.int64))
    results.attrs["statistics"] = ",".join(spec.stats)
    for key, value in attrs.items():
        f.attrs[key] = value

    # NXroot (NeXus: NXroot's attributes file_name, file_time, creator, default).
    f.attrs["NX_class"] = "NXroot"
    f.attrs["default"] = ENTRY
    f.attrs["file_name"] = os.path.basename(spec.output)
    f.attrs["file_time"] = date
    f.attrs["creator"] = "framestats"
    f.attrs["creator_version"] = __version__
    f.attrs["HDF5_Version"] = h5py.version.hdf5_version
    f.attrs["h5py_version"] = h5py.version.version

    entry = f.create_group(ENTRY)
    entry.attrs["NX_class"] = "NXentry"
    entry.attrs["default"] = "mean" if "mean" in spec.stats else spec.stats[0]
    source = os.path.basename(spec.segments[0].path)
    more = len({s.path for s in spec.segments}) - 1
    entry["title"] = f"{', '.join(spec.stats)} per frame and region of {source}" + (
        f" (+{more} files)" if more else ""
    )
    entry["start_time"] = str(attrs.get("start_time") or date)
    entry["end_time"] = date
    entry["program_name"] = "framestats"
    entry["program_name"].attrs["version"] = __version__

    process = entry.create_group("process")
    process.attrs["NX_class"] = "NXprocess"
    process["program"] = "framestats"
    process["version"] = __version__
    process["date"] = date
    process["sequence_index"] = np.int64(1)
    note = process.create_group("configuration")
    note.attrs["NX_class"] = "NXnote"
    note["type"] = "application/json"
    note["description"] = "The job's provenance: inputs, masks, options (root attributes)"
    note["data"] = configuration(attrs)

    regions = np.arange(1, k + 1, dtype=np.int64)
    for s in spec.stats:
        data = entry.create_group(s)
        data.attrs["NX_class"] = "NXdata"
        data.attrs["signal"] = s
        data.attrs["axes"] = _strings("frame_index", "region")
        data.attrs["frame_index_indices"] = np.int64(0)
        data.attrs["region_indices"] = np.int64(1)
        data.attrs["default_slice"] = _strings(".", "0")
        data[s] = datasets[s]
        data["frame_index"] = results["frame_index"]
        data["pixel_count"] = results["pixel_count"]
        data.create_dataset("region", data=regions)
        data["title"] = f"{s} per frame, region by region: {source}"
        datasets[s].attrs["interpretation"] = "spectrum"
        datasets[s].attrs["long_name"] = s
    results["frame_index"].attrs["long_name"] = "frame"
    return datasets
