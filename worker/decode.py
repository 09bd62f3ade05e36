"""Decoding compressed HDF5 chunks in parallel threads, outside HDF5's lock.

HDF5 runs its filters under one library-wide lock (h5py's ``phil``), so one process
decompresses one chunk at a time, with an allocation and a copy per chunk: about
2.5 GB/s per core for Bitshuffle-LZ4 and 0.35 GB/s for gzip 4 + shuffle, far less than
a GPU reduces. Here each chunk is read raw (``read_direct_chunk``, a short copy under
the lock) and decoded by a library that releases the GIL, so several threads decode
several chunks at once, straight into the caller's buffer:

- Bitshuffle-LZ4/Zstd: the bitshuffle library that ``hdf5plugin`` already ships
  (``libh5bshuf.so`` exports ``bshuf_decompress_lz4``/``_zstd``), through ctypes;
- gzip (deflate), with or without HDF5's byte shuffle: libdeflate (the ``deflate``
  package, ~3x zlib's speed, checks the Adler-32), then the shuffle undone with two
  to eight vectorised passes over the chunk while it is in cache.

Bitshuffle chunks that lie whole in the caller's buffer are read (``pread`` at the
offsets HDF5 reports) and decoded in runs by one compiled loop (numba, ``nogil``) that
calls both C functions itself: one GIL release per run instead of three per chunk. That
takes ~15 us of Python off each 512x512 chunk (192 -> 178 us in one thread) and lets
many threads decode without waiting on each other for the GIL. A chunk the loop cannot
take (unwritten, filter skipped, larger than the buffer, a bad header, a decode error)
ends its run and goes the per-chunk way described next.

Only what is certain to give the same bytes as HDF5 is taken: exactly these filter
pipelines, chunks that hold whole frames, native little-endian order. Anything else
(``ChunkDecoder.for_dataset`` returns None) is read by h5py as before, and a chunk that
HDF5 stored with a filter skipped (filter mask set) is read through h5py too.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import h5py
import numpy as np

try:
    import numba
except ImportError:  # pragma: no cover - exercised where numba is missing
    numba = None  # type: ignore[assignment]

#: HDF5 filter ids: deflate (gzip), byte shuffle, bitshuffle.
DEFLATE_ID = 1
SHUFFLE_ID = 2
BSHUF_ID = 32008
#: Bitshuffle's compression codes (``cd_values[4]``).
BSHUF_LZ4 = 2
BSHUF_ZSTD = 3
#: Bytes of the header bitshuffle puts before compressed data: uint64 BE size, uint32 BE block.
HEADER = 12
#: Uncompressed bytes decoded per thread-pool task at least (chunks are grouped up to it).
TASK_BYTES = 256 * 1024

_lib: ctypes.CDLL | None = None
_lib_lock = threading.Lock()


def _library() -> ctypes.CDLL | None:
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


@functools.cache
def _run_functions_for(codec: int) -> tuple[Any, Any] | None:
    """libc's ``pread`` and bitshuffle's decoder with integer arguments (numba passes
    addresses as integers), or None where runs cannot be decoded in compiled code."""
    lib = _library()
    if (
        numba is None
        or lib is None
        or not sys.platform.startswith("linux")
        or ctypes.sizeof(ctypes.c_void_p) != 8
    ):
        return None
    try:
        # Second handles: their function objects get their own argument types.
        decode = getattr(
            ctypes.CDLL(lib._name),
            "bshuf_decompress_lz4" if codec == BSHUF_LZ4 else "bshuf_decompress_zstd",
        )
        decode.restype = ctypes.c_int64
        decode.argtypes = [ctypes.c_uint64] * 5
        pread = ctypes.CDLL(None).pread
        pread.restype = ctypes.c_int64
        pread.argtypes = [ctypes.c_int32, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_int64]
    except (OSError, AttributeError):
        return None
    return pread, decode


if numba is not None:

    @numba.njit(nogil=True, cache=True)
    def _read_decode_run(  # type: ignore[no-untyped-def]
        pread, decode, fd, offsets, sizes, masks, first, count, raw, dest_at, chunk_bytes, elem_size
    ):
        """Chunks ``first .. first + count - 1``, read at their file offsets into ``raw``
        and decoded to address ``dest_at`` (chunk i of the run at byte i * chunk_bytes);
        returns how many were done before one this loop does not take (the caller takes it).
        """
        raw_at = raw.ctypes.data
        for i in range(count):
            k = first + i
            offset = offsets[k]
            size = sizes[k]
            if offset < 0 or masks[k] != 0 or size < HEADER or size > raw.shape[0]:
                return i
            if pread(fd, raw_at, size, offset) != size:
                return i
            nbytes = 0
            for j in range(8):
                nbytes = (nbytes << 8) | raw[j]
            block = 0
            for j in range(8, 12):
                block = (block << 8) | raw[j]
            if nbytes != chunk_bytes:
                return i
            got = decode(
                raw_at + HEADER,
                dest_at + i * chunk_bytes,
                nbytes // elem_size,
                elem_size,
                block // elem_size,
            )
            if got < 0 or HEADER + got > size:
                return i
        return count


def default_threads() -> int:
    """Decode threads when FRAMESTATS_DECODE_THREADS does not say: the cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


