"""The chunk index reads what HDF5 reads, and merges neighbouring chunks into few reads."""

from __future__ import annotations

import h5py
import numpy as np

from producer.samples import detector_frames
from worker.read.chunk_index import ChunkIndex, Span

from .support import BSLZ4, DSET, make_file


def test_spans_merge_neighbours_and_leave_out_odd_chunks(tmp_path):
    frames = detector_frames(10, 16, 16, seed=1)
    path = str(tmp_path / "a.h5")
    with h5py.File(path, "w") as f:
        d = f.create_dataset(
            DSET, shape=frames.shape, dtype=frames.dtype, chunks=(1, 16, 16), **BSLZ4
        )
        d[0:4] = frames[0:4]
        d[5:10] = frames[5:10]  # chunk 4 never written
        d.id.write_direct_chunk((7, 0, 0), frames[7].tobytes(), filter_mask=1)
    with h5py.File(path, "r") as f:
        index = ChunkIndex.build(f[DSET], 1)
        assert index is not None
        try:
            spans = index.spans(0, 10)
            covered = [k for s in spans for k in range(s.first, s.stop)]
            assert 4 not in covered and 7 not in covered
            assert sorted(covered) == [0, 1, 2, 3, 5, 6, 8, 9]
            assert len(spans) <= 4, "written in order, so neighbours share a read"
            for span in spans:
                raw = np.empty(span.size, dtype=np.uint8)
                index.pread(span.offset, memoryview(raw))
                for k in range(span.first, span.stop):
                    at = int(index.offsets[k]) - span.offset
                    _, want = f[DSET].id.read_direct_chunk((k, 0, 0))
                    assert raw[at : at + len(want)].tobytes() == want
            # A gap larger than allowed splits the read.
            assert all(s.stop - s.first == 1 for s in index.spans(0, 4, gap=-1))
        finally:
            index.close()


def test_spans_of_a_sub_range(tmp_path):
    path = make_file(tmp_path / "a.h5", detector_frames(12, 8, 8, seed=2), 2, **BSLZ4)
    with h5py.File(path, "r") as f:
        index = ChunkIndex.build(f[DSET], 2)
        assert index is not None
        try:
            (span,) = index.spans(2, 5)
            assert (span.first, span.stop) == (2, 5)
            assert span == Span(int(index.offsets[2]), span.size, 2, 5)
            assert span.size == int(index.offsets[4] + index.sizes[4] - index.offsets[2])
        finally:
            index.close()
