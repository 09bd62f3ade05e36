"""Committed chunk results: one small file per chunk in the job folder's ``chunks/``.

A chunk's file is written under a temporary name, fsynced and renamed (``JobFolder``): a
crash leaves no file or a whole one, and a duplicate delivery rewrites the same bytes.
Each file says whose it is (job id, chunk index, frame range, region count, statistics)
and carries a checksum of its values, so a reader takes only what its job committed:
a file another job, an earlier version or a broken disk left is refused with the reason
(``ChunkFileInvalid``) and the chunk is computed again.

Layout: ``CHUNK_MAGIC``, one line of JSON (the header), then each statistic in the order
the header names them, ``(frames, regions)`` float64 values, little-endian, C order.
"""

from __future__ import annotations

import functools
import json
import os
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .jobdir import JobFolder, pread_full

if TYPE_CHECKING:
    import numpy as np

    from .messages import JobSpec

#: First bytes of a committed chunk file (version 2: with job id and checksum).
CHUNK_MAGIC = b"framestats chunk 2\n"
#: The committed result files' ending.
CHUNK_SUFFIX = ".chunk"
#: Longest header read to check a file's owner without reading its values.
_HEADER_LIMIT = 1 << 16


class ChunkFileInvalid(ValueError):
    """Raised when a chunk file is not a whole result of the expected job and chunk."""


@dataclass(frozen=True)
class ChunkResult:
    """One chunk's statistics, frames [start, stop) of the job, and who computed them."""

    index: int
    start: int
    stop: int
    #: Statistic -> float64 (frames, regions).
    stats: dict[str, np.ndarray]
    #: ``worker``, ``device``, ``decode``: shown in the output's provenance.
    meta: dict[str, Any]


def chunk_name(index: int) -> str:
    """File name of chunk ``index``'s committed result in the chunks folder."""
    return f"{index:08d}{CHUNK_SUFFIX}"


def chunk_index(name: str) -> int | None:
    """The chunk index a file name in the chunks folder commits, or None."""
    stem = name[: -len(CHUNK_SUFFIX)]
    if name.endswith(CHUNK_SUFFIX) and stem.isdigit():
        return int(stem)
    return None


def encode(job_id: str, n_regions: int, result: ChunkResult) -> list[Any]:
    """The pieces of one chunk file, in order: its header (bytes), then each statistic's
    values (little-endian float64 arrays, written from their own memory)."""
    import numpy as np

    names = list(result.stats)
    arrays = [np.ascontiguousarray(result.stats[k], dtype="<f8") for k in names]
    shape = (result.stop - result.start, n_regions)
    if any(a.shape != shape for a in arrays):
        raise ValueError(f"chunk {result.index}: statistics are not {shape}")
    crc = 0
    for a in arrays:
        crc = zlib.crc32(a.data, crc)
    head = {
        "job": job_id,
        "index": result.index,
        "range": [result.start, result.stop],
        "regions": n_regions,
        "stats": names,
        "crc32": crc,
        "meta": result.meta,
    }
    return [CHUNK_MAGIC + json.dumps(head, sort_keys=True).encode() + b"\n", *arrays]


def write_chunk(folder: JobFolder, spec: JobSpec, result: ChunkResult) -> None:
    """Commit one chunk's statistics for ``spec``'s job."""
    pieces = encode(spec.job_id, spec.n_regions, result)
    folder.write_atomic(chunk_name(result.index), functools.partial(_write_all, pieces), True)


def _write_all(pieces: list[Any], fd: int) -> None:
    for piece in pieces:
        view = memoryview(piece).cast("B")
        while view:
            view = view[os.write(fd, view) :]


def _header(raw: bytes, where: str) -> tuple[dict[str, Any], int]:
    end = raw.find(b"\n", len(CHUNK_MAGIC))
    if not raw.startswith(CHUNK_MAGIC) or end < 0:
        raise ChunkFileInvalid(f"{where} is not a framestats chunk file of this version")
    try:
        head = json.loads(raw[len(CHUNK_MAGIC) : end])
    except ValueError as exc:
        raise ChunkFileInvalid(f"{where} has a damaged header") from exc
    if not isinstance(head, dict):
        raise ChunkFileInvalid(f"{where} has a damaged header")
    return head, end + 1


def _check_owner(head: dict[str, Any], spec: JobSpec, index: int, where: str) -> None:
    expected = {
        "job": spec.job_id,
        "index": index,
        "range": [spec.boundaries[index], spec.boundaries[index + 1]],
        "regions": spec.n_regions,
    }
    for key, value in expected.items():
        if head.get(key) != value:
            raise ChunkFileInvalid(f"{where} has {key} {head.get(key)!r}, expected {value!r}")
    missing = set(spec.stats) - set(head.get("stats") or ())
    if missing:
        raise ChunkFileInvalid(f"{where} lacks {', '.join(sorted(missing))}")


def is_committed(folder: JobFolder, spec: JobSpec, index: int) -> bool:
    """Whether chunk ``index`` has a file of this job (header checked, values not read)."""
    name = chunk_name(index)
    try:
        raw = folder.read(name, in_chunks=True, limit=_HEADER_LIMIT)
        _check_owner(_header(raw, name)[0], spec, index, name)
    except (FileNotFoundError, ChunkFileInvalid):
        return False
    return True


def read_chunk(folder: JobFolder, spec: JobSpec, index: int) -> ChunkResult:
    """Chunk ``index``'s statistics; ChunkFileInvalid when the file is not a whole result
    of this job's chunk (another job's, truncated, corrupt); FileNotFoundError if absent.

    Header and values come from one open of the file (a duplicate's rename in between
    cannot pair one file's header with another's values). The values are read straight
    into one new float64 array: aligned, and large enough for the huge pages numpy asks
    for, where a ``bytes`` of the whole file took twice as long to fill.
    """
    import numpy as np

    name = chunk_name(index)
    with folder.opened(name, in_chunks=True) as (fd, size):
        head, at = _header(os.pread(fd, min(size, _HEADER_LIMIT), 0), name)
        _check_owner(head, spec, index, name)
        names = list(head["stats"])
        frames = spec.boundaries[index + 1] - spec.boundaries[index]
        shape = (len(names), frames, spec.n_regions)
        if size - at != 8 * shape[0] * shape[1] * shape[2]:  # before anything is allocated
            raise ChunkFileInvalid(f"{name} holds {size - at} bytes of values, expected others")
        values = np.empty(shape, dtype="<f8")
        if pread_full(fd, values.data.cast("B"), at) != values.nbytes:
            raise ChunkFileInvalid(f"{name} ended early (written to while being read)")
    if zlib.crc32(values.data) != head.get("crc32"):
        raise ChunkFileInvalid(f"{name}: checksum mismatch (the file is damaged)")
    # Views of one array (no copy where float64 is little-endian).
    stats = {n: values[i].astype(np.float64, copy=False) for i, n in enumerate(names)}
    start, stop = spec.boundaries[index], spec.boundaries[index + 1]
    return ChunkResult(index=index, start=start, stop=stop, stats=stats, meta=head["meta"])


def committed(folder: JobFolder, spec: JobSpec | None = None) -> set[int]:
    """Indices of the chunks with a file in place (with ``spec``: a file of this job)."""
    try:
        names = folder.chunk_names()
    except FileNotFoundError:
        return set()
    found = {i for i in map(chunk_index, names) if i is not None}
    if spec is None:
        return found
    return {i for i in found if i < spec.n_chunks and is_committed(folder, spec, i)}
