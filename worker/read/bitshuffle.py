"""The block table of Bitshuffle chunks (HDF5 filter 32008), parsed and checked on the host.

A chunk as the bitshuffle HDF5 filter writes it (bitshuffle's ``bshuf_h5filter.c`` and
``bshuf_blocked_wrap_fun`` in ``bitshuffle_core.c``):

- a 12-byte header: uint64 big-endian uncompressed bytes, uint32 big-endian block size
  in bytes (0: bitshuffle's default, 8192 bytes' worth of elements, a multiple of 8, at
  least 128);
- per block a uint32 big-endian compressed size, then that many bytes: one raw LZ4 (or
  Zstd) block of the bit-shuffled elements; ``N // block`` full blocks, then one of
  ``N % block`` rounded down to a multiple of 8 elements, if that is not zero;
- the last ``N % 8`` elements stored as they are.

Device decoders trust their input's sizes, so every chunk of a batch is checked here
before any of it reaches one: a header that does not match the chunk's shape, a block
size that bitshuffle would refuse, a block that runs past the chunk's end or is larger
than LZ4 can make of its elements, a tail past the end, bytes left over after the
last block (another block count than the header implies).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import BlockTableError

try:
    import numba
except ImportError:  # pragma: no cover - exercised where numba is missing
    numba = None  # type: ignore[assignment]

#: Bytes of the chunk header.
HEADER = 12
#: Bitshuffle's target block size in bytes and its block-size rules.
TARGET_BLOCK_BYTES = 8192
BLOCKED_MULT = 8
MIN_BLOCK = 128

#: What each of ``_walk``'s error codes means.
REASONS = {
    1: "is shorter than its 12-byte header",
    2: "header's uncompressed size does not match the chunk's shape",
    3: "header's block size is not a positive multiple of 8 elements",
    4: "block table runs past the chunk's end",
    5: "a block's compressed size is zero, past the chunk's end, or larger than LZ4 makes",
    6: "raw tail runs past the chunk's end",
    7: "bytes are left after the last block (another block count than the header implies)",
}


def default_block(itemsize: int) -> int:
    """Bitshuffle's default block size in elements (``bshuf_default_block_size``)."""
    block = (TARGET_BLOCK_BYTES // itemsize) // BLOCKED_MULT * BLOCKED_MULT
    return max(block, MIN_BLOCK)


@dataclass(frozen=True)
class BlockTable:
    """Every compressed block of a batch of chunks and where its elements go.

    Offsets are bytes: ``comp_offsets`` into the buffer the chunks were parsed from,
    ``out_offsets`` into the frame buffer (chunk k's elements start at ``dst[k]``).
    """

    comp_offsets: np.ndarray
    comp_sizes: np.ndarray
    out_offsets: np.ndarray
    out_sizes: np.ndarray
    #: Per chunk: the raw tail's offset in the buffer, in the frames, and its bytes.
    tail_src: np.ndarray
    tail_dst: np.ndarray
    tail_bytes: np.ndarray

    @property
    def blocks(self) -> int:
        return len(self.comp_sizes)


def _walk(buf, at, size, dst, chunk_bytes, itemsize, count_only, counts, table):  # type: ignore[no-untyped-def]
    """Check chunks and fill the table; returns (position of a bad chunk or -1, code).

    ``count_only``: check headers and put each chunk's block count in ``counts``.
    Otherwise ``table`` (7 rows: comp offset, comp size, out offset, out size, tail
    src, tail dst, tail bytes; blocks of chunk k from ``counts[k]`` on) is filled.
    """
    n = chunk_bytes // itemsize
    block_at = 0
    for k in range(at.shape[0]):
        a = at[k]
        end = a + size[k]
        if size[k] < 12:
            return k, 1
        nbytes = 0
        for j in range(8):
            nbytes = (nbytes << 8) | int(buf[a + j])
        block_bytes = 0
        for j in range(8, 12):
            block_bytes = (block_bytes << 8) | int(buf[a + j])
        if nbytes != chunk_bytes:
            return k, 2
        if block_bytes == 0:
            block = max((8192 // itemsize) // 8 * 8, 128)
        elif block_bytes % itemsize != 0:
            return k, 3
        else:
            block = block_bytes // itemsize
        if block <= 0 or block % 8 != 0:
            return k, 3
        last = (n % block) - (n % block) % 8
        blocks = n // block + (1 if last > 0 else 0)
        if count_only:
            counts[k] = blocks
            continue
        p = a + 12
        for i in range(blocks):
            elems = block if i < n // block else last
            out = elems * itemsize
            if p + 4 > end:
                return k, 4
            c = 0
            for j in range(4):
                c = (c << 8) | int(buf[p + j])
            p += 4
            if c == 0 or c > out + out // 255 + 16 or p + c > end:
                return k, 5
            table[0, block_at] = p
            table[1, block_at] = c
            table[2, block_at] = dst[k] + i * block * itemsize
            table[3, block_at] = out
            block_at += 1
            p += c
        tail = (n % 8) * itemsize
        if p + tail > end:
            return k, 6
        table[4, k] = p
        table[5, k] = dst[k] + (n - n % 8) * itemsize
        table[6, k] = tail
        if p + tail != end:
            return k, 7
    return -1, 0


_walk_python = _walk
if numba is not None:
    _walk = numba.njit(nogil=True, cache=True)(_walk)


def parse(
    buf: np.ndarray,
    at: np.ndarray,
    size: np.ndarray,
    dst: np.ndarray,
    chunk_bytes: int,
    itemsize: int,
    compiled: bool = True,
) -> BlockTable:
    """The blocks of chunks ``buf[at[k] : at[k] + size[k]]``, whose elements go to ``dst[k]``.

    Raises ``BlockTableError`` naming the first inconsistent chunk. ``compiled=False``
    runs the same code as plain Python (slow; for tests).
    """
    walk = _walk if compiled else _walk_python
    at = np.ascontiguousarray(at, dtype=np.int64)
    size = np.ascontiguousarray(size, dtype=np.int64)
    dst = np.ascontiguousarray(dst, dtype=np.int64)
    if len(at) and (int(at.min()) < 0 or int((at + size).max()) > len(buf)):
        raise ValueError("chunk outside the buffer")
    counts = np.zeros(len(at), dtype=np.int64)
    empty = np.zeros((7, 0), dtype=np.int64)
    bad, code = walk(buf, at, size, dst, int(chunk_bytes), int(itemsize), True, counts, empty)
    if bad >= 0:
        raise BlockTableError(int(bad), REASONS[int(code)])
    table = np.zeros((7, max(int(counts.sum()), len(at))), dtype=np.int64)
    bad, code = walk(buf, at, size, dst, int(chunk_bytes), int(itemsize), False, counts, table)
    if bad >= 0:
        raise BlockTableError(int(bad), REASONS[int(code)])
    blocks = int(counts.sum())
    return BlockTable(
        comp_offsets=table[0, :blocks],
        comp_sizes=table[1, :blocks],
        out_offsets=table[2, :blocks],
        out_sizes=table[3, :blocks],
        tail_src=table[4, : len(at)],
        tail_dst=table[5, : len(at)],
        tail_bytes=table[6, : len(at)],
    )
