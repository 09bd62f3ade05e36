"""Block tables of Bitshuffle chunks: parsed as bitshuffle writes them, bad ones refused."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from worker.read import bitshuffle
from worker.read.errors import BlockTableError

from .support import chunk_bytes_of, raw_chunks

FIELDS = ("comp_offsets", "comp_sizes", "out_offsets", "out_sizes", "tail_src", "tail_dst")


def parse_all(raws: list[bytes], chunk_bytes: int, itemsize: int, compiled: bool = True):
    buf = np.frombuffer(b"".join(raws), dtype=np.uint8)
    sizes = np.array([len(r) for r in raws])
    at = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    dst = np.arange(len(raws)) * chunk_bytes
    return bitshuffle.parse(buf, at, sizes, dst, chunk_bytes, itemsize, compiled=compiled)


@pytest.mark.parametrize(
    ("dtype", "shape", "per"),
    [
        ("uint16", (3, 37, 41), 1),  # 1517 elements: a short last block and a 5-element tail
        ("uint32", (4, 57, 33), 2),
        ("uint8", (2, 100, 77), 1),
        ("float32", (2, 65, 63), 2),
        ("float64", (2, 9, 13), 1),
        ("uint16", (2, 1, 5), 1),  # fewer than 8 elements: no block, all tail
        ("uint16", (1, 64, 64), 1),  # exactly one full block, no tail
    ],
)
def test_table_covers_every_element_once(tmp_path, dtype, shape, per):
    frames = np.random.default_rng(1).poisson(3, size=shape).astype(dtype)
    raws = raw_chunks(tmp_path / "a.h5", frames, per)
    itemsize = frames.dtype.itemsize
    chunk_bytes = chunk_bytes_of(frames, per)
    table = parse_all(raws, chunk_bytes, itemsize)
    python = parse_all(raws, chunk_bytes, itemsize, compiled=False)
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(table, name), getattr(python, name))
    # Blocks and tails tile each chunk's elements exactly, in order.
    covered = np.zeros(len(raws) * chunk_bytes, dtype=np.int64)
    for off, size in zip(table.out_offsets, table.out_sizes, strict=True):
        covered[off : off + size] += 1
    for off, size in zip(table.tail_dst, table.tail_bytes, strict=True):
        covered[off : off + size] += 1
    assert (covered == 1).all()
    n = chunk_bytes // itemsize
    assert set(table.tail_bytes) == {(n % 8) * itemsize}
    full = bitshuffle.default_block(itemsize) * itemsize
    assert all(s == full or s < full and s % (8 * itemsize) == 0 for s in table.out_sizes)


def test_default_block_size_in_the_header(tmp_path):
    """A header block size of 0 means bitshuffle's default, as its decoder reads it."""
    frames = np.random.default_rng(2).poisson(3, size=(1, 70, 70)).astype(np.uint16)
    (raw,) = raw_chunks(tmp_path / "a.h5", frames, 1)
    assert int.from_bytes(raw[8:12], "big") == bitshuffle.default_block(2) * 2
    zero = raw[:8] + bytes(4) + raw[12:]
    a = parse_all([raw], frames.nbytes, 2)
    b = parse_all([zero], frames.nbytes, 2)
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    with h5py.File(tmp_path / "a.h5", "r+") as f:
        f["/entry/data/data"].id.write_direct_chunk((0, 0, 0), zero)
        np.testing.assert_array_equal(f["/entry/data/data"][()], frames)  # HDF5 agrees


def _corrupt(raw: bytes, how: str) -> bytes:
    first = 12 + 4 + int.from_bytes(raw[12:16], "big")  # end of the first block
    edits = {
        "short": lambda r: r[:11],
        "total": lambda r: (int.from_bytes(r[:8], "big") + 2).to_bytes(8, "big") + r[8:],
        "block size odd": lambda r: r[:8] + (13).to_bytes(4, "big") + r[12:],
        "block size not a multiple of 8 elements": lambda r: (
            r[:8] + (20).to_bytes(4, "big") + r[12:]
        ),
        "truncated table": lambda r: r[: first + 2],
        "block past the end": lambda r: r[:12] + (len(r)).to_bytes(4, "big") + r[16:],
        "zero block": lambda r: r[:12] + bytes(4) + r[16:],
        "block larger than LZ4 makes": lambda r: r[:12] + (9000).to_bytes(4, "big") + r[16:],
        "tail cut": lambda r: r[:-3],
        "trailing bytes": lambda r: r + b"\0\0\0\0",
    }
    return edits[how](raw)


REASON = {
    "short": "shorter than its 12-byte header",
    "total": "does not match the chunk's shape",
    "block size odd": "multiple of 8 elements",
    "block size not a multiple of 8 elements": "multiple of 8 elements",
    "truncated table": "past the chunk's end",
    "block past the end": "compressed size",
    "zero block": "compressed size",
    "block larger than LZ4 makes": "compressed size",
    "tail cut": "past the chunk's end",
    "trailing bytes": "another block count",
}


@pytest.mark.parametrize("compiled", [True, False], ids=["numba", "python"])
@pytest.mark.parametrize("how", sorted(REASON))
def test_inconsistent_chunk_is_refused_naming_it(tmp_path, how, compiled):
    frames = np.random.default_rng(3).poisson(3, size=(3, 37, 41)).astype(np.uint16)
    raws = raw_chunks(tmp_path / "a.h5", frames, 1)
    raws[1] = _corrupt(raws[1], how)
    with pytest.raises(BlockTableError, match=REASON[how]) as err:
        parse_all(raws, chunk_bytes_of(frames, 1), 2, compiled=compiled)
    assert err.value.position == 1


def test_a_chunk_outside_the_buffer_is_a_caller_error():
    with pytest.raises(ValueError, match="outside the buffer"):
        bitshuffle.parse(np.zeros(10, np.uint8), np.array([4]), np.array([12]), np.array([0]), 8, 2)
