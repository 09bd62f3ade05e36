"""Bitshuffle-LZ4 chunks decoded on the device, straight into the frames the reduction reads.

Per block of frames (one call of ``DeviceDecoder.read``):

1. the block's chunks are read from the file in a few large ``pread``s (neighbouring
   chunks merged, ``ChunkIndex.spans``; large spans split over the I/O threads) into
   pinned host memory;
2. every chunk's header and block table are parsed and checked on the host
   (``bitshuffle.parse``): an inconsistent chunk is refused here, before any of it
   reaches the LZ4 decoder, which trusts its sizes;
3. the compressed bytes and one table (block pointers and sizes, unshuffle offsets,
   raw-tail indices) are copied to the device, and on the decoder's own CUDA stream:
   all LZ4 blocks in one batched call (``nvcomp.NvcompLZ4``), the bit-unshuffle of all
   blocks in one kernel (``unshuffle.py``) into the frame buffer, the raw tails copied;
4. when the frames are handed over, the per-block statuses and sizes are checked: a
   block that did not decode to its size fails the job naming its chunk.

Chunks the device cannot take (never written, stored with a filter skipped) are decoded
on the host and copied in. Two slots (staging, device buffers) alternate, so one block
can be read and decoded while the caller reduces the other.

With ``lz4_host.HostLZ4`` in place of nvCOMP and tensors on the CPU the same code runs
without a GPU: that is how it is tested.
"""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import h5py
import numpy as np
import torch

from . import bitshuffle
from .chunk_index import ChunkIndex
from .errors import BlockTableError, ChunkRefused
from .filters import pipeline_of
from .host_decode import ChunkDecoder
from .unshuffle import unshuffle

#: A ``pread`` of more than this is split over the I/O threads.
PREAD_PIECE = 4 << 20
#: Largest block nvCOMP's own bitshuffle mode handles as bitshuffle does (its sub-chunk).
NVCOMP_BITSHUFFLE_BLOCK = 8192
_TORCH = {
    np.dtype("uint8"): torch.uint8,
    np.dtype("int8"): torch.int8,
    np.dtype("uint16"): torch.uint16,
    np.dtype("int16"): torch.int16,
    np.dtype("uint32"): torch.uint32,
    np.dtype("int32"): torch.int32,
    np.dtype("uint64"): torch.uint64,
    np.dtype("int64"): torch.int64,
    np.dtype("float32"): torch.float32,
    np.dtype("float64"): torch.float64,
}


@dataclass(frozen=True)
class Blocks:
    """LZ4 blocks to decode in one call: where each is, how large, where it goes.

    The tensors are int64 (``statuses``: int32), on the decoder's device (host memory for
    ``HostLZ4``); ``actual`` and ``statuses`` are written by the call.
    """

    comp_ptrs: torch.Tensor
    comp_sizes: torch.Tensor
    out_sizes: torch.Tensor
    out_ptrs: torch.Tensor
    actual: torch.Tensor
    statuses: torch.Tensor
    #: Bytes of the largest block and of all blocks once decoded.
    largest: int
    total: int


class BlockDecoder(Protocol):
    """The batched LZ4 call: ``nvcomp.NvcompLZ4`` on a GPU, ``lz4_host.HostLZ4`` on a CPU."""

    name: str
    unshuffles: bool

    def decompress(self, blocks: Blocks, stream: int) -> None: ...


def nvcomp_on(device: str) -> BlockDecoder | None:
    """nvCOMP's batched LZ4 for a CUDA ``device`` where CUDA and nvCOMP 6 are there."""
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return None
    from .nvcomp import NvcompLZ4

    return NvcompLZ4.create()


