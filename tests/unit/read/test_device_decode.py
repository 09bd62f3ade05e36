"""The device decode path, run whole on the CPU with a host LZ4 decoder in nvCOMP's place.

Everything but the nvCOMP call is the production code: chunk index and merged reads,
block-table checks, the batched LZ4 call's arguments, unshuffle into the frame buffer,
raw tails, chunks left to the host, per-block status checks, the reader's slots.
"""

from __future__ import annotations

import importlib.util

import h5py
import numpy as np
import pytest
import torch

from framestats.errors import PermanentChunkError, TransientChunkError
from framestats.messages import Segment
from framestats.settings import Settings
from producer.samples import detector_frames
from worker.read import FrameReader
from worker.read.lz4_host import HostLZ4

from .support import BSLZ4, BSZSTD, DSET, GZIP_SHUFFLE, make_file, read_all, spec_for

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("lz4") is None, reason="the lz4 package stands in for nvCOMP"
)


class CountingLZ4(HostLZ4):
    """HostLZ4 that counts the blocks it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = 0

    def decompress(self, blocks, stream) -> None:  # type: ignore[no-untyped-def]
        self.blocks += blocks.comp_ptrs.numel()
        super().decompress(blocks, stream)


def device_reader(spec, **kw) -> FrameReader:
    kw.setdefault("block_decoder", HostLZ4())
    kw.setdefault("unshuffle", "torch")
    return FrameReader(spec, device="cpu", gpu_decode="on", **kw)


def frames_of(n: int, h: int, w: int, dtype: str, seed: int = 3) -> np.ndarray:
    frames = detector_frames(n, h, w, dtype=np.uint16, seed=seed).astype(dtype)
    if frames.dtype.kind == "f":
        frames[1, 2, 3] = np.nan
        frames[0, 0, :4] = [np.inf, -np.inf, -0.0, 1e-42]
    return frames


@pytest.mark.parametrize("prefetch", [False, True])
@pytest.mark.parametrize(
    ("dtype", "shape", "per"),
    [
        ("uint16", (24, 40), 1),
        ("uint16", (37, 41), 3),  # odd shape: short last block and a raw tail per chunk
        ("uint8", (37, 41), 2),
        ("uint32", (33, 57), 1),
        ("float32", (33, 57), 2),
        ("int16", (24, 40), 4),
    ],
)
def test_device_path_matches_h5py_bit_for_bit(tmp_path, prefetch, dtype, shape, per):
    frames = frames_of(11, *shape, dtype)
    path = make_file(tmp_path / "a.h5", frames, per, **BSLZ4)
    spec = spec_for([Segment(path, DSET, 0, 11)], shape, dtype)
    # Blocks of a few chunks, so that blocks start and end inside and across chunks.
    lz4 = CountingLZ4()
    reader = device_reader(
        spec, block_decoder=lz4, prefetch=prefetch, device_block_bytes=2 * per * frames[0].nbytes
    )
    try:
        for start, stop in [(0, 11), (1, 10), (4, 5), (10, 11)]:
            kinds = {(type(b), str(b.dtype)) for _, b in reader.blocks(start, stop)}
            assert kinds == {(torch.Tensor, f"torch.{dtype}")}
            got = read_all(reader, start, stop, shape)
            np.testing.assert_array_equal(got.view(np.uint8), frames[start:stop].view(np.uint8))
        assert reader.decode_path == "device"
        assert lz4.blocks > 0
    finally:
        reader.close()


def test_detector_sized_frames(tmp_path):
    """An Eiger 4M-sized frame: ~1100 blocks per chunk, a short last one and a raw tail."""
    frames = frames_of(2, 2167, 2070, "uint16", seed=5)
    path = make_file(tmp_path / "a.h5", frames, 1, **BSLZ4)
    spec = spec_for([Segment(path, DSET, 0, 2)], (2167, 2070), "uint16")
    reader = device_reader(spec)
    try:
        np.testing.assert_array_equal(read_all(reader, 0, 2, (2167, 2070)), frames)
    finally:
        reader.close()


def test_chunks_the_device_cannot_take_are_decoded_on_the_host(tmp_path):
    """Never-written chunks (fill value), one stored with its filter skipped, a userblock
    before the data and a partial last chunk: HDF5's values, the rest on the device."""
    frames = frames_of(11, 16, 24, "uint16", seed=9)
    path = str(tmp_path / "a.h5")
    with h5py.File(path, "w", userblock_size=512) as f:
        d = f.create_dataset(
            DSET, shape=frames.shape, dtype=frames.dtype, chunks=(2, 16, 24), fillvalue=7, **BSLZ4
        )
        d[0:4] = frames[0:4]  # chunks 0, 1; chunks 2, 3 never written
        d[8:11] = frames[8:11]  # chunk 4, and chunk 5 holds only frame 10
        d.id.write_direct_chunk((8, 0, 0), frames[8:10].tobytes(), filter_mask=1)
        want = d[()]
    assert (want[4:8] == 7).all()
    spec = spec_for([Segment(path, DSET, 0, 11)], (16, 24), "uint16")
    lz4 = CountingLZ4()
    reader = device_reader(spec, block_decoder=lz4, prefetch=True)
    try:
        np.testing.assert_array_equal(read_all(reader, 0, 11, (16, 24)), want)
        np.testing.assert_array_equal(read_all(reader, 3, 11, (16, 24)), want[3:11])
        assert reader.decode_path == "device" and lz4.blocks > 0
    finally:
        reader.close()


