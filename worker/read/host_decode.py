"""Decoding compressed HDF5 chunks on the host's cores, outside HDF5's lock.

HDF5 runs its filters under one library-wide lock (h5py's ``phil``), so one process
decompresses one chunk at a time, with an allocation and a copy per chunk. Here each
chunk is read raw (``pread`` at the offset HDF5 reports, or ``read_direct_chunk``) and
decoded by a library that releases the GIL, so several threads decode several chunks
at once, straight into the caller's buffer:

- Bitshuffle-LZ4/Zstd: the bitshuffle library that ``hdf5plugin`` already ships
  (``libh5bshuf.so`` exports ``bshuf_decompress_lz4``/``_zstd``), through ctypes;
- gzip (deflate), with or without HDF5's byte shuffle: libdeflate (the ``deflate``
  package, which checks the Adler-32), then the shuffle undone with a few vectorised
  passes over the chunk while it is in cache.

Only what ``filters.pipeline_of`` names is taken; a chunk HDF5 stored with a filter
skipped (filter mask set), one never written, and one that does not decode are read
through h5py, so their data (or error) is HDF5's own.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import h5py
import numpy as np

from .chunk_index import ChunkIndex
from .filters import BSHUF_LZ4, Pipeline, pipeline_of

#: Bytes of the header bitshuffle puts before compressed data: uint64 BE size, uint32 BE block.
HEADER = 12
#: Uncompressed bytes decoded per thread-pool task at least (chunks are grouped up to it).
TASK_BYTES = 256 * 1024

_lib: ctypes.CDLL | None = None
_lib_lock = threading.Lock()


def bitshuffle_library() -> ctypes.CDLL | None:
    """The bitshuffle library of hdf5plugin, or None when it cannot be loaded."""
    global _lib
    with _lib_lock:
        if _lib is None:
            try:
                import hdf5plugin

                lib = ctypes.CDLL(os.path.join(hdf5plugin.PLUGIN_PATH, "libh5bshuf.so"))
                for name in ("bshuf_decompress_lz4", "bshuf_decompress_zstd"):
                    fn = getattr(lib, name)
                    fn.restype = ctypes.c_int64
                    fn.argtypes = [
                        ctypes.c_void_p,
                        ctypes.c_void_p,
                        ctypes.c_size_t,
                        ctypes.c_size_t,
                        ctypes.c_size_t,
                    ]
            except (ImportError, OSError, AttributeError):
                return None
            _lib = lib
        return _lib


def default_threads() -> int:
    """Decode threads when FRAMESTATS_DECODE_THREADS does not say: the cores this process may use."""
    from ..launch import usable_cores

    return usable_cores()


#: Decodes one raw chunk (bytes [0, nraw) of ``raw``) into ``dest`` (C-contiguous).
Decode = Callable[[np.ndarray, int, np.ndarray], None]


def _bitshuffle(codec: int, elem_size: int, chunk_bytes: int) -> Decode | None:
    lib = bitshuffle_library()
    if lib is None:
        return None
    fn = lib.bshuf_decompress_lz4 if codec == BSHUF_LZ4 else lib.bshuf_decompress_zstd

    def decode(raw: np.ndarray, nraw: int, dest: np.ndarray) -> None:
        if nraw < HEADER:
            raise ValueError(f"{nraw}-byte chunk is shorter than its header")
        head = raw[:HEADER].tobytes()
        nbytes = int.from_bytes(head[:8], "big")
        block = int.from_bytes(head[8:12], "big") // elem_size
        if nbytes != chunk_bytes:
            raise ValueError(f"chunk header says {nbytes} bytes, expected {chunk_bytes}")
        got = fn(raw.ctypes.data + HEADER, dest.ctypes.data, nbytes // elem_size, elem_size, block)
        if got < 0 or HEADER + got > nraw:
            raise ValueError(f"bitshuffle error {got}")

    return decode


def _deflate(shuffle: bool, itemsize: int, chunk_bytes: int) -> Decode | None:
    try:
        import deflate
    except ImportError:
        return None
    # HDF5's shuffle stores byte j of every element in plane j; little-endian elements
    # are rebuilt as sum(plane_j << 8 j) in an unsigned integer of their size.
    uint = np.dtype(f"<u{itemsize}")

    def decode(raw: np.ndarray, nraw: int, dest: np.ndarray) -> None:
        try:
            data = deflate.zlib_decompress(raw[:nraw], chunk_bytes)
        except deflate.DeflateError as exc:
            raise ValueError(f"deflate: {exc}") from exc
        planes = np.frombuffer(data, dtype=np.uint8)
        flat = dest.reshape(-1).view(uint)
        if not shuffle or itemsize == 1:
            flat.view(np.uint8)[:] = planes
            return
        planes = planes.reshape(itemsize, -1)
        np.left_shift(planes[itemsize - 1], 8 * (itemsize - 1), out=flat, dtype=uint)
        for j in range(itemsize - 2, -1, -1):
            if j:
                flat |= np.left_shift(planes[j], 8 * j, dtype=uint)
            else:
                flat |= planes[0]

    return decode


def decode_function(pipeline: Pipeline, chunk_bytes: int) -> Decode | None:
    """The host decode function for ``pipeline``, or None where its library is missing."""
    if pipeline.kind == "bitshuffle":
        return _bitshuffle(pipeline.codec, pipeline.itemsize, chunk_bytes)
    return _deflate(pipeline.shuffle, pipeline.itemsize, chunk_bytes)


class ChunkDecoder:
    """Reads frames of one chunked, compressed dataset by decoding its chunks in threads."""

    #: Blocks are decoded into the caller's host buffer (``read``).
    on_device = False

    def __init__(self, dset: h5py.Dataset, decode: Decode, threads: int) -> None:
        self.dset = dset
        self.per_chunk = int(dset.chunks[0])
        self.n_frames = int(dset.shape[0])
        self.itemsize = dset.dtype.itemsize
        self.chunk_bytes = int(np.prod(dset.chunks)) * self.itemsize
        self._decode = decode
        # Raw chunks are at most a little larger than the data (incompressible blocks).
        self._raw_bytes = self.chunk_bytes + self.chunk_bytes // 64 + 4096
        self._local = threading.local()
        self.threads = max(1, threads)
        self._resources = contextlib.ExitStack()
        self._pool: ThreadPoolExecutor | None = None
        #: Raw chunks by file offset (no HDF5 lock); None: through ``read_direct_chunk``.
        self._index: ChunkIndex | None = None
        if self.threads > 1:
            self._pool = self._resources.enter_context(ThreadPoolExecutor(self.threads, "decode"))
            self._index = ChunkIndex.build(dset, self.per_chunk)
            if self._index is not None:
                self._resources.callback(self._index.close)

    @classmethod
    def for_dataset(cls, dset: h5py.Dataset, threads: int) -> ChunkDecoder | None:
        """A decoder when ``dset`` is one this module reads bit for bit like HDF5, else None."""
        pipeline = pipeline_of(dset)
        if pipeline is None:
            return None
        decode = decode_function(pipeline, int(np.prod(dset.chunks)) * dset.dtype.itemsize)
        if decode is None:
            return None
        return cls(dset, decode, threads)

    def _raw(self) -> np.ndarray:
        buf = getattr(self._local, "raw", None)
        if buf is None:
            buf = self._local.raw = np.empty(self._raw_bytes, dtype=np.uint8)
        return buf

    def _scratch(self) -> np.ndarray:
        buf = getattr(self._local, "scratch", None)
        if buf is None:
            buf = self._local.scratch = np.empty(
                (self.per_chunk, *self.dset.shape[1:]), dtype=self.dset.dtype
            )
        return buf

    def _raw_chunk(self, chunk: int) -> tuple[int, np.ndarray, int] | None:
        """(filter mask, buffer, bytes) of one stored chunk; None when none is stored."""
        raw = self._raw()
        got = self._index.read(chunk, raw) if self._index is not None else None
        if got is not None:
            return got[0], raw, got[1]
        first = (chunk * self.per_chunk, 0, 0)
        try:
            try:
                mask, view = self.dset.id.read_direct_chunk(first, out=raw)
                return mask, raw, len(view)
            except ValueError:  # raw chunk larger than our buffer: let h5py allocate it
                mask, data = self.dset.id.read_direct_chunk(first)
                return mask, np.frombuffer(data, dtype=np.uint8), len(data)
        except (OSError, RuntimeError):  # never written (fill value), or unreadable
            return None

    def decode_chunk(self, chunk: int, lo: int, hi: int, out: np.ndarray) -> None:
        """Frames [lo, hi) of HDF5 chunk ``chunk`` (frames relative to it) into ``out``."""
        first = chunk * self.per_chunk
        whole = lo == 0 and hi == self.per_chunk
        dest = out if whole else self._scratch()
        if not dest.flags.c_contiguous:
            raise ValueError(f"chunk {chunk} of {self.dset.name}: destination not contiguous")
        try:
            got = self._raw_chunk(chunk)
            if got is None:
                raise ValueError("no chunk stored")
            mask, raw, nraw = got
            if mask != 0:
                raise ValueError("HDF5 stored this chunk with a filter skipped")
            self._decode(raw, nraw, dest)
        except ValueError:
            # Let HDF5 read it: its data (or fill value) if it can, its own error if not.
            stop = min(first + self.per_chunk, self.n_frames)
            self.dset.read_direct(dest[: stop - first], source_sel=np.s_[first:stop])
        if not whole:
            out[...] = dest[lo:hi]

    def _jobs(self, first: int, out: np.ndarray) -> list[tuple[int, int, int, np.ndarray]]:
        n = out.shape[0]
        c = self.per_chunk
        jobs = []
        pos = first
        while pos < first + n:
            chunk = pos // c
            lo = pos - chunk * c
            hi = min(c, first + n - chunk * c)
            jobs.append((chunk, lo, hi, out[pos - first : pos - first + hi - lo]))
            pos += hi - lo
        return jobs

    def read(self, first: int, out: np.ndarray) -> None:
        """Frames [first, first + len(out)) into ``out`` (C-contiguous, the dataset's dtype)."""
        jobs = self._jobs(first, out)
        if self._pool is None or len(jobs) == 1:
            self._decode_many(jobs)
            return
        # Chunks go in groups, about two per thread and each worth its hand-over.
        per_task = max(1, TASK_BYTES // self.chunk_bytes, -(-len(jobs) // (2 * self.threads)))
        futures = [
            self._pool.submit(self._decode_many, jobs[i : i + per_task])
            for i in range(0, len(jobs), per_task)
        ]
        for f in futures:
            f.result()

    def _decode_many(self, jobs: list[tuple[int, int, int, np.ndarray]]) -> None:
        for job in jobs:
            self.decode_chunk(*job)

    def close(self) -> None:
        """Stop the threads and close the chunk index; later calls decode one by one."""
        self._pool = self._index = None
        self._resources.close()
