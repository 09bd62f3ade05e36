"""Helpers the reading tests share: files written by h5py/hdf5plugin, job specs, reads."""

from __future__ import annotations

import importlib.util

import h5py
import hdf5plugin
import numpy as np

from framestats.messages import JobSpec, Segment
from worker.read import FrameReader

DSET = "/entry/data/data"


def make_file(path, frames: np.ndarray, chunk_frames: int | None, **filters) -> str:
    with h5py.File(path, "w") as f:
        chunks = None if chunk_frames is None else (chunk_frames, *frames.shape[1:])
        f.create_dataset(DSET, data=frames, chunks=chunks, **filters)
    return str(path)


def spec_for(segments: list[Segment], frame_shape, dtype) -> JobSpec:
    return JobSpec.for_reading(tuple(segments), tuple(frame_shape), dtype)


def read_all(reader: FrameReader, start: int, stop: int, shape) -> np.ndarray:
    """Frames [start, stop) through ``reader.blocks``, on the host (device blocks copied)."""
    out = np.empty((stop - start, *shape), dtype=reader.dtype)
    for pos, block in reader.blocks(start, stop):
        if hasattr(block, "cpu"):  # a torch tensor, maybe on a GPU
            block = block.cpu().numpy()
        out[pos - start : pos - start + len(block)] = block
    return out


BSLZ4 = dict(hdf5plugin.Bitshuffle(cname="lz4"))
BSZSTD = dict(hdf5plugin.Bitshuffle(cname="zstd"))
GZIP_SHUFFLE = {"compression": "gzip", "compression_opts": 4, "shuffle": True}
GZIP = {"compression": "gzip", "compression_opts": 1}
#: gzip is decoded outside HDF5 only where libdeflate's binding is installed (a
#: dependency here; GPU test machines may run without it and read gzip through HDF5).
HAS_DEFLATE = importlib.util.find_spec("deflate") is not None
DECODED = (BSLZ4, BSZSTD) + ((GZIP_SHUFFLE, GZIP) if HAS_DEFLATE else ())


def decoded(filters: dict) -> bool:
    """Whether the reader's own decoder (not HDF5) should handle these filters here."""
    return any(filters is f for f in DECODED)


def raw_chunks(path, frames: np.ndarray, per: int, **filters) -> list[bytes]:
    """The raw chunks hdf5plugin writes for ``frames`` in chunks of ``per`` frames."""
    make_file(path, frames, per, **(filters or BSLZ4))
    with h5py.File(path, "r") as f:
        d = f[DSET]
        return [d.id.read_direct_chunk((k * per, 0, 0))[1] for k in range(-(-len(frames) // per))]


def chunk_bytes_of(frames: np.ndarray, per: int) -> int:
    return per * frames[0].nbytes