def _corrupt_chunk(path: str, chunk: int, edit) -> None:  # type: ignore[no-untyped-def]
    with h5py.File(path, "r+") as f:
        d = f[DSET]
        per = d.chunks[0]
        _, raw = d.id.read_direct_chunk((chunk * per, 0, 0))
        d.id.write_direct_chunk((chunk * per, 0, 0), edit(bytes(raw)))


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda r: r[:8] + (13).to_bytes(4, "big") + r[12:], "multiple of 8 elements"),
        (lambda r: (99).to_bytes(8, "big") + r[8:], "does not match the chunk's shape"),
        (lambda r: r[:12] + (1 << 30).to_bytes(4, "big") + r[16:], "compressed size"),
        (lambda r: r[:-5], "past the chunk's end"),
        (lambda r: r + bytes(3), "another block count"),
    ],
)
def test_inconsistent_chunk_fails_the_job_before_the_decoder_sees_it(tmp_path, edit, reason):
    frames = frames_of(8, 24, 40, "uint16")
    path = make_file(tmp_path / "a.h5", frames, 2, **BSLZ4)
    _corrupt_chunk(path, 2, edit)
    spec = spec_for([Segment(path, DSET, 0, 8)], (24, 40), "uint16")
    lz4 = CountingLZ4()
    reader = device_reader(spec, block_decoder=lz4)
    try:
        with pytest.raises(PermanentChunkError, match=reason) as err:
            read_all(reader, 0, 8, (24, 40))
        assert "chunk 2 of" in str(err.value) and "dataset frames 4-6" in str(err.value)
        assert err.value.frames == (4, 6)
        assert lz4.blocks == 0, "nothing of the batch reached the LZ4 decoder"
        # The chunks before it still read (a block of their own).
        np.testing.assert_array_equal(read_all(reader, 0, 4, (24, 40)), frames[:4])
    finally:
        reader.close()


def test_lz4_data_that_does_not_decode_fails_the_job_naming_the_chunk(tmp_path):
    """Consistent sizes around a broken LZ4 stream: the decoder's per-block status."""
    frames = frames_of(6, 64, 64, "uint16")
    path = make_file(tmp_path / "a.h5", frames, 1, **BSLZ4)
    _corrupt_chunk(path, 3, lambda r: r[:16] + bytes([0xFF]) * (len(r) - 16))
    spec = spec_for([Segment(path, DSET, 0, 6)], (64, 64), "uint16")
    for prefetch in (False, True):
        reader = device_reader(spec, prefetch=prefetch)
        try:
            with pytest.raises(PermanentChunkError, match=r"chunk 3 of .*LZ4 block 0 did not"):
                read_all(reader, 0, 6, (64, 64))
        finally:
            reader.close()


