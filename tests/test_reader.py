"""FrameReader and the parallel Bitshuffle decoder give exactly what plain h5py reads give."""

from __future__ import annotations

import importlib.util
import os

import h5py
import hdf5plugin
import numpy as np
import pytest

from framestats.errors import TransientChunkError
from framestats.messages import JobSpec, Segment
from producer.samples import detector_frames
from worker import decode
from worker.decode import ChunkDecoder
from worker.reader import FrameReader

DSET = "/entry/data/data"


def make_file(path, frames: np.ndarray, chunk_frames: int | None, **filters) -> str:
    with h5py.File(path, "w") as f:
        chunks = None if chunk_frames is None else (chunk_frames, *frames.shape[1:])
        f.create_dataset(DSET, data=frames, chunks=chunks, **filters)
    return str(path)


def spec_for(segments: list[Segment], frame_shape, dtype) -> JobSpec:
    n = sum(s.count for s in segments)
    return JobSpec(
        job_id="test",
        segments=tuple(segments),
        frame_shape=tuple(frame_shape),
        dtype=np.dtype(dtype).str,
        n_frames=n,
        n_regions=1,
        stats=("sum",),
        boundaries=(0, n),
        output="/nonexistent/out.h5",
        workdir="/nonexistent/out.h5.parts",
        mask_path="",
        mask_sha256="",
        queue="q",
        chunk_frames=n,
        created=0.0,
        version="test",
    )


def read_all(reader: FrameReader, start: int, stop: int, shape) -> np.ndarray:
    out = np.empty((stop - start, *shape), dtype=reader.dtype)
    for pos, block in reader.blocks(start, stop):
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


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("prefetch", [False, True])
@pytest.mark.parametrize(
    ("dtype", "chunk_frames", "filters"),
    [
        ("uint16", 1, BSLZ4),
        ("uint16", 3, BSLZ4),
        ("uint32", 2, BSLZ4),
        ("float32", 1, BSLZ4),
        ("uint8", 4, BSLZ4),
        ("uint16", 2, BSZSTD),
        ("uint16", 1, GZIP_SHUFFLE),
        ("uint16", 3, GZIP_SHUFFLE),
        ("uint8", 2, GZIP_SHUFFLE),
        ("uint32", 1, GZIP_SHUFFLE),
        ("float32", 2, GZIP_SHUFFLE),
        ("float64", 1, GZIP_SHUFFLE),
        ("int16", 1, GZIP),
        ("uint16", 1, {"compression": "lzf"}),
        ("uint16", None, {}),
        ("float32", None, {}),
        (">u2", None, {}),
        (">u2", 1, BSLZ4),
        (">u2", 1, GZIP_SHUFFLE),
    ],
)
def test_reader_matches_h5py_bit_for_bit(tmp_path, threads, prefetch, dtype, chunk_frames, filters):
    frames = detector_frames(23, 24, 40, dtype=np.dtype(dtype).newbyteorder("="), seed=3)
    frames = frames.astype(dtype)
    if frames.dtype.kind == "f":
        frames[2, 3, 4] = np.nan
    path = make_file(tmp_path / "a.h5", frames, chunk_frames, **filters)
    spec = spec_for([Segment(path, DSET, 0, 23)], (24, 40), dtype)
    # Small blocks so that blocks start and end inside and across chunks.
    reader = FrameReader(spec, block_bytes=3 * 24 * 40, decode_threads=threads, prefetch=prefetch)
    try:
        with h5py.File(path, "r") as f:
            want = f[DSET][()]
        for start, stop in [(0, 23), (1, 22), (5, 6), (7, 19), (22, 23)]:
            got = read_all(reader, start, stop, (24, 40))
            assert got.dtype == np.dtype(dtype).newbyteorder("=")
            np.testing.assert_array_equal(
                got.view(np.uint8), want[start:stop].astype(got.dtype).view(np.uint8)
            )
        used = [d for d in reader._decoders.values() if d is not None]
        ours = any(filters is f for f in DECODED) and np.dtype(dtype).isnative
        assert bool(used) == ours
        preads = [d for d in reader._direct.values() if d is not None]
        assert bool(preads) == (chunk_frames is None and np.dtype(dtype).isnative)
    finally:
        reader.close()


