"""Turning the user's input paths into segments: runs of frames in (file, dataset).

One file with one 3-D dataset is the simple case. Besides it:

- glob patterns (``'scan_*.h5'``, quoted so the shell leaves them) are expanded here;
  several inputs make one job over their concatenation in sorted path order;
- an Eiger master file whose ``/entry/data/data_NNNNNN`` are external links gives one
  segment per linked data file, pointing at the data file itself;
- a virtual dataset is read through, after every source file has been checked.

Global frame numbers run over the concatenation of everything; ``Segment.index_base``
keeps each file's place in it, so ``--frames`` (see ``select``) can drop frames and
``/results/frame_index`` still names the original frame numbers.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import h5py

from ..errors import InputError, OptionError
from ..messages import Segment
from ..paths import check_allowed
from . import eiger as nexus
from .hdf5 import DatasetInfo, check_frames_dataset, choose_dataset, describe, open_h5
from .reach import check_reach, open_dataset

#: Characters that make an input path a glob pattern (when no such file exists).
WILDCARDS = "*?["


@dataclass(frozen=True)
class Source:
    """One segment and what is known about the dataset behind it."""

    segment: Segment
    info: DatasetInfo
    #: The input path this segment came from (a master file for Eiger data files).
    origin: str = ""
    #: "file", "eiger" (a data file linked from a master) or "virtual".
    kind: str = "file"
    #: Source files of a virtual dataset, (file, dataset); empty otherwise.
    virtual_sources: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Resolved:
    """Every input, resolved: segments in global order plus what the files say."""

    #: Input files after glob expansion, in the order they are concatenated.
    paths: tuple[str, ...]
    #: All segments, before any frame selection.
    all_sources: tuple[Source, ...]
    #: Segments left after frame selection (all of them without one), renumbered.
    sources: tuple[Source, ...]
    #: Metadata of the Eiger master files among the inputs.
    detectors: tuple[nexus.DetectorMeta, ...] = ()
    #: Selected segment per entry of all_sources (None where no frame was selected).
    selected: tuple[Segment | None, ...] = field(default=())

    @property
    def total_frames(self) -> int:
        return sum(s.segment.count for s in self.all_sources)

    def files(self) -> list[str]:
        """Every file a worker reads, directly or through a virtual dataset."""
        out: dict[str, None] = {}
        for src in self.sources:
            out[os.path.abspath(src.segment.path)] = None
            for path, _ in src.virtual_sources:
                out[os.path.abspath(path)] = None
        return list(out)

    def records(self) -> tuple[dict[str, Any], ...]:
        """Provenance: every input file with its frames, selected or not."""
        selected = self.selected or tuple(s.segment for s in self.all_sources)
        rows = []
        for src, sel in zip(self.all_sources, selected, strict=True):
            seg = src.segment
            row: dict[str, Any] = {
                "file": os.path.abspath(seg.path),
                "dataset": src.info.name,
                "kind": src.kind,
                "input": os.path.abspath(src.origin or seg.path),
                "shape": list(src.info.shape),
                # Numbers of the file's frames in the concatenation of all inputs.
                "index": [seg.index_base, seg.index_base + seg.count],
                # Rows of the output that come from this file ([a, a] when none).
                "frames": [sel.start, sel.start + sel.count] if sel else _empty_at(self, src),
                "file_frames": (
                    {"start": sel.offset, "step": sel.step, "count": sel.count}
                    if sel
                    else {"start": 0, "step": 1, "count": 0}
                ),
            }
            if src.virtual_sources:
                row["virtual_sources"] = [
                    {"file": os.path.abspath(p), "dataset": d} for p, d in src.virtual_sources
                ]
            rows.append(row)
        return tuple(rows)


def _empty_at(resolved: Resolved, src: Source) -> list[int]:
    """An empty output range placed where this file's frames would have been."""
    before = 0
    selected = resolved.selected or tuple(s.segment for s in resolved.all_sources)
    for other, sel in zip(resolved.all_sources, selected, strict=True):
        if other is src:
            break
        if sel is not None:
            before = sel.start + sel.count
    return [before, before]


def expand_paths(paths: Sequence[str]) -> list[str]:
    """Input paths with glob patterns expanded, sorted by absolute path; no duplicates."""
    if not paths:
        raise InputError("no input file given")
    out: list[str] = []
    for path in paths:
        if any(c in path for c in WILDCARDS) and not os.path.exists(path):
            matches = [m for m in glob.glob(path) if not os.path.isdir(m)]
            if not matches:
                raise InputError(f"no input file matches {path}")
            out.extend(matches)
        else:
            out.append(path)
    out.sort(key=os.path.abspath)
    seen: dict[str, str] = {}
    for path in out:
        real = os.path.realpath(path)
        if real in seen:
            raise InputError(f"input file given twice: {path}")
        seen[real] = path
    return out


def resolve_inputs(
    paths: Sequence[str], dataset: str | None, roots: tuple[str, ...] = ()
) -> Resolved:
    """Resolve every input (globs, master files, virtual datasets); InputError on any
    problem. With ``roots`` (DATA_ROOT), every file that reading a dataset would open is
    checked before any of it is read (``reach.check_reach``)."""
    files = expand_paths(paths)
    sources: list[Source] = []
    detectors: list[nexus.DetectorMeta] = []
    for path in files:
        if roots:
            check_allowed(path, roots)
        found, meta = _resolve_file(path, dataset, roots)
        sources.extend(found)
        if meta is not None:
            detectors.append(meta)
    _check_not_twice(files, sources)
    _check_compatible(sources)
    # Number frames over the concatenation.
    numbered: list[Source] = []
    start = 0
    for src in sources:
        seg = replace(src.segment, start=start, index_base=start)
        numbered.append(replace(src, segment=seg))
        start += seg.count
    return Resolved(
        paths=tuple(files),
        all_sources=tuple(numbered),
        sources=tuple(numbered),
        detectors=tuple(detectors),
        selected=tuple(s.segment for s in numbered),
    )


