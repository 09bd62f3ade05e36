"""Reading a job's frames from HDF5 into reused buffers (h5py only; knows nothing of torch).

Blocks follow the dataset's HDF5 chunking along the frame axis, so every compressed
chunk is decoded once, and ``read_direct`` fills buffers that outlive the reader: no
fresh large allocation per block, nor per job (those cost a lot on these machines: the
first read into a fresh 32 MiB array took 30-80 ms of page faults, ten times the read).

Bitshuffle-LZ4/Zstd datasets are decoded by ``worker.decode`` (raw chunks, decoded in
threads outside HDF5's lock) when it applies. A contiguous dataset stored in the job's
dtype is read with ``os.preadv`` at its file offset, outside HDF5 and its lock: 6 % more
GiB/s than ``read_direct`` from the page cache with two processes (15.6 against 14.6),
the same bytes, and a file that ends early is an error (HDF5 reads zeros there);
anything else (virtual, external, unallocated, another byte order) goes through HDF5.

With ``prefetch`` the next block is read into a second buffer while the caller reduces
the current one: it pays where reading and reducing use different resources (a GPU
worker), not where one core does both.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import h5py
import hdf5plugin  # noqa: F401  (registers Bitshuffle-LZ4, LZ4, Blosc, Zstd, ... with HDF5)
import numpy as np

from framestats.errors import PermanentChunkError, TransientChunkError
from framestats.inputs.reach import check_reach, open_dataset
from framestats.messages import JobSpec, Segment
from framestats.paths import check_allowed

from .decode import ChunkDecoder, default_threads

#: Upper bound for one read; blocks are whole HDF5 chunks, at least one.
DEFAULT_BLOCK_BYTES = 32 * 1024 * 1024

#: ``(frames, dtype) -> empty (frames, H, W) array or None``: where to read a block
#: (e.g. ``MaskedReducer.host_buffer``, pinned memory the GPU reads without a host
#: copy). It must hand out alternating buffers: an array must stay untouched until
#: the one after next is asked for (the current and the prefetched block).
BufferProvider = Callable[[int, np.dtype], np.ndarray | None]


class BufferPool:
    """Spare read buffers (raw bytes) shared by the readers of one process.

    Every job gets its own reader; taking its buffers from here spares each job's first
    chunk in each process the page faults of fresh memory. A reader holds what it took
    only during one ``blocks`` call, so two readers never share a buffer.
    """

    def __init__(self, keep: int = 2) -> None:
        self.keep = keep
        self._free: list[np.ndarray] = []
        self._lock = threading.Lock()

    def take(self, nbytes: int) -> np.ndarray:
        """A uint8 array of at least ``nbytes`` (a spare one when one is big enough)."""
        with self._lock:
            for i, buf in enumerate(self._free):
                if buf.nbytes >= nbytes:
                    return self._free.pop(i)
        return np.empty(nbytes, dtype=np.uint8)

    def give(self, buf: np.ndarray) -> None:
        """Return a buffer from ``take``; only the ``keep`` largest spares are kept."""
        with self._lock:
            self._free.append(buf)
            self._free.sort(key=lambda b: b.nbytes, reverse=True)
            del self._free[self.keep :]


#: This process's spare buffers (two: a reader's current and prefetched block).
POOL = BufferPool()


class FrameReader:
    """Reads global frame ranges of one job, keeping its files open across chunks."""

    def __init__(
        self,
        spec: JobSpec,
        data_root: tuple[str, ...] = (),
        block_bytes: int = DEFAULT_BLOCK_BYTES,
        decode_threads: int = 1,
        prefetch: bool = False,
        buffers: BufferProvider | None = None,
    ) -> None:
        self.spec = spec
        self.data_root = data_root
        self.block_bytes = block_bytes
        self.dtype = np.dtype(spec.dtype).newbyteorder("=")
        #: Threads decoding Bitshuffle chunks (0: always let HDF5 decode).
        self.decode_threads = decode_threads
        self.prefetch = prefetch
        #: Supplies the buffers blocks are read into; None (or it returning None): our own.
        self.buffers = buffers
        self._files: dict[str, h5py.File] = {}
        #: Datasets opened (links checked once), by (path, dataset).
        self._dsets: dict[tuple[str, str], h5py.Dataset] = {}
        self._decoders: dict[tuple[str, str], ChunkDecoder | None] = {}
        #: (file descriptor, byte offset of frame 0) of contiguous datasets, by (path, dataset).
        self._direct: dict[tuple[str, str], tuple[int, int] | None] = {}
        #: Raw bytes of the two read slots, taken from ``pool`` for one ``blocks`` call.
        self._buffers: list[np.ndarray | None] = [None, None]
        self.pool = POOL
        self._io: ThreadPoolExecutor | None = None

    @classmethod
    def for_device(
        cls,
        spec: JobSpec,
        data_root: tuple[str, ...] = (),
        device: str = "cpu",
        buffers: BufferProvider | None = None,
    ) -> FrameReader:
        """A reader tuned for a worker on ``device``; FRAMESTATS_DECODE_THREADS and
        FRAMESTATS_PREFETCH (0/1) override the choice.

        A GPU worker decodes on every core it may use and prefetches; a CPU worker (one
        process per core) decodes in its own thread, which is still faster than HDF5's
        filter pipeline (no per-chunk allocation and copy), and does not prefetch.
        """
        gpu = not str(device).startswith("cpu")
        threads = os.environ.get("FRAMESTATS_DECODE_THREADS", "auto").strip().lower()
        prefetch = os.environ.get("FRAMESTATS_PREFETCH", "auto").strip().lower()
        if threads in ("", "auto"):
            threads = str(default_threads() if gpu else 1)
        return cls(
            spec,
            data_root,
            decode_threads=int(threads),
            prefetch=gpu if prefetch in ("", "auto") else prefetch in ("1", "true", "yes", "on"),
            buffers=buffers,
        )

    def _dataset(self, seg: Segment) -> h5py.Dataset:
        dset = self._dsets.get((seg.path, seg.dataset))
        if dset is not None:
            return dset
        f = self._files.get(seg.path)
        if f is None:
            real = check_allowed(seg.path, self.data_root)
            try:
                f = h5py.File(real, "r")
            except OSError as exc:
                raise TransientChunkError(f"cannot open {seg.path}: {exc}") from exc
            self._files[seg.path] = f
        if self.data_root:  # again on the file opened: it may have changed since submit
            check_reach(f.filename, seg.dataset, self.data_root)
        try:
            dset = self._dsets[(seg.path, seg.dataset)] = open_dataset(f, seg.dataset)
            return dset
        except KeyError as exc:
            raise PermanentChunkError(f"dataset {seg.dataset} missing in {seg.path}") from exc

    def _decoder(self, seg: Segment, dset: h5py.Dataset) -> ChunkDecoder | None:
        key = (seg.path, seg.dataset)
        if key not in self._decoders:
            usable = self.decode_threads > 0 and self.dtype == dset.dtype
            self._decoders[key] = (
                ChunkDecoder.for_dataset(dset, self.decode_threads) if usable else None
            )
        return self._decoders[key]

    def _contiguous(self, seg: Segment, dset: h5py.Dataset) -> tuple[int, int] | None:
        """Where a contiguous dataset's bytes start in its file, if they are the frames as
        the job reads them (same dtype and byte order); None: let HDF5 read it."""
        key = (seg.path, seg.dataset)
        if key not in self._direct:
            found = None
            plain = dset.chunks is None and not dset.is_virtual and not dset.external
            if plain and dset.dtype == self.dtype:
                offset = dset.id.get_offset()  # None: no storage allocated (fill values)
                if offset is not None:
                    found = (os.open(dset.file.filename, os.O_RDONLY), int(offset))
            self._direct[key] = found
        return self._direct[key]

    def _buffer_for(self, frames: int, slot: int = 0) -> np.ndarray:
        h, w = self.spec.frame_shape
        if self.buffers is not None:
            given = self.buffers(frames, self.dtype)
            if (
                given is not None
                and given.shape == (frames, h, w)
                and given.dtype == self.dtype
                and given.flags.c_contiguous
                and given.flags.writeable
            ):
                return given
        nbytes = frames * h * w * self.dtype.itemsize
        raw = self._buffers[slot]
        if raw is None or raw.nbytes < nbytes:
            if raw is not None:
                self.pool.give(raw)
            raw = self._buffers[slot] = self.pool.take(nbytes)
        return raw[:nbytes].view(self.dtype).reshape(frames, h, w)

    def _release(self) -> None:
        """Give the read buffers back to the pool (the caller has no block any more)."""
        for slot, raw in enumerate(self._buffers):
            if raw is not None:
                self.pool.give(raw)
                self._buffers[slot] = None

    def block_frames(self, dset: h5py.Dataset) -> int:
        per_chunk = int(dset.chunks[0]) if dset.chunks else 1
        frame_bytes = self.dtype.itemsize * self.spec.frame_shape[0] * self.spec.frame_shape[1]
        chunks = max(1, self.block_bytes // max(1, frame_bytes * per_chunk))
        return chunks * per_chunk

    def _plan(self, start: int, stop: int) -> Iterator[tuple[int, int, Segment, h5py.Dataset, int]]:
        """(global first frame, frames, segment, dataset, dataset index) of each block."""
        for seg in self.spec.segments:
            lo, hi = max(start, seg.start), min(stop, seg.start + seg.count)
            if lo >= hi:
                continue
            dset = self._dataset(seg)
            step_frames = self.block_frames(dset)
            pos = lo
            while pos < hi:
                # Dataset index of this block's first frame; end on an HDF5 chunk boundary.
                first = seg.offset + (pos - seg.start) * seg.step
                if seg.step == 1:
                    per = int(dset.chunks[0]) if dset.chunks else 1
                    end_index = (first // per) * per + step_frames
                    n = min(hi - pos, max(1, end_index - first))
                else:
                    n = min(hi - pos, max(1, step_frames // seg.step))
                yield pos, n, seg, dset, first
                pos += n

    def _read(
        self, pos: int, n: int, seg: Segment, dset: h5py.Dataset, first: int, buf: np.ndarray
    ) -> None:
        """Read one block into ``buf``."""
        decoder = self._decoder(seg, dset) if seg.step == 1 else None
        direct = self._contiguous(seg, dset) if seg.step == 1 and decoder is None else None
        try:
            if decoder is not None:
                decoder.read(first, buf)
            elif direct is not None:
                self._pread(direct, first, buf)
            else:
                dset.read_direct(buf, source_sel=np.s_[first : first + n * seg.step : seg.step])
        except (OSError, RuntimeError, ValueError) as exc:
            raise TransientChunkError(
                f"cannot read frames {pos}-{pos + n} ({seg.path}:{seg.dataset}[{first}:"
                f"{first + n * seg.step}]): {exc}",
                frames=(pos, pos + n),
            ) from exc

    @staticmethod
    def _pread(direct: tuple[int, int], first: int, buf: np.ndarray) -> None:
        """Read frames ``first...`` of a contiguous dataset into ``buf``.

        A file that ends early (truncated, or still being written) is an OSError: HDF5's
        own read fills the missing bytes with zeros and says nothing.
        """
        fd, offset = direct
        view = buf.data.cast("B")
        at, done = offset + first * buf[0].nbytes, 0
        while done < view.nbytes:
            got = os.preadv(fd, [view[done:]], at + done)
            if got == 0:
                raise OSError(f"the file ends {view.nbytes - done} bytes before these frames do")
            done += got

    def blocks(self, start: int, stop: int) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (global first frame, frames) covering [start, stop); the arrays are reused.

        A yielded array stays valid until the next one is asked for, and not after the
        iteration ends (its memory goes back to the process's pool). With a buffer
        provider, blocks are read into the arrays it hands out (one call per block, in
        block order, from the prefetch thread when prefetching).
        """
        if not self.prefetch:
            try:
                for pos, n, seg, dset, first in self._plan(start, stop):
                    buf = self._buffer_for(n)
                    self._read(pos, n, seg, dset, first, buf)
                    yield pos, buf
            finally:
                self._release()
            return
        if self._io is None:
            self._io = ThreadPoolExecutor(1, "prefetch")
        io = self._io
        plan = self._plan(start, stop)

        def read(slot: int) -> tuple[int, np.ndarray] | None:
            item = next(plan, None)
            if item is None:
                return None
            pos, n, seg, dset, first = item
            buf = self._buffer_for(n, slot)
            self._read(pos, n, seg, dset, first, buf)
            return pos, buf

        slot = 0
        pending: Future[tuple[int, np.ndarray] | None] = io.submit(read, slot)
        try:
            while True:
                got = pending.result()
                if got is None:
                    return
                slot ^= 1
                pending = io.submit(read, slot)  # the caller is done with this slot's last block
                yield got
        finally:
            pending.cancel()
            try:
                pending.result()
            except BaseException:  # already failing or closed: its error is not the news
                pass
            self._release()

    def close(self) -> None:
        if self._io is not None:
            self._io.shutdown(wait=True)
            self._io = None
        for decoder in self._decoders.values():
            if decoder is not None:
                decoder.close()
        self._decoders.clear()
        for direct in self._direct.values():
            if direct is not None:
                os.close(direct[0])
        self._direct.clear()
        for f in self._files.values():
            try:
                f.close()
            except Exception:  # closing a broken file must not mask the real error
                pass
        self._files.clear()
        self._dsets.clear()
        self._release()