def test_contiguous_datasets_hdf5_must_read(tmp_path):
    """Virtual, external and never-written contiguous datasets are read by HDF5 (their
    bytes are not at one offset of the file); a truncated file is an error, not the
    zeros HDF5 reads there."""
    frames = detector_frames(12, 16, 16, seed=5)
    plain = make_file(tmp_path / "plain.h5", frames, None)
    raw = tmp_path / "frames.raw"
    frames.tofile(raw)
    paths = {"plain": plain, "external": str(tmp_path / "ext.h5"), "vds": str(tmp_path / "v.h5")}
    with h5py.File(paths["external"], "w") as f:
        f.create_dataset(DSET, frames.shape, frames.dtype, external=[(str(raw), 0, frames.nbytes)])
    with h5py.File(paths["vds"], "w") as f:
        layout = h5py.VirtualLayout(frames.shape, frames.dtype)
        layout[:] = h5py.VirtualSource(plain, DSET, frames.shape)
        f.create_virtual_dataset(DSET, layout)
    with h5py.File(tmp_path / "empty.h5", "w") as f:
        f.create_dataset(DSET, frames.shape, frames.dtype, fillvalue=7)
    cases = {**paths, "empty": str(tmp_path / "empty.h5")}
    for name, path in cases.items():
        spec = spec_for([Segment(path, DSET, 0, 12)], (16, 16), "uint16")
        reader = FrameReader(spec, block_bytes=5 * 16 * 16 * 2)
        try:
            want = np.full_like(frames, 7) if name == "empty" else frames
            np.testing.assert_array_equal(read_all(reader, 0, 12, (16, 16)), want)
            np.testing.assert_array_equal(read_all(reader, 3, 11, (16, 16)), want[3:11])
            assert (name == "plain") == any(d is not None for d in reader._direct.values())
        finally:
            reader.close()
    spec = spec_for([Segment(plain, DSET, 0, 12)], (16, 16), "uint16")
    reader = FrameReader(spec, block_bytes=4 * 16 * 16 * 2)
    try:
        read_all(reader, 0, 4, (16, 16))  # opened, its offset known
        os.truncate(plain, os.path.getsize(plain) - 3 * 16 * 16 * 2)
        with pytest.raises(TransientChunkError, match="frames 8-12.*file ends 1536 bytes"):
            read_all(reader, 8, 12, (16, 16))
    finally:
        reader.close()


def test_segments_steps_and_offsets(tmp_path):
    a = detector_frames(10, 16, 16, seed=1)
    b = detector_frames(12, 16, 16, seed=2)
    pa = make_file(tmp_path / "a.h5", a, 2, **BSLZ4)
    pb = make_file(tmp_path / "b.h5", b, 1, **BSLZ4)
    segs = [
        Segment(pa, DSET, 0, 4, offset=3, step=1),
        Segment(pb, DSET, 4, 5, offset=1, step=2),
        Segment(pa, DSET, 9, 6, offset=4, step=1),
    ]
    want = np.concatenate([a[3:7], b[1:11:2], a[4:10]])
    spec = spec_for(segs, (16, 16), "uint16")
    for prefetch in (False, True):
        reader = FrameReader(spec, block_bytes=2 * 16 * 16 * 2, decode_threads=2, prefetch=prefetch)
        try:
            np.testing.assert_array_equal(read_all(reader, 0, 15, (16, 16)), want)
            np.testing.assert_array_equal(read_all(reader, 3, 11, (16, 16)), want[3:11])
        finally:
            reader.close()


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
        assert any(d is not None for d in reader._decoders.values()) == decoded(filters)
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