def _grow(
    t: torch.Tensor | None, n: int, dtype: torch.dtype, device: Any, pin: bool = False
) -> torch.Tensor:
    """``t`` if it holds ``n`` elements, else a new empty tensor (reused across blocks)."""
    if t is not None and t.numel() >= n:
        return t
    # Some room, so slowly growing blocks reallocate rarely; whole 64-byte lines, so any
    # element type can view it.
    size = -(-(max(n, 1) + max(n, 1) // 8) // 64) * 64
    return torch.empty(size, dtype=dtype, device=device, pin_memory=pin)


@dataclass
class _Slot:
    """The buffers of one block in flight, and what is left to check when it is handed over."""

    staging: torch.Tensor | None = None
    table_host: torch.Tensor | None = None
    flag_host: torch.Tensor | None = None
    comp: torch.Tensor | None = None
    frames: torch.Tensor | None = None
    scratch: torch.Tensor | None = None
    table: torch.Tensor | None = None
    statuses: torch.Tensor | None = None
    #: Recorded on the decode stream after this slot's work (CUDA only).
    done: Any = None
    #: Recorded on the consumer's stream when it was done with this slot's frames.
    released: Any = None
    #: (chunk numbers, first block of each chunk, blocks) of the work to check.
    check: tuple[np.ndarray, np.ndarray, int] | None = None


@dataclass
class _Batch:
    """A block staged for decoding: its slot, frames, chunks and block table."""

    slot: _Slot
    first: int
    n: int
    c0: int
    chunks: np.ndarray
    starts: np.ndarray
    left: list[int]
    table: bitshuffle.BlockTable
    tails: int
    out_base: torch.Tensor


class DeviceDecoder:
    """Reads frames of one Bitshuffle-LZ4 dataset, decoding its chunks on ``device``."""

    #: Blocks come back as tensors on the device (``read``), not in host buffers.
    on_device = True

    def __init__(
        self,
        dset: h5py.Dataset,
        index: ChunkIndex,
        lz4: BlockDecoder,
        device: torch.device,
        strategy: str = "triton",
        io_threads: int = 1,
        host: ChunkDecoder | None = None,
    ) -> None:
        self.dset = dset
        self.index = index
        self.lz4 = lz4
        self.device = device
        #: Unshuffle strategy (``unshuffle.STRATEGIES``); ignored where nvCOMP unshuffles.
        self.strategy = strategy
        self.per_chunk = int(dset.chunks[0])
        self.frame_shape = tuple(int(s) for s in dset.shape[1:])
        self.itemsize = dset.dtype.itemsize
        self.dtype = _TORCH[np.dtype(dset.dtype).newbyteorder("=")]
        self.chunk_bytes = int(np.prod(dset.chunks)) * self.itemsize
        self.cuda = device.type == "cuda"
        self.stream = torch.cuda.Stream(device) if self.cuda else None
        self._resources = contextlib.ExitStack()
        self._io: ThreadPoolExecutor | None = None
        if io_threads > 1:
            self._io = self._resources.enter_context(ThreadPoolExecutor(io_threads, "pread"))
        self.io_threads = io_threads
        #: Decodes chunks the device path does not take (unwritten, filter skipped).
        self._host = host
        if host is not None:
            self._resources.callback(host.close)
        self._slots = [_Slot(), _Slot()]

    @classmethod
    def for_dataset(
        cls,
        dset: h5py.Dataset,
        lz4: BlockDecoder,
        device: torch.device,
        strategy: str = "triton",
        io_threads: int = 1,
    ) -> DeviceDecoder | None:
        """A decoder when ``dset`` is Bitshuffle-LZ4 this path reads bit for bit, else None."""
        pipeline = pipeline_of(dset)
        if pipeline is None or not pipeline.bitshuffle_lz4:
            return None
        if np.dtype(dset.dtype).newbyteorder("=") not in _TORCH:
            return None
        index = ChunkIndex.build(dset, int(dset.chunks[0]))
        if index is None:
            return None
        host = ChunkDecoder.for_dataset(dset, 1)
        return cls(dset, index, lz4, device, strategy, io_threads, host)

    # -- host side ---------------------------------------------------------------------

    def _stage(self, slot: _Slot, c0: int, c1: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """Read the stored chunks among [c0, c1) into the slot's staging memory.

        Returns (chunk numbers, their offsets in staging) and the chunks left for the host.
        """
        spans = self.index.spans(c0, c1)
        total = sum(s.size for s in spans)
        if slot.done is not None:
            slot.done.synchronize()  # its last upload out of staging has finished
        slot.staging = _grow(slot.staging, total, torch.uint8, "cpu", self.cuda)
        buf = slot.staging.numpy()
        pieces: list[tuple[int, memoryview]] = []
        chunks: list[int] = []
        where: list[int] = []
        at = 0
        for span in spans:
            view = memoryview(buf[at : at + span.size])  # type: ignore[arg-type]
            for lo in range(0, span.size, PREAD_PIECE):
                pieces.append((span.offset + lo, view[lo : lo + PREAD_PIECE]))
            for k in range(span.first, span.stop):
                chunks.append(k)
                where.append(at + int(self.index.offsets[k]) - span.offset)
            at += span.size
        if self._io is not None and len(pieces) > 1:
            list(self._io.map(lambda p: self.index.pread(*p), pieces))
        else:
            for offset, view in pieces:
                self.index.pread(offset, view)
        taken = set(chunks)
        left = [k for k in range(c0, c1) if k not in taken]
        return np.array(chunks, dtype=np.int64), np.array(where, dtype=np.int64), left

    def _parse(
        self, slot: _Slot, chunks: np.ndarray, where: np.ndarray, c0: int
    ) -> bitshuffle.BlockTable:
        assert slot.staging is not None
        sizes = self.index.sizes[chunks]
        dst = (chunks - c0) * self.chunk_bytes
        try:
            return bitshuffle.parse(
                slot.staging.numpy(), where, sizes, dst, self.chunk_bytes, self.itemsize
            )
        except BlockTableError as exc:
            raise ChunkRefused(int(chunks[exc.position]), exc.reason) from exc

    # -- device side -------------------------------------------------------------------

    def read(self, first: int, n: int, slot_no: int) -> torch.Tensor:
        """Enqueue frames [first, first + n) into slot ``slot_no``; returns their tensor.

        The tensor is ready once ``ready(slot_no)`` returned, and stays valid until the
        slot is read into again.
        """
        return self.decode(self.stage(first, n, slot_no))

    def _on_stream(self) -> contextlib.ExitStack:
        """Work enqueued inside runs on the decoder's device and stream (any thread)."""
        stack = contextlib.ExitStack()
        if self.stream is not None:
            stack.enter_context(torch.cuda.device(self.device))
            stack.enter_context(torch.cuda.stream(self.stream))
        return stack

    def stage(self, first: int, n: int, slot_no: int) -> _Batch:
        """Read, check and upload the chunks of frames [first, first + n) (``read``'s first half)."""
        slot = self._slots[slot_no]
        c0 = first // self.per_chunk
        c1 = -(-(first + n) // self.per_chunk)
        chunks, where, left = self._stage(slot, c0, c1)
        table = self._parse(slot, chunks, where, c0)
        nb = table.blocks
        tail_src = _expand(table.tail_src, table.tail_bytes)
        tail_dst = _expand(table.tail_dst, table.tail_bytes)
        t = len(tail_src)
        staged = int(where[-1] + self.index.sizes[chunks[-1]]) if len(chunks) else 0
        frame_bytes = (c1 - c0) * self.chunk_bytes
        dev = self.device
        size = 6 * nb + 2 * t
        table_host = slot.table_host = _grow(slot.table_host, size, torch.int64, "cpu", self.cuda)
        d = slot.table = _grow(slot.table, size, torch.int64, dev)
        comp = slot.comp = _grow(slot.comp, staged, torch.uint8, dev)
        frames = slot.frames = _grow(slot.frames, frame_bytes, torch.uint8, dev)
        slot.statuses = _grow(slot.statuses, nb, torch.int32, dev)
        staging = slot.staging
        assert staging is not None
        fused = self.lz4.unshuffles
        if fused and nb and int(table.out_sizes.max()) > NVCOMP_BITSHUFFLE_BLOCK:
            raise RuntimeError("nvCOMP's bitshuffle mode takes blocks of at most 8 KiB")
        if not fused:
            slot.scratch = _grow(slot.scratch, frame_bytes, torch.uint8, dev)
        out_base = frames if fused else slot.scratch
        assert out_base is not None
        host = table_host.numpy()
        host[0:nb] = table.comp_offsets + comp.data_ptr()
        host[nb : 2 * nb] = table.comp_sizes
        host[2 * nb : 3 * nb] = table.out_sizes
        host[3 * nb : 4 * nb] = table.out_offsets + out_base.data_ptr()
        host[4 * nb : 5 * nb] = table.out_offsets
        host[5 * nb : 6 * nb] = 0
        host[6 * nb : 6 * nb + t] = tail_src
        host[6 * nb + t : size] = tail_dst
        with self._on_stream():
            if slot.released is not None:
                self.stream.wait_event(slot.released)  # type: ignore[union-attr]
            d[:size].copy_(table_host[:size], non_blocking=True)
            comp[:staged].copy_(staging[:staged], non_blocking=True)
        # First block of each chunk (a chunk of fewer than 8 elements has none).
        bounds = (chunks - c0) * self.chunk_bytes
        starts = np.searchsorted(table.out_offsets, bounds, "left").astype(np.int64)
        return _Batch(slot, first, n, c0, chunks, starts, left, table, t, out_base)

    def decode(self, batch: _Batch) -> torch.Tensor:
        """Decode a staged batch on the device (``read``'s second half); its frames."""
        slot, table, nb, t = batch.slot, batch.table, batch.table.blocks, batch.tails
        d, frames, statuses, comp = slot.table, slot.frames, slot.statuses, slot.comp
        assert d is not None and frames is not None and statuses is not None and comp is not None
        with self._on_stream():
            if nb:
                lz4_blocks = Blocks(
                    comp_ptrs=d[0:nb],
                    comp_sizes=d[nb : 2 * nb],
                    out_sizes=d[2 * nb : 3 * nb],
                    out_ptrs=d[3 * nb : 4 * nb],
                    actual=d[5 * nb : 6 * nb],
                    statuses=statuses[:nb],
                    largest=int(table.out_sizes.max()),
                    total=int(table.out_sizes.sum()),
                )
                self.lz4.decompress(lz4_blocks, self.stream.cuda_stream if self.stream else 0)
                if not self.lz4.unshuffles:
                    unshuffle(
                        batch.out_base,
                        frames,
                        d[4 * nb : 5 * nb],
                        d[2 * nb : 3 * nb],
                        self.itemsize,
                        self.strategy,
                        host_sizes=table.out_sizes,
                    )
            if t:
                frames[d[6 * nb + t : 6 * nb + 2 * t]] = comp[d[6 * nb : 6 * nb + t]]
            for k in batch.left:
                at = (k - batch.c0) * self.chunk_bytes
                self._host_chunk(k, frames[at : at + self.chunk_bytes])
            if nb:
                bad = (statuses[:nb] != 0) | (d[5 * nb : 6 * nb] != d[2 * nb : 3 * nb])
                slot.flag_host = _grow(slot.flag_host, 1, torch.int32, "cpu", self.cuda)
                slot.flag_host[:1].copy_(bad.any().to(torch.int32).reshape(1), non_blocking=True)
            if self.stream is not None:
                slot.done = self.stream.record_event()
        slot.check = (batch.chunks, batch.starts, nb)
        frame = self.chunk_bytes // self.per_chunk
        skip = (batch.first - batch.c0 * self.per_chunk) * frame
        raw = frames[skip : skip + batch.n * frame]
        return raw.view(self.dtype).view(batch.n, *self.frame_shape)

    def _host_chunk(self, chunk: int, out: torch.Tensor) -> None:
        """One chunk decoded on the host (or read by HDF5) and copied to ``out``."""
        arr = np.empty((self.per_chunk, *self.frame_shape), dtype=self.dset.dtype)
        if self._host is not None:
            self._host.decode_chunk(chunk, 0, self.per_chunk, arr)
        else:
            first = chunk * self.per_chunk
            stop = min(first + self.per_chunk, int(self.dset.shape[0]))
            self.dset.read_direct(arr[: stop - first], source_sel=np.s_[first:stop])
        out.copy_(torch.from_numpy(arr.reshape(-1).view(np.uint8)))

    def ready(self, slot_no: int) -> None:
        """Wait for the slot's frames; a block that did not decode raises ``ChunkRefused``."""
        slot = self._slots[slot_no]
        if slot.done is not None:
            slot.done.synchronize()
        check, slot.check = slot.check, None
        if check is None or not check[2]:
            return
        assert slot.flag_host is not None and slot.statuses is not None and slot.table is not None
        if not int(slot.flag_host[0]):
            return
        chunks, starts, nb = check
        statuses = slot.statuses[:nb].cpu().numpy()
        actual = slot.table[5 * nb : 6 * nb].cpu().numpy()
        want = slot.table[2 * nb : 3 * nb].cpu().numpy()
        bad = int(np.flatnonzero((statuses != 0) | (actual != want))[0])
        chunk = int(chunks[np.searchsorted(starts, bad, "right") - 1])
        reason = (
            f"LZ4 block {bad - int(starts[np.searchsorted(starts, bad, 'right') - 1])} did not"
            f" decode (status {int(statuses[bad])}, {int(actual[bad])} of {int(want[bad])} bytes)"
        )
        raise ChunkRefused(chunk, reason)

    def release(self, slot_no: int) -> None:
        """The caller is done with the slot's frames (called in the caller's thread)."""
        if self.cuda:
            self._slots[slot_no].released = torch.cuda.current_stream(self.device).record_event()

    def close(self) -> None:
        """Finish the device's work, stop the threads and close the host decoder."""
        self._io = self._host = None
        if self.stream is not None:
            self.stream.synchronize()
        self._resources.close()
        self.index.close()
        self._slots = [_Slot(), _Slot()]


def _expand(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Byte indices ``starts[k] + 0 .. lengths[k] - 1`` of every k, concatenated."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    base = np.repeat(starts - np.cumsum(lengths) + lengths, lengths)
    return (base + np.arange(total)).astype(np.int64)
