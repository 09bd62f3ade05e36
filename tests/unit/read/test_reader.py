"""FrameReader gives exactly what plain h5py reads give, on every path and block layout."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest

from framestats.errors import TransientChunkError
from framestats.messages import Segment
from framestats.settings import Settings
from producer.samples import detector_frames
from worker.read import FrameReader

from .support import BSLZ4, BSZSTD, DECODED, DSET, GZIP, GZIP_SHUFFLE, make_file, read_all, spec_for


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
        ours = any(filters is f for f in DECODED) and np.dtype(dtype).isnative
        assert reader.decode_path == ("host" if ours else "hdf5")
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


def test_for_device_choices(tmp_path):
    frames = detector_frames(2, 8, 8)
    path = make_file(tmp_path / "a.h5", frames, 1, **BSLZ4)
    spec = spec_for([Segment(path, DSET, 0, 2)], (8, 8), "uint16")
    cpu = FrameReader.for_device(spec, device="cpu")
    assert (cpu.decode_threads, cpu.prefetch) == (1, False)
    gpu = FrameReader.for_device(spec, device="cuda:0")
    assert gpu.decode_threads >= 1 and gpu.prefetch
    env = {"FRAMESTATS_DECODE_THREADS": "0", "FRAMESTATS_PREFETCH": "1"}
    forced = FrameReader.for_device(spec, Settings.from_env(env), "cpu")
    assert (forced.decode_threads, forced.prefetch) == (0, True)
    np.testing.assert_array_equal(read_all(forced, 0, 2, (8, 8)), frames)
    assert forced.decode_path == "hdf5"
    for r in (cpu, gpu, forced):
        r.close()


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

    from worker.reduce import MaskedReducer
    from worker.reduce.cuda import DeviceReducer

    reader = FrameReader(spec, block_bytes=3 * 24 * 40 * 2, prefetch=True)
    gpu = JobContext(spec=spec, labels=mask, reader=reader, device="cuda")
    assert reader.buffers is not None
    assert gpu.host_buffer(2, np.dtype(np.uint16)) is None  # no reducer yet
    reducer = MaskedReducer(mask, ("sum",), device="cpu")
    impl = DeviceReducer(mask.astype(np.int32), 1, ("sum",), torch.device("cpu"))
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
    from worker.read import BufferPool

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
