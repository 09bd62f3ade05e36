"""Reading a job's frames from HDF5 into reused buffers, decoded where it pays most.

Blocks follow the dataset's HDF5 chunking along the frame axis, so every compressed
chunk is decoded once. Each dataset is read by one of three paths, chosen when it is
first opened and reported in ``FrameReader.decode_path`` (and logged once per job):

- ``"device"``: Bitshuffle-LZ4 chunks decoded on the GPU (``device_decode``), for a
  worker on a CUDA device with nvCOMP installed, unless FRAMESTATS_GPU_DECODE=off;
  blocks are torch tensors on that device, in the job's dtype;
- ``"host"``: chunks decoded on the host's cores outside HDF5's lock (``host_decode``:
  Bitshuffle-LZ4/Zstd, gzip with or without shuffle) into reused host buffers;
- ``"hdf5"``: everything else, read by HDF5 (``read_direct``), or with ``os.preadv`` at
  its file offset when it is a contiguous dataset in the job's dtype (no filter; a
  file that ends early is then an error, where HDF5 reads zeros).

Host buffers outlive the reader (``buffers.POOL``). With ``prefetch`` the next block is
read while the caller reduces the current one: it pays where reading and reducing use
different resources (a GPU worker), not where one core does both.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import h5py
import hdf5plugin  # noqa: F401  (registers Bitshuffle-LZ4, LZ4, Blosc, Zstd, ... with HDF5)
import numpy as np

from framestats.errors import PermanentChunkError, TransientChunkError
from framestats.inputs.reach import check_reach, open_dataset
from framestats.jobdir import pread_full
from framestats.messages import JobSpec, Segment
from framestats.paths import check_allowed
from framestats.settings import Settings

from .buffers import POOL, BufferProvider
from .errors import ChunkRefused
from .host_decode import ChunkDecoder, default_threads

if TYPE_CHECKING:  # torch is imported only where a dataset is decoded on a device
    from .device_decode import BlockDecoder, DeviceDecoder

#: Upper bound for one read; blocks are whole HDF5 chunks, at least one.
DEFAULT_BLOCK_BYTES = 32 * 1024 * 1024
#: The same for blocks decoded on the device (larger batches keep a GPU busy).
DEVICE_BLOCK_BYTES = 128 * 1024 * 1024
#: Decode paths, per dataset (``FrameReader.decode_paths``).
DEVICE, HOST, HDF5 = "device", "host", "hdf5"
#: FRAMESTATS_GPU_DECODE values.
GPU_DECODE_CHOICES = ("auto", "on", "off")

log = logging.getLogger("framestats.worker.read")


def _unshuffle_for(device: str) -> str:
    from .unshuffle import default_strategy

    return default_strategy(device)


#: A planned block: (global first frame, frames, segment, dataset, dataset index).
_Item = tuple[int, int, Segment, h5py.Dataset, int]
#: A fetched block: (global first frame, frames, device work to wait for or None).
_Block = tuple[int, Any, Any]


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
        device: str = "cpu",
        gpu_decode: str = "off",
        block_decoder: BlockDecoder | None = None,
        unshuffle: str | None = None,
        device_block_bytes: int = DEVICE_BLOCK_BYTES,
    ) -> None:
        self.spec = spec
        self.data_root = data_root
        self.block_bytes = block_bytes
        self.dtype = np.dtype(spec.dtype).newbyteorder("=")
        #: Threads decoding chunks on the host or reading them for the device (0: HDF5).
        self.decode_threads = decode_threads
        self.prefetch = prefetch
        #: Supplies the buffers blocks are read into; None (or it returning None): our own.
        self.buffers = buffers
        #: The device blocks decoded there are on (with ``gpu_decode``).
        self.device = device
        if gpu_decode not in GPU_DECODE_CHOICES:
            raise ValueError(f"FRAMESTATS_GPU_DECODE must be one of {GPU_DECODE_CHOICES}")
        self.gpu_decode = gpu_decode
        self.device_block_bytes = device_block_bytes
        #: The batched LZ4 decoder of the device path; None: no device path.
        self.block_decoder = self._block_decoder(block_decoder)
        #: Unshuffle strategy of the device path (``unshuffle.STRATEGIES``).
        self.unshuffle = unshuffle or (_unshuffle_for(device) if self.block_decoder else "")
        #: Decode path of each dataset opened so far, by (path, dataset).
        self.decode_paths: dict[tuple[str, str], str] = {}
        self._files: dict[str, h5py.File] = {}
        #: Datasets opened (links checked once), by (path, dataset).
        self._dsets: dict[tuple[str, str], h5py.Dataset] = {}
        self._decoders: dict[tuple[str, str], ChunkDecoder | DeviceDecoder | None] = {}
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
        settings: Settings | None = None,
        device: str = "cpu",
        buffers: BufferProvider | None = None,
        gpu_decode: str | None = None,
    ) -> FrameReader:
        """A reader tuned for a worker on ``device`` (``settings``: DATA_ROOT,
        FRAMESTATS_DECODE_THREADS, FRAMESTATS_PREFETCH, FRAMESTATS_GPU_DECODE, which
        ``gpu_decode`` overrides).

        A GPU worker decodes on the device where it can, else on every core it may use,
        and prefetches; a CPU worker (one process per core) decodes in its own thread
        (faster than HDF5's filter pipeline) and does not prefetch.
        """
        settings = settings or Settings()
        gpu = not str(device).startswith("cpu")
        threads = settings.decode_threads
        if threads is None:
            threads = default_threads() if gpu else 1
        return cls(
            spec,
            settings.data_root,
            decode_threads=threads,
            prefetch=gpu if settings.prefetch is None else settings.prefetch,
            buffers=buffers,
            device=str(device),
            gpu_decode=(gpu_decode or settings.gpu_decode) if gpu else "off",
        )

    def _block_decoder(self, given: BlockDecoder | None) -> BlockDecoder | None:
        """The LZ4 stage of the device path: ``given``, else nvCOMP on a CUDA device."""
        if self.gpu_decode == "off" or given is not None:
            return given
        from .device_decode import nvcomp_on

        found = nvcomp_on(self.device)
        if found is None and self.gpu_decode == "on":
            raise TransientChunkError(
                f"FRAMESTATS_GPU_DECODE=on, but this worker ({self.device}) cannot decode on "
                "the device: it needs CUDA and nvCOMP 6 (pip install 'framestats[gpu]')"
            )
        return found

    @property
    def decode_path(self) -> str | None:
        """How this job's frames are decoded: "device", "host" or "hdf5" ("+"-joined when
        its datasets differ); None before the first block is read."""
        paths = list(dict.fromkeys(self.decode_paths.values()))
        return "+".join(paths) if paths else None

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

    def _decoder(self, seg: Segment, dset: h5py.Dataset) -> ChunkDecoder | DeviceDecoder | None:
        key = (seg.path, seg.dataset)
        if key in self._decoders:
            return self._decoders[key]
        decoder: ChunkDecoder | DeviceDecoder | None = None
        same = self.dtype == dset.dtype
        if same and self.block_decoder is not None and self.decode_threads > 0:
            import torch

            from .device_decode import DeviceDecoder

            decoder = DeviceDecoder.for_dataset(
                dset,
                self.block_decoder,
                torch.device(self.device),
                self.unshuffle,
                io_threads=self.decode_threads,
            )
        if decoder is None and same and self.decode_threads > 0:
            decoder = ChunkDecoder.for_dataset(dset, self.decode_threads)
        self._decoders[key] = decoder
        path = DEVICE if decoder is not None and decoder.on_device else HOST if decoder else HDF5
        self._note_path(seg, path)
        return decoder

    def _note_path(self, seg: Segment, path: str) -> None:
        """Record a dataset's decode path; log it when the job had not used it yet."""
        key = (seg.path, seg.dataset)
        if key in self.decode_paths:
            return
        if path not in self.decode_paths.values():
            details = {
                DEVICE: f"{getattr(self.block_decoder, 'name', '?')}, {self.unshuffle} unshuffle",
                HOST: f"{self.decode_threads} threads",
                HDF5: "HDF5's filters or plain reads",
            }
            log.info(
                "job %s: %s:%s decoded by %s (%s)",
                self.spec.job_id,
                seg.path,
                seg.dataset,
                path,
                details[path],
            )
        self.decode_paths[key] = path

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

    def block_frames(self, dset: h5py.Dataset, on_device: bool = False) -> int:
        per_chunk = int(dset.chunks[0]) if dset.chunks else 1
        frame_bytes = self.dtype.itemsize * self.spec.frame_shape[0] * self.spec.frame_shape[1]
        budget = self.device_block_bytes if on_device else self.block_bytes
        chunks = max(1, budget // max(1, frame_bytes * per_chunk))
        return chunks * per_chunk

    def _plan(self, start: int, stop: int) -> Iterator[tuple[int, int, Segment, h5py.Dataset, int]]:
        """(global first frame, frames, segment, dataset, dataset index) of each block."""
        for seg in self.spec.segments:
            lo, hi = max(start, seg.start), min(stop, seg.start + seg.count)
            if lo >= hi:
                continue
            dset = self._dataset(seg)
            if seg.step == 1:
                decoder = self._decoder(seg, dset)
                on_device = decoder is not None and decoder.on_device
            else:
                self._note_path(seg, HDF5)
                on_device = False
            step_frames = self.block_frames(dset, on_device)
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

    def _fetch(self, item: _Item, slot: int, host_slot: int) -> _Block:
        """Read one block: into a host buffer, or enqueued on the device (see ``_ready``)."""
        pos, n, seg, dset, first = item
        decoder = self._decoder(seg, dset) if seg.step == 1 else None
        if decoder is not None and not isinstance(decoder, ChunkDecoder):
            try:
                return pos, decoder.read(first, n, slot), (decoder, slot, item)
            except ChunkRefused as exc:
                raise self._refused(item, exc) from exc
            except (OSError, RuntimeError, ValueError) as exc:
                raise self._unreadable(item, exc) from exc
        buf = self._buffer_for(n, host_slot)
        self._read(pos, n, seg, dset, first, buf)
        return pos, buf, None

    def _ready(self, got: _Block) -> tuple[int, Any]:
        """The block, once its device work has finished and checked out."""
        pos, block, pending = got
        if pending is not None:
            decoder, slot, item = pending
            try:
                decoder.ready(slot)
            except ChunkRefused as exc:
                raise self._refused(item, exc) from exc
            except RuntimeError as exc:  # a CUDA error: another try may succeed
                raise self._unreadable(item, exc) from exc
        return pos, block

    def _refused(self, item: _Item, exc: ChunkRefused) -> PermanentChunkError:
        """The job's error for a chunk the device path refused: it names the chunk."""
        pos, n, seg, dset, first = item
        per = int(dset.chunks[0])
        a, b = exc.chunk * per, min((exc.chunk + 1) * per, int(dset.shape[0]))
        lo, hi = max(pos, pos + a - first), min(pos + n, pos + b - first)
        return PermanentChunkError(
            f"chunk {exc.chunk} of {seg.path}:{seg.dataset} (dataset frames {a}-{b}, job "
            f"frames {lo}-{hi}) cannot be decoded: {exc.reason}",
            frames=(lo, hi),
        )

    @staticmethod
    def _unreadable(item: _Item, exc: Exception) -> TransientChunkError:
        pos, n, seg, _dset, first = item
        return TransientChunkError(
            f"cannot read frames {pos}-{pos + n} ({seg.path}:{seg.dataset}[{first}:"
            f"{first + n * seg.step}]): {exc}",
            frames=(pos, pos + n),
        )

    def _read(
        self, pos: int, n: int, seg: Segment, dset: h5py.Dataset, first: int, buf: np.ndarray
    ) -> None:
        """Read one block into ``buf`` on the host."""
        decoder = self._decoder(seg, dset) if seg.step == 1 else None
        direct = self._contiguous(seg, dset) if seg.step == 1 and decoder is None else None
        try:
            if isinstance(decoder, ChunkDecoder):
                decoder.read(first, buf)
            elif direct is not None:
                self._pread(direct, first, buf)
            else:
                dset.read_direct(buf, source_sel=np.s_[first : first + n * seg.step : seg.step])
        except (OSError, RuntimeError, ValueError) as exc:
            raise self._unreadable((pos, n, seg, dset, first), exc) from exc

    @staticmethod
    def _pread(direct: tuple[int, int], first: int, buf: np.ndarray) -> None:
        """Read frames ``first...`` of a contiguous dataset into ``buf``.

        A file that ends early (truncated, or still being written) is an OSError: HDF5's
        own read fills the missing bytes with zeros and says nothing.
        """
        fd, offset = direct
        view = buf.data.cast("B")
        done = pread_full(fd, view, offset + first * buf[0].nbytes)
        if done < view.nbytes:
            raise OSError(f"the file ends {view.nbytes - done} bytes before these frames do")

    def blocks(self, start: int, stop: int) -> Iterator[tuple[int, Any]]:
        """Yield (global first frame, frames) covering [start, stop); the arrays are reused.

        Frames are a numpy array on the host, or a torch tensor on the device for a
        dataset decoded there. A yielded block stays valid until the next one is asked
        for, and not after the iteration ends (its memory goes back to the process's
        pool). With a buffer provider, host blocks are read into the arrays it hands out
        (one call per block, in block order, from the prefetch thread when prefetching).
        """
        if not self.prefetch:
            try:
                for i, item in enumerate(self._plan(start, stop)):
                    self._release_slot(i % 2)
                    yield self._ready(self._fetch(item, i % 2, 0))
            finally:
                self._release()
            return
        if self._io is None:
            self._io = ThreadPoolExecutor(1, "prefetch")
        io = self._io
        plan = self._plan(start, stop)

        def read(slot: int) -> _Block | None:
            item = next(plan, None)
            return None if item is None else self._fetch(item, slot, slot)

        slot = 0
        pending: Future[_Block | None] = io.submit(read, slot)
        try:
            while True:
                got = pending.result()
                if got is None:
                    return
                slot ^= 1
                self._release_slot(slot)
                pending = io.submit(read, slot)  # the caller is done with this slot's last block
                yield self._ready(got)
        finally:
            pending.cancel()
            try:
                pending.result()
            except BaseException:  # already failing or closed: its error is not the news
                pass
            self._release()

    def _release_slot(self, slot: int) -> None:
        """The caller is done with the blocks in ``slot`` (device decoders: on its stream)."""
        for decoder in self._decoders.values():
            if decoder is not None and not isinstance(decoder, ChunkDecoder):
                decoder.release(slot)

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
