"""The host decoder: only what it reproduces bit for bit, HDF5's data and errors otherwise."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest

from framestats.messages import Segment
from producer.samples import detector_frames
from worker.read import FrameReader
from worker.read.host_decode import ChunkDecoder

from .support import BSLZ4, DSET, GZIP, GZIP_SHUFFLE, decoded, make_file, read_all, spec_for


@pytest.mark.parametrize("filters", [BSLZ4, GZIP_SHUFFLE], ids=["bslz4", "gzip"])
def test_chunk_stored_without_filter_is_read_by_hdf5(tmp_path, filters):
    frames = detector_frames(6, 8, 8, seed=4)
    path = make_file(tmp_path / "a.h5", frames, 1, **filters)
    replacement = (frames[2] + 7).astype(np.uint16)
    with h5py.File(path, "r+") as f:
        # Every filter's bit set: HDF5 stored this chunk as plain bytes.
        f[DSET].id.write_direct_chunk((2, 0, 0), replacement.tobytes(), filter_mask=0b11)
        want = f[DSET][()]
    assert (want[2] == replacement).all()
    spec = spec_for([Segment(path, DSET, 0, 6)], (8, 8), "uint16")
    reader = FrameReader(spec, decode_threads=2)
    try:
        np.testing.assert_array_equal(read_all(reader, 0, 6, (8, 8)), want)
        assert (reader.decode_path == "host") == decoded(filters)
    finally:
        reader.close()


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("filters", [BSLZ4, GZIP_SHUFFLE], ids=["bslz4", "gzip"])
def test_corrupt_chunk_is_an_error_not_wrong_data(tmp_path, filters, threads):
    from framestats.errors import TransientChunkError

    frames = detector_frames(4, 32, 32, seed=5)
    path = make_file(tmp_path / "a.h5", frames, 1, **filters)
    with h5py.File(path, "r+") as f:
        _, raw = f[DSET].id.read_direct_chunk((1, 0, 0))
        bad = bytearray(raw)
        bad[20:] = bytes(len(bad) - 20)  # zeroed LZ4 stream after the headers
        f[DSET].id.write_direct_chunk((1, 0, 0), bytes(bad))
    spec = spec_for([Segment(path, DSET, 0, 4)], (32, 32), "uint16")
    with h5py.File(path, "r") as f:
        try:
            hdf5_read = f[DSET][1]
        except OSError:
            hdf5_read = None
    reader = FrameReader(spec, decode_threads=threads)
    try:
        try:
            got = read_all(reader, 0, 4, (32, 32))
        except TransientChunkError:
            return  # refused, like HDF5 would
        # If the bytes happen to decode, they must decode to what HDF5 reads.
        assert hdf5_read is not None
        np.testing.assert_array_equal(got[1], hdf5_read)
    finally:
        reader.close()


def test_decoder_refuses_what_it_cannot_reproduce(tmp_path):
    frames = detector_frames(4, 8, 8)
    with h5py.File(tmp_path / "a.h5", "w") as f:
        # Chunks that split a frame, and two filters: both left to HDF5.
        split = f.create_dataset("split", data=frames, chunks=(1, 4, 8), **BSLZ4)
        two = f.create_dataset("two", data=frames, chunks=(1, 8, 8), fletcher32=True, **BSLZ4)
        checked = f.create_dataset(
            "checked", data=frames, chunks=(1, 8, 8), fletcher32=True, **GZIP_SHUFFLE
        )
        assert ChunkDecoder.for_dataset(split, 2) is None
        assert ChunkDecoder.for_dataset(two, 2) is None
        assert ChunkDecoder.for_dataset(checked, 2) is None
        assert ChunkDecoder.for_dataset(f.create_dataset("plain", data=frames), 2) is None
    assert os.path.exists(tmp_path / "a.h5")


@pytest.mark.parametrize("dtype", ["int8", "int16", "int32", "int64", "float32", "float64"])
@pytest.mark.parametrize(
    "filters", [GZIP_SHUFFLE, GZIP, BSLZ4], ids=["gzip+shuffle", "gzip", "bslz4"]
)
def test_full_range_values_bit_for_bit(tmp_path, dtype, filters):
    rng = np.random.default_rng(8)
    raw = rng.integers(0, 256, size=(5, 8, 12 * np.dtype(dtype).itemsize), dtype=np.uint8)
    frames = raw.view(dtype)  # every bit pattern: negatives, NaNs, infinities, denormals
    path = make_file(tmp_path / "a.h5", frames, 2, **filters)
    spec = spec_for([Segment(path, DSET, 0, 5)], frames.shape[1:], dtype)
    reader = FrameReader(spec, decode_threads=2)
    try:
        got = read_all(reader, 0, 5, frames.shape[1:])
        np.testing.assert_array_equal(got.view(np.uint8), frames.view(np.uint8))
        assert (reader.decode_path == "host") == decoded(filters)
    finally:
        reader.close()


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("filters", [BSLZ4, GZIP_SHUFFLE], ids=["bslz4", "gzip"])
def test_userblock_and_unwritten_chunks(tmp_path, filters, threads):
    frames = detector_frames(9, 16, 16, seed=9)
    path = str(tmp_path / "a.h5")
    with h5py.File(path, "w", userblock_size=512) as f:
        d = f.create_dataset(
            DSET, shape=frames.shape, dtype=frames.dtype, chunks=(2, 16, 16), **filters
        )
        d[0:4] = frames[0:4]  # chunks 0, 1 written, 2 and 3 never: fill value 0
        d[8:9] = frames[8:9]  # the last, partial chunk
    with h5py.File(path, "r") as f:
        want = f[DSET][()]
    assert (want[4:8] == 0).all()
    spec = spec_for([Segment(path, DSET, 0, 9)], (16, 16), "uint16")
    reader = FrameReader(
        spec, block_bytes=3 * 16 * 16 * 2, decode_threads=threads, prefetch=threads > 1
    )
    try:
        np.testing.assert_array_equal(read_all(reader, 0, 9, (16, 16)), want)
        np.testing.assert_array_equal(read_all(reader, 3, 9, (16, 16)), want[3:9])
        (decoder,) = reader._decoders.values()
        if not decoded(filters):
            return
        # Several threads read raw chunks by file offset (pread, checked against HDF5).
        assert decoder is not None and (decoder._index is not None) == (threads > 1)
    finally:
        reader.close()