def test_early_close_of_a_prefetching_reader(tmp_path):
    frames = detector_frames(12, 16, 16, seed=6)
    path = make_file(tmp_path / "a.h5", frames, 1, **BSLZ4)
    spec = spec_for([Segment(path, DSET, 0, 12)], (16, 16), "uint16")
    reader = FrameReader(spec, block_bytes=16 * 16 * 2, decode_threads=2, prefetch=True)
    try:
        blocks = reader.blocks(0, 12)
        pos, block = next(blocks)
        np.testing.assert_array_equal(block, frames[pos : pos + len(block)])
        blocks.close()  # the pending read is waited for; the reader stays usable
        np.testing.assert_array_equal(read_all(reader, 0, 12, (16, 16)), frames)
    finally:
        reader.close()


def test_for_device_choices(tmp_path, monkeypatch):
    frames = detector_frames(2, 8, 8)
    path = make_file(tmp_path / "a.h5", frames, 1, **BSLZ4)
    spec = spec_for([Segment(path, DSET, 0, 2)], (8, 8), "uint16")
    monkeypatch.delenv("FRAMESTATS_DECODE_THREADS", raising=False)
    monkeypatch.delenv("FRAMESTATS_PREFETCH", raising=False)
    cpu = FrameReader.for_device(spec, (), "cpu")
    assert (cpu.decode_threads, cpu.prefetch) == (1, False)
    gpu = FrameReader.for_device(spec, (), "cuda:0")
    assert gpu.decode_threads >= 1 and gpu.prefetch
    monkeypatch.setenv("FRAMESTATS_DECODE_THREADS", "0")
    monkeypatch.setenv("FRAMESTATS_PREFETCH", "1")
    forced = FrameReader.for_device(spec, (), "cpu")
    assert (forced.decode_threads, forced.prefetch) == (0, True)
    np.testing.assert_array_equal(read_all(forced, 0, 2, (8, 8)), frames)
    assert all(d is None for d in forced._decoders.values())
    for r in (cpu, gpu, forced):
        r.close()


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
        assert any(d is not None for d in reader._decoders.values()) == decoded(filters)
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
        # Raw chunks are read by file offset (pread, checked against HDF5) by several
        # threads, or by the compiled Bitshuffle runs.
        runs = filters is BSLZ4 and decode.numba is not None
        assert decoder is not None and (decoder._index is not None) == (threads > 1 or runs)
        assert (decoder._runs is not None) == runs
    finally:
        reader.close()


@pytest.mark.skipif(decode.numba is None, reason="compiled runs need numba")
@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("filters", [BSLZ4, BSZSTD], ids=["bslz4", "bszstd"])
def test_bitshuffle_runs_decode_whole_chunks_and_hand_on_the_rest(
    tmp_path, monkeypatch, filters, threads
):
    """Whole chunks are decoded by the compiled loop; a partial one, an unwritten one and
    one HDF5 stored unfiltered each go the per-chunk way, and every frame equals HDF5's
    (corrupt chunks: ``test_corrupt_chunk_is_an_error_not_wrong_data``)."""
    frames = detector_frames(20, 16, 16, seed=12)
    path = str(tmp_path / "r.h5")
    with h5py.File(path, "w") as f:
        d = f.create_dataset(
            DSET, shape=frames.shape, dtype=frames.dtype, chunks=(2, 16, 16), **filters
        )
        d[0:10] = frames[0:10]  # chunks 0-4; 5 and 6 (frames 10-13) never written
        d[14:20] = frames[14:20]  # chunks 7-9
        d.id.write_direct_chunk((16, 0, 0), frames[16:18].tobytes(), filter_mask=1)  # chunk 8
    with h5py.File(path, "r") as f:
        want = f[DSET][()]
    spec = spec_for([Segment(path, DSET, 0, 20)], (16, 16), "uint16")
    per_chunk: list[int] = []
    original = ChunkDecoder._decode_chunk

    def spy(self, chunk, lo, hi, out):
        per_chunk.append(chunk)
        return original(self, chunk, lo, hi, out)

    monkeypatch.setattr(ChunkDecoder, "_decode_chunk", spy)
    reader = FrameReader(spec, block_bytes=20 * 16 * 16 * 2, decode_threads=threads)
    try:
        np.testing.assert_array_equal(read_all(reader, 0, 20, (16, 16)), want)
        assert sorted(per_chunk) == [5, 6, 8], "only the odd chunks go one by one"
        per_chunk.clear()
        np.testing.assert_array_equal(read_all(reader, 1, 19, (16, 16)), want[1:19])
        assert sorted(per_chunk) == [0, 5, 6, 8, 9], "and partial ones at both ends"
    finally:
        reader.close()