#: Decodes one raw chunk (bytes [0, nraw) of ``raw``) into ``dest`` (C-contiguous).
Decode = Callable[[np.ndarray, int, np.ndarray], None]


def _bitshuffle(codec: int, elem_size: int, chunk_bytes: int) -> Decode | None:
    lib = _library()
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


def _bitshuffle_run_functions(dset: h5py.Dataset) -> tuple[Any, Any] | None:
    """What ``_read_decode_run`` needs for a Bitshuffle-LZ4/Zstd dataset, else None."""
    plist = dset.id.get_create_plist()
    if plist.get_nfilters() != 1:
        return None
    code, _flags, values, _name = plist.get_filter(0)
    if code != BSHUF_ID or len(values) < 5 or values[4] not in (BSHUF_LZ4, BSHUF_ZSTD):
        return None
    return _run_functions_for(int(values[4]))


def _decoder_for(dset: h5py.Dataset, chunk_bytes: int) -> Decode | None:
    """The decode function for ``dset``'s filter pipeline, or None when not one of ours."""
    plist = dset.id.get_create_plist()
    filters = [plist.get_filter(i) for i in range(plist.get_nfilters())]
    codes = [f[0] for f in filters]
    itemsize = dset.dtype.itemsize
    if codes == [BSHUF_ID]:
        values = filters[0][2]
        if len(values) >= 5 and values[4] in (BSHUF_LZ4, BSHUF_ZSTD) and values[2] == itemsize:
            return _bitshuffle(int(values[4]), itemsize, chunk_bytes)
        return None
    if codes == [DEFLATE_ID]:
        return _deflate(False, itemsize, chunk_bytes)
    if codes == [SHUFFLE_ID, DEFLATE_ID] and tuple(filters[0][2])[:1] in ((itemsize,), ()):
        return _deflate(True, itemsize, chunk_bytes)
    return None


