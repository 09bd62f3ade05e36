"""Turning the user's input paths into segments: runs of frames in (file, dataset).

One file with one 3-D dataset is the simple case; several files, master files with
external links and virtual datasets resolve to several segments here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .errors import InputError
from .inputs import DatasetInfo, check_frames_dataset, choose_dataset, describe, open_h5
from .messages import Segment


@dataclass(frozen=True)
class Source:
    """One segment and what is known about the dataset behind it."""

    segment: Segment
    info: DatasetInfo


def resolve(paths: Sequence[str], dataset: str | None) -> list[Source]:
    """Segments for the input paths, numbered globally in order; InputError on any problem."""
    if not paths:
        raise InputError("no input file given")
    sources: list[Source] = []
    start = 0
    for path in paths:
        with open_h5(path) as f:
            dset = choose_dataset(f, path, dataset)
            check_frames_dataset(dset, path)
            info = describe(dset, path)
        seg = Segment(
            path=path, dataset=info.name, start=start, count=info.shape[0], index_base=start
        )
        sources.append(Source(seg, info))
        start += seg.count
    shapes = {s.info.shape[1:] for s in sources}
    if len(shapes) > 1:
        raise InputError(f"input files have different frame shapes: {sorted(shapes)}")
    dtypes = {s.info.dtype for s in sources}
    if len(dtypes) > 1:
        raise InputError(f"input files have different dtypes: {sorted(dtypes)}")
    return sources