@pytest.mark.parametrize("filters", [BSLZ4, BSZSTD], ids=["bslz4", "bszstd"])
def test_bitshuffle_without_compiled_runs_reads_the_same(tmp_path, monkeypatch, filters):
    """Where numba (or libc's pread) is missing, chunks are decoded one by one."""
    frames = detector_frames(10, 16, 16, seed=13)
    path = make_file(tmp_path / "n.h5", frames, 2, **filters)
    monkeypatch.setattr(decode, "_run_functions_for", lambda codec: None)
    spec = spec_for([Segment(path, DSET, 0, 10)], (16, 16), "uint16")
    reader = FrameReader(spec, decode_threads=1)
    try:
        np.testing.assert_array_equal(read_all(reader, 1, 10, (16, 16)), frames[1:10])
        (decoder,) = reader._decoders.values()
        assert decoder is not None and decoder._runs is None and decoder._index is None
    finally:
        reader.close()


class FakeProvider:
    """Hands out two alternating buffers like ``MaskedReducer.host_buffer``."""

    def __init__(self, answer: str = "ok") -> None:
        self.answer = answer
        self.slots: list[np.ndarray | None] = [None, None]
        self.calls: list[tuple[int, np.dtype]] = []

    def __call__(self, frames: int, dtype: np.dtype, shape=(24, 40)) -> np.ndarray | None:
        self.calls.append((frames, dtype))
        if self.answer == "none":
            return None
        slot = (len(self.calls) - 1) % 2
        buf = self.slots[slot]
        if buf is None or buf.size < frames * shape[0] * shape[1]:
            buf = self.slots[slot] = np.full(64 * shape[0] * shape[1], 7, dtype=dtype)
        view = buf[: frames * shape[0] * shape[1]].reshape(frames, *shape)
        return view[:, :, ::2] if self.answer == "strided" else view


@pytest.mark.parametrize("prefetch", [False, True])
@pytest.mark.parametrize("answer", ["ok", "none", "strided"])
@pytest.mark.parametrize("filters", [BSLZ4, {}])
def test_reader_fills_provided_buffers(tmp_path, prefetch, answer, filters):
    frames = detector_frames(23, 24, 40, dtype=np.uint16, seed=4)
    path = make_file(tmp_path / "a.h5", frames, 2 if filters else None, **filters)
    spec = spec_for([Segment(path, DSET, 0, 23)], (24, 40), np.uint16)
    provider = FakeProvider(answer)
    reader = FrameReader(
        spec, block_bytes=4 * 24 * 40 * 2, decode_threads=2, prefetch=prefetch, buffers=provider
    )
    try:
        for start, stop in [(0, 23), (3, 18)]:
            blocks = 0
            for pos, block in reader.blocks(start, stop):
                np.testing.assert_array_equal(block, frames[pos : pos + len(block)])
                owned = any(s is not None and np.shares_memory(block, s) for s in provider.slots)
                assert owned == (answer == "ok")
                blocks += 1
            assert len(provider.calls) >= blocks
        assert all(dtype == np.dtype(np.uint16) for _, dtype in provider.calls)
    finally:
        reader.close()


