"""The ctypes binding to nvCOMP's batched LZ4 decompressor.

Without a GPU: the library loads from the wheel and answers its host-side queries
through the declared signatures (the options struct passed by value). On a GPU
(marked ``gpu``): it decodes real Bitshuffle-LZ4 blocks like the host LZ4 library, and
the reader's device path matches HDF5 with it.
"""

from __future__ import annotations

import ctypes
import importlib.util

import numpy as np
import pytest
import torch

from framestats.messages import Segment
from producer.samples import detector_frames
from worker.read import FrameReader, bitshuffle, nvcomp
from worker.read.device_decode import Blocks

from .support import BSLZ4, DSET, make_file, raw_chunks, read_all, spec_for

LIB = nvcomp.load()
needs_lib = pytest.mark.skipif(LIB is None, reason="libnvcomp 6 is not installed ([gpu] extra)")


def test_options_struct_is_nvcomps_size():
    assert ctypes.sizeof(nvcomp.DecompressOpts) == 64


@needs_lib
def test_library_answers_host_side_queries():
    assert LIB is not None
    align = nvcomp.Alignments()
    assert (
        LIB.nvcompBatchedLZ4DecompressGetRequiredAlignments(nvcomp.options(), ctypes.byref(align))
        == 0
    )
    assert align.input == 1, "blocks start at any byte"
    plain = nvcomp.NvcompLZ4(LIB)
    assert plain.temp_bytes(4096, 8192, 4096 * 8192) >= 0
    assert "uccess" in plain.status_text(0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or LIB is None, reason="needs CUDA and nvCOMP")
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "uint32", "float32"])
def test_nvcomp_decodes_blocks_like_lz4(tmp_path, dtype):
    lz4 = pytest.importorskip("lz4.block")
    frames = detector_frames(3, 37, 41, seed=4).astype(dtype)
    raws = raw_chunks(tmp_path / "a.h5", frames, 1)
    buf = np.frombuffer(b"".join(raws), dtype=np.uint8)
    sizes = np.array([len(r) for r in raws])
    at = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    table = bitshuffle.parse(
        buf, at, sizes, np.arange(3) * frames[0].nbytes, frames[0].nbytes, frames.itemsize
    )
    dev = torch.device("cuda")
    comp = torch.from_numpy(buf.copy()).to(dev)
    out = torch.zeros(3 * frames[0].nbytes, dtype=torch.uint8, device=dev)
    n = table.blocks
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64)).to(dev)  # noqa: E731
    actual = torch.zeros(n, dtype=torch.int64, device=dev)
    statuses = torch.full((n,), -1, dtype=torch.int32, device=dev)
    decoder = nvcomp.NvcompLZ4.create()
    assert decoder is not None
    blocks = Blocks(
        comp_ptrs=t(table.comp_offsets + comp.data_ptr()),
        comp_sizes=t(table.comp_sizes),
        out_sizes=t(table.out_sizes),
        out_ptrs=t(table.out_offsets + out.data_ptr()),
        actual=actual,
        statuses=statuses,
        largest=int(table.out_sizes.max()),
        total=int(table.out_sizes.sum()),
    )
    decoder.decompress(blocks, torch.cuda.current_stream().cuda_stream)
    torch.cuda.synchronize()
    assert (statuses == 0).all() and (actual.cpu().numpy() == table.out_sizes).all()
    got = out.cpu().numpy()
    for co, cs, oo, os_ in zip(
        table.comp_offsets, table.comp_sizes, table.out_offsets, table.out_sizes, strict=True
    ):
        want = lz4.decompress(buf[co : co + cs].tobytes(), uncompressed_size=int(os_))
        assert got[oo : oo + os_].tobytes() == want


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or LIB is None, reason="needs CUDA and nvCOMP")
@pytest.mark.parametrize("unshuffle", ["triton", "torch"])
@pytest.mark.parametrize(
    ("dtype", "shape"), [("uint16", (2167, 2070)), ("uint32", (37, 41)), ("float32", (64, 64))]
)
def test_reader_on_the_gpu_matches_hdf5(tmp_path, unshuffle, dtype, shape):
    if unshuffle == "triton" and importlib.util.find_spec("triton") is None:
        pytest.skip("Triton is not installed")
    frames = detector_frames(4, *shape, seed=6).astype(dtype)
    path = make_file(tmp_path / "a.h5", frames, 2, **BSLZ4)
    spec = spec_for([Segment(path, DSET, 0, 4)], shape, dtype)
    reader = FrameReader(
        spec, device="cuda", gpu_decode="on", unshuffle=unshuffle, decode_threads=4, prefetch=True
    )
    try:
        blocks = [(pos, b) for pos, b in reader.blocks(0, 4)]
        assert all(b.is_cuda for _, b in blocks)
        np.testing.assert_array_equal(read_all(reader, 1, 4, shape), frames[1:4])
        assert reader.decode_path == "device"
    finally:
        reader.close()