class ChunkDecoder:
    """Reads frames of one chunked, compressed dataset by decoding its chunks in threads."""

    def __init__(
        self,
        dset: h5py.Dataset,
        decode: Decode,
        threads: int,
        run_functions: tuple[Any, Any] | None = None,
    ) -> None:
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
        self._pool = ThreadPoolExecutor(self.threads, "decode") if self.threads > 1 else None
        index = self.threads > 1 or run_functions is not None
        self._index = _ChunkIndex.build(dset, self.per_chunk) if index else None
        #: (pread, decoder) for ``_read_decode_run``; None: chunk by chunk only.
        self._runs = run_functions if self._index is not None else None

    @classmethod
    def for_dataset(cls, dset: h5py.Dataset, threads: int) -> ChunkDecoder | None:
        """A decoder when ``dset`` is one this module reads bit for bit like HDF5, else None."""
        if dset.chunks is None or len(dset.shape) != 3 or tuple(dset.chunks[1:]) != dset.shape[1:]:
            return None
        little = dset.dtype.byteorder == "<" or (
            dset.dtype.byteorder in "=|" and sys.byteorder == "little"
        )
        if not dset.dtype.isnative or not little or dset.dtype.kind not in "uif":
            return None
        decode = _decoder_for(dset, int(np.prod(dset.chunks)) * dset.dtype.itemsize)
        if decode is None:
            return None
        return cls(dset, decode, threads, _bitshuffle_run_functions(dset))

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

    def _decode_chunk(self, chunk: int, lo: int, hi: int, out: np.ndarray) -> None:
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
        # Chunks go in runs, about two per thread and each worth its hand-over (~10 us of
        # held GIL; with many threads, fewer hand-overs is what keeps them all busy).
        per_task = max(1, TASK_BYTES // self.chunk_bytes, -(-len(jobs) // (2 * self.threads)))
        futures = [
            self._pool.submit(self._decode_many, jobs[i : i + per_task])
            for i in range(0, len(jobs), per_task)
        ]
        for f in futures:
            f.result()

    def _decode_many(self, jobs: list[tuple[int, int, int, np.ndarray]]) -> None:
        i = 0
        while i < len(jobs):
            done = self._decode_run(jobs, i)
            if done:
                i += done
                continue
            self._decode_chunk(*jobs[i])  # partial, or one the compiled loop does not take
            i += 1

    def _decode_run(self, jobs: list[tuple[int, int, int, np.ndarray]], i: int) -> int:
        """Decode the run of whole chunks starting at ``jobs[i]`` in compiled code; returns
        how many jobs it did (0: ``jobs[i]`` is not one it takes)."""
        if self._runs is None or self._index is None:
            return 0
        end = i
        while end < len(jobs) and jobs[end][1] == 0 and jobs[end][2] == self.per_chunk:
            end += 1
        if end == i:
            return 0
        # Whole chunks in order fill consecutive frames of the caller's contiguous buffer.
        first_dest, last_dest = jobs[i][3], jobs[end - 1][3]
        if not (first_dest.flags.c_contiguous and last_dest.flags.c_contiguous):
            return 0
        dest_at = first_dest.ctypes.data
        if last_dest.ctypes.data + last_dest.nbytes - dest_at != (end - i) * self.chunk_bytes:
            return 0
        pread, decode = self._runs
        index = self._index
        return int(
            _read_decode_run(
                pread,
                decode,
                index.fd,
                index.offsets,
                index.sizes,
                index.masks,
                jobs[i][0],
                end - i,
                self._raw(),
                dest_at,
                self.chunk_bytes,
                self.itemsize,
            )
        )

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self._index is not None:
            self._index.close()
            self._index = None


class _ChunkIndex:
    """Where each chunk of a dataset lies in its file, to read raw chunks with ``pread``.

    ``read_direct_chunk`` holds h5py's lock and the GIL while it copies; with many decode
    threads (a GPU worker) those short holds add up. ``os.preadv`` holds neither. The
    index comes from HDF5 itself (``chunk_iter``), is checked against
    ``read_direct_chunk`` on one chunk, and is used only for plain single files (the
    default driver); anything else reads through HDF5 as before.
    """

    #: Larger datasets read through HDF5 (the index costs ~1 us and 24 bytes per chunk).
    MAX_CHUNKS = 1 << 20

    def __init__(self, fd: int, offsets: np.ndarray, sizes: np.ndarray, masks: np.ndarray):
        self.fd = fd
        self.offsets = offsets
        self.sizes = sizes
        self.masks = masks

    @classmethod
    def build(cls, dset: h5py.Dataset, per_chunk: int) -> _ChunkIndex | None:
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

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