def test_job_context_reads_into_the_reducers_buffers(tmp_path):
    from worker.context import JobContext

    frames = detector_frames(9, 24, 40, dtype=np.uint16, seed=5)
    path = make_file(tmp_path / "a.h5", frames, 1, **BSLZ4)
    spec = spec_for([Segment(path, DSET, 0, 9)], (24, 40), np.uint16)
    mask = np.zeros((24, 40), dtype=bool)
    mask[3:20, 5:30] = True
    want = frames[:, mask].astype(np.int64).sum(axis=1)
    # CPU: no provider.
    cpu = JobContext(spec=spec, labels=mask, reader=FrameReader(spec), device="cpu")
    assert cpu.reader.buffers is None
    np.testing.assert_array_equal(cpu.compute(0, 9)["sum"][:, 0], want)
    cpu.close()
    # A GPU worker's context wires the reducer's host buffers into its reader; here the
    # reducer runs the CUDA code path on the CPU (same buffers, not pinned).
    import torch

    from worker import kernel

    reader = FrameReader(spec, block_bytes=3 * 24 * 40 * 2, prefetch=True)
    gpu = JobContext(spec=spec, labels=mask, reader=reader, device="cuda")
    assert reader.buffers is not None
    assert gpu.host_buffer(2, np.dtype(np.uint16)) is None  # no reducer yet
    reducer = kernel.MaskedReducer(mask, ("sum",), device="cpu")
    impl = kernel._DeviceReducer(mask.astype(np.int32), 1, ("sum",), torch.device("cpu"))
    reducer._impl = impl
    gpu._reducer = reducer
    sent = []
    real_send = impl._send

    def send(block, slot):
        sent.append(impl._direct_view(block) is not None)
        return real_send(block, slot)

    impl._send = send  # type: ignore[method-assign]
    np.testing.assert_array_equal(gpu.compute(0, 9)["sum"][:, 0], want)
    assert sent and all(sent)
    gpu.close()


@pytest.mark.parametrize("prefetch", [False, True])
def test_readers_share_the_process_buffers_one_at_a_time(tmp_path, prefetch):
    """A job's reader reads into the buffers an earlier job's reader gave back (no fresh
    memory per job), and two readers iterating at once never share one."""
    from worker.reader import BufferPool

    frames = detector_frames(12, 24, 40, dtype=np.uint16, seed=8)
    path = make_file(tmp_path / "a.h5", frames, 2, **BSLZ4)
    spec = spec_for([Segment(path, DSET, 0, 12)], (24, 40), np.uint16)
    pool = BufferPool()

    def reader() -> FrameReader:
        r = FrameReader(spec, block_bytes=4 * 24 * 40 * 2, decode_threads=1, prefetch=prefetch)
        r.pool = pool
        return r

    first, second = reader(), reader()
    try:
        seen = [block.base for _, block in first.blocks(0, 12)]
        assert len(pool._free) >= 1  # given back when the iteration ended
        again = [block for _, block in second.blocks(0, 12)]
        assert any(np.shares_memory(b, s) for b in again for s in seen if s is not None)
        # Interleaved: each block still holds its own frames while the other reads.
        a, b = first.blocks(0, 12), second.blocks(4, 12)
        for (pa, ba), (pb, bb) in zip(a, b, strict=False):
            assert not np.shares_memory(ba, bb)
            np.testing.assert_array_equal(ba, frames[pa : pa + len(ba)])
            np.testing.assert_array_equal(bb, frames[pb : pb + len(bb)])
    finally:
        first.close()
        second.close()


@pytest.mark.parametrize(("given", "want"), [(None, "1"), ("3", "3")])
def test_worker_processes_run_one_openmp_thread_unless_told(given, want):
    """The worker's own processes and decode threads are its parallelism: an OpenMP
    build of the filters (the Docker image's) gets one thread per call, unless the
    environment says otherwise."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    if given is not None:
        env["OMP_NUM_THREADS"] = given
    out = subprocess.run(
        [sys.executable, "-c", "import os, worker.app; print(os.environ['OMP_NUM_THREADS'])"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout.strip() == want
