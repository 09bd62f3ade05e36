"""Where each chunk of a dataset lies in its file, to read raw chunks with ``pread``.

``read_direct_chunk`` holds h5py's lock and the GIL while it copies; with many decode
threads those short holds add up, and the device decoder wants many chunks in a few
large reads. ``os.preadv`` holds neither. The index comes from HDF5 itself
(``DatasetID.chunk_iter``), is checked against ``read_direct_chunk`` on one chunk, and is
used only for plain single files (the default driver); anything else reads through
HDF5 as before.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import h5py
import numpy as np

from framestats.jobdir import pread_full

#: Gap (bytes) between two stored chunks that one read still spans rather than split.
MERGE_GAP = 64 * 1024


@dataclass(frozen=True)
class Span:
    """One ``pread``: file bytes [offset, offset + size) hold chunks [first, stop)."""

    offset: int
    size: int
    first: int
    stop: int


class ChunkIndex:
    """Offsets, sizes and filter masks of a dataset's chunks along the frame axis."""

    #: Larger datasets read through HDF5 (the index costs ~1 us and 24 bytes per chunk).
    MAX_CHUNKS = 1 << 20

    def __init__(self, fd: int, offsets: np.ndarray, sizes: np.ndarray, masks: np.ndarray):
        self.fd = fd
        #: File offset of each chunk; -1 where none is stored (the fill value applies).
        self.offsets = offsets
        self.sizes = sizes
        self.masks = masks

    @classmethod
    def build(cls, dset: h5py.Dataset, per_chunk: int) -> ChunkIndex | None:
        """The index of ``dset`` (chunks of ``per_chunk`` frames), or None: ask HDF5."""
        n = -(-int(dset.shape[0]) // per_chunk)
        try:
            if dset.file.driver != "sec2" or n > cls.MAX_CHUNKS or n == 0:
                return None
            offsets = np.full(n, -1, dtype=np.int64)
            sizes = np.zeros(n, dtype=np.int64)
            masks = np.zeros(n, dtype=np.int64)

            def visit(info: object) -> None:
                k = info.chunk_offset[0] // per_chunk  # type: ignore[attr-defined]
                offsets[k] = info.byte_offset  # type: ignore[attr-defined]
                sizes[k] = info.size  # type: ignore[attr-defined]
                masks[k] = info.filter_mask  # type: ignore[attr-defined]

            dset.id.chunk_iter(visit)
            fd = os.open(dset.file.filename, os.O_RDONLY)
        except (AttributeError, OSError, RuntimeError, ValueError, TypeError):
            return None
        index = cls(fd, offsets, sizes, masks)
        # Trust it only if it reads what HDF5 reads.
        first = int(np.argmax(offsets >= 0))
        if offsets[first] < 0:
            index.close()
            return None
        raw = np.empty(int(sizes[first]), dtype=np.uint8)
        got = index.read(first, raw)
        try:
            mask, want = dset.id.read_direct_chunk((first * per_chunk, 0, 0))
        except (OSError, RuntimeError, ValueError):
            got = None
        if got is None or got != (mask, len(want)) or raw.tobytes() != want:
            index.close()
            return None
        return index

    def read(self, chunk: int, raw: np.ndarray) -> tuple[int, int] | None:
        """(filter mask, bytes) of chunk ``chunk`` read into ``raw``; None: ask HDF5."""
        offset, size = int(self.offsets[chunk]), int(self.sizes[chunk])
        if offset < 0 or size > raw.size:  # unwritten (fill value) or too large: HDF5
            return None
        if os.preadv(self.fd, [raw.data[:size]], offset) != size:
            return None
        return int(self.masks[chunk]), size

    def spans(self, first: int, stop: int, gap: int = MERGE_GAP) -> list[Span]:
        """Reads covering the stored, unfiltered-mask-free chunks among [first, stop).

        Neighbouring chunks (next one starts within ``gap`` bytes of the last one's end,
        in file order) share one read. Chunks with no storage or a filter mask set are
        left out: the caller reads those through HDF5.
        """
        out: list[Span] = []
        start = end = -1
        lo = first
        for k in range(first, stop):
            offset, size = int(self.offsets[k]), int(self.sizes[k])
            usable = offset >= 0 and self.masks[k] == 0
            if usable and start >= 0 and end <= offset <= end + gap:
                end = offset + size
                continue
            if start >= 0:
                out.append(Span(start, end - start, lo, k))
                start = -1
            if usable:
                start, end, lo = offset, offset + size, k
        if start >= 0:
            out.append(Span(start, end - start, lo, stop))
        return out

    def pread(self, offset: int, view: memoryview) -> None:
        """Fill ``view`` from file offset ``offset``; a short file is an OSError."""
        done = pread_full(self.fd, view, offset)
        if done < len(view):
            raise OSError(f"the file ends {len(view) - done} bytes before its chunks do")

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