def test_segments_mix_paths_and_say_so(tmp_path, caplog):
    a = frames_of(6, 16, 16, "uint16", seed=1)
    b = frames_of(6, 16, 16, "uint16", seed=2)
    pa = make_file(tmp_path / "a.h5", a, 2, **BSLZ4)
    pb = make_file(tmp_path / "b.h5", b, 1, **GZIP_SHUFFLE)
    pc = make_file(tmp_path / "c.h5", a, 1, **BSZSTD)
    segs = [
        Segment(pa, DSET, 0, 5, offset=1),
        Segment(pb, DSET, 5, 3, offset=0, step=2),
        Segment(pc, DSET, 8, 6),
    ]
    spec = spec_for(segs, (16, 16), "uint16")
    reader = device_reader(spec, decode_threads=2)
    try:
        with caplog.at_level("INFO", logger="framestats.worker.read"):
            got = read_all(reader, 0, 14, (16, 16))
            read_all(reader, 0, 14, (16, 16))
        np.testing.assert_array_equal(got, np.concatenate([a[1:6], b[0:6:2], a]))
        assert reader.decode_path == "device+hdf5+host"
        lines = [r.getMessage() for r in caplog.records]
        assert len(lines) == 3, "once per path per job"
    finally:
        reader.close()


def test_job_context_reduces_device_blocks(tmp_path):
    from worker.context import JobContext

    frames = frames_of(9, 24, 40, "uint16", seed=5)
    path = make_file(tmp_path / "a.h5", frames, 2, **BSLZ4)
    spec = spec_for([Segment(path, DSET, 0, 9)], (24, 40), "uint16")
    mask = np.zeros((24, 40), dtype=bool)
    mask[3:20, 5:30] = True
    ctx = JobContext(spec=spec, labels=mask, reader=device_reader(spec), device="cpu")
    try:
        sums = ctx.compute(0, 9)["sum"][:, 0]
        np.testing.assert_array_equal(sums, frames[:, mask].astype(np.int64).sum(axis=1))
    finally:
        ctx.close()


def test_choosing_the_path(tmp_path):
    frames = frames_of(2, 8, 8, "uint16")
    path = make_file(tmp_path / "a.h5", frames, 1, **BSLZ4)
    spec = spec_for([Segment(path, DSET, 0, 2)], (8, 8), "uint16")
    # CPU workers never decode on a device, whatever the setting.
    for value in ("auto", "on", "off"):
        settings = Settings.from_env({"FRAMESTATS_GPU_DECODE": value})
        cpu = FrameReader.for_device(spec, settings, device="cpu")
        read_all(cpu, 0, 2, (8, 8))
        assert cpu.decode_path == "host" and cpu.block_decoder is None
        cpu.close()
    with pytest.raises(ValueError, match="FRAMESTATS_GPU_DECODE"):
        Settings.from_env({"FRAMESTATS_GPU_DECODE": "sometimes"})
    # A GPU worker without CUDA or nvCOMP: auto falls back, on refuses.
    if not torch.cuda.is_available():
        gpu = FrameReader.for_device(spec, device="cuda:0", gpu_decode="auto")
        assert gpu.block_decoder is None
        gpu.close()
        with pytest.raises(TransientChunkError, match="FRAMESTATS_GPU_DECODE=on"):
            FrameReader.for_device(spec, device="cuda:0", gpu_decode="on")
    # FRAMESTATS_DECODE_THREADS=0 (HDF5 decodes) holds for the device path too.
    hdf5 = device_reader(spec, decode_threads=0)
    read_all(hdf5, 0, 2, (8, 8))
    assert hdf5.decode_path == "hdf5"
    hdf5.close()


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed")
@pytest.mark.parametrize(("dtype", "shape"), [("uint16", (37, 41)), ("float32", (19, 23))])
def test_device_path_with_the_triton_kernel_in_its_interpreter(tmp_path, monkeypatch, dtype, shape):
    from worker.read import unshuffle

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    unshuffle._kernel.cache_clear()
    frames = frames_of(5, *shape, dtype)
    path = make_file(tmp_path / "a.h5", frames, 2, **BSLZ4)
    spec = spec_for([Segment(path, DSET, 0, 5)], shape, dtype)
    reader = device_reader(spec, unshuffle="triton", prefetch=True)
    try:
        got = read_all(reader, 1, 5, shape)
        np.testing.assert_array_equal(got.view(np.uint8), frames[1:5].view(np.uint8))
    finally:
        reader.close()
        unshuffle._kernel.cache_clear()