def resolve(paths: Sequence[str], dataset: str | None) -> list[Source]:
    """Segments for the input paths, numbered globally in order; InputError on any problem."""
    return list(resolve_inputs(paths, dataset).sources)


def _resolve_file(
    path: str, dataset: str | None, roots: tuple[str, ...]
) -> tuple[list[Source], nexus.DetectorMeta | None]:
    with open_h5(path) as f:
        meta = nexus.detector_meta(f, path)
        links = nexus.data_links(f, path) if dataset is None else []
        if links:
            return [_linked_source(path, link, roots) for link in links], meta
        dset = choose_dataset(f, path, dataset, roots)
        real_path = path
        if os.path.abspath(dset.file.filename) != os.path.abspath(path):
            # Reached through an external link: read the file that holds the frames.
            real_path = os.path.abspath(dset.file.filename)
        check_frames_dataset(dset, real_path)
        vsources: tuple[tuple[str, str], ...] = ()
        kind = "file"
        if dset.is_virtual:
            kind = "virtual"
            vsources = tuple(nexus.virtual_source_files(dset, path))
        info = describe(dset, real_path)
    seg = Segment(path=real_path, dataset=info.name, start=0, count=info.shape[0])
    return [Source(seg, info, origin=path, kind=kind, virtual_sources=vsources)], meta


def _linked_source(master: str, link: nexus.DataLink, roots: tuple[str, ...]) -> Source:
    where = f"linked from {master}:{nexus.DATA_GROUP}/{link.name}"
    if roots:
        check_reach(master, f"{nexus.DATA_GROUP}/{link.name}", roots)
    if link.external and not os.path.exists(link.file):
        raise InputError(f"data file not found: {link.file} ({where})")
    try:
        f = open_h5(link.file)
    except InputError as exc:
        raise InputError(f"{exc} ({where})") from exc
    with f:
        obj = f.get(link.dataset)
        if obj is None:
            raise InputError(f"dataset {link.dataset} not found in {link.file} ({where})")
        if not isinstance(obj, h5py.Dataset):
            raise InputError(f"{link.dataset} in {link.file} is not a dataset ({where})")
        del obj  # opened again as the workers open it
        obj = open_dataset(f, link.dataset)
        try:
            check_frames_dataset(obj, link.file)
        except InputError as exc:
            raise InputError(f"{exc} ({where})") from exc
        info = describe(obj, link.file)
    seg = Segment(path=link.file, dataset=info.name, start=0, count=info.shape[0])
    return Source(seg, info, origin=master, kind="eiger" if link.external else "file")


def _check_not_twice(files: list[str], sources: list[Source]) -> None:
    """Refuse a data file given both directly and through a master (frames counted twice)."""
    given = {os.path.realpath(p): p for p in files}
    for src in sources:
        if src.kind != "eiger":
            continue
        real = os.path.realpath(src.segment.path)
        if real in given:
            raise InputError(
                f"{given[real]} is a data file of master {src.origin}; pass only the master"
            )


def _check_compatible(sources: list[Source]) -> None:
    """Same frame shape and dtype everywhere; else name the first file of each."""
    for what, values in (
        ("frame shapes", [tuple(s.info.shape[1:]) for s in sources]),
        ("dtypes", [s.info.dtype for s in sources]),
    ):
        first: dict[Any, str] = {}
        for value, src in zip(values, sources, strict=True):
            first.setdefault(value, src.segment.path)
        if len(first) > 1:
            detail = ", ".join(f"{v} in {p}" for v, p in first.items())
            raise InputError(f"input files have different {what}: {detail}")


def select(resolved: Resolved, frames: range | None, text: str = "") -> Resolved:
    """Keep the global frames in ``frames`` (a range over the concatenation).

    Each segment keeps its ``index_base``; offset and step point at the chosen frames
    of its dataset. Segments left with no frame are dropped from ``sources`` but stay
    in the provenance records. OptionError when nothing is selected.
    """
    if frames is None:
        return resolved
    total = resolved.total_frames
    chosen: list[Source] = []
    selected: list[Segment | None] = []
    out = 0
    for src in resolved.all_sources:
        seg = select_segment(src.segment, frames, out)
        selected.append(seg)
        if seg is not None:
            chosen.append(replace(src, segment=seg))
            out += seg.count
    if not chosen:
        raise OptionError(f"--frames {text} selects no frame of the {total} input frames")
    return replace(resolved, sources=tuple(chosen), selected=tuple(selected))


def select_segment(seg: Segment, frames: range, out_start: int) -> Segment | None:
    """The part of ``seg`` (global frames [start, start+count)) that ``frames`` keeps."""
    lo, hi, step = frames.start, frames.stop, frames.step
    if step < 1:
        raise ValueError("frame selection step must be positive")
    first = lo if lo >= seg.start else lo + -(-(seg.start - lo) // step) * step
    end = min(hi, seg.start + seg.count)
    if first >= end:
        return None
    count = -(-(end - first) // step)
    return Segment(
        path=seg.path,
        dataset=seg.dataset,
        start=out_start,
        count=count,
        offset=seg.offset + (first - seg.start) * seg.step,
        step=seg.step * step,
        index_base=seg.index_base,
    )
