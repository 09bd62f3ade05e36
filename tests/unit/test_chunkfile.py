"""Committed chunk files: what is written is read back bit for bit, and only a whole file of
the same job's same chunk is taken."""

from __future__ import annotations

import json
import os
from dataclasses import replace

import numpy as np
import pytest

from framestats import chunkfile
from framestats.chunkfile import ChunkFileInvalid, ChunkResult
from framestats.jobdir import JobFolder
from framestats.messages import JobSpec, Segment

STATS = ("sum", "mean", "count", "min", "max", "std")


def spec_of(job_id: str = "a" * 16, regions: int = 7, bounds=(0, 37, 74, 100)) -> JobSpec:
    return JobSpec(
        job_id=job_id, segments=(Segment("/x.h5", "/d", 0, bounds[-1]),), frame_shape=(4, 4),
        dtype="<u2", n_frames=bounds[-1], n_regions=regions, stats=STATS, boundaries=bounds,
        output="/o.h5", workdir="/o.h5.parts", mask_path="/m.npy", mask_sha256="0",
        queue="q", chunk_frames=37, created=0.0, version="t",
    )  # fmt: skip


def result_of(spec: JobSpec, index: int) -> ChunkResult:
    start, stop = spec.boundaries[index], spec.boundaries[index + 1]
    rng = np.random.default_rng(index)
    values = {s: rng.normal(size=(stop - start, spec.n_regions)) for s in spec.stats}
    values["sum"][0, 0] = np.nan  # NaN, inf and signed zero keep their bits
    values["sum"][-1, -1] = -np.inf
    values["max"][0, -1] = -0.0
    return ChunkResult(index, start, stop, values, {"worker": "w@h", "device": "cpu"})


@pytest.fixture
def folder(tmp_path):
    with JobFolder.create(str(tmp_path / "out.h5.parts")) as f:
        yield f


@pytest.mark.parametrize("regions", [1, 7])
def test_round_trip_is_bit_exact(folder, regions):
    spec = spec_of(regions=regions)
    written = result_of(spec, 1)
    chunkfile.write_chunk(folder, spec, written)
    back = chunkfile.read_chunk(folder, spec, 1)
    assert (back.index, back.start, back.stop, back.meta) == (1, 37, 74, written.meta)
    for s in STATS:
        assert back.stats[s].dtype == np.float64 and back.stats[s].flags.c_contiguous
        assert back.stats[s].flags.aligned, s  # read into its own array, not at an offset
        assert back.stats[s].tobytes() == written.stats[s].tobytes(), s
    assert chunkfile.committed(folder) == {1}
    assert chunkfile.committed(folder, spec) == {1}
    assert chunkfile.is_committed(folder, spec, 1) and not chunkfile.is_committed(folder, spec, 2)


def _corrupt(folder: JobFolder, index: int, edit) -> None:
    path = os.path.join(folder.path, "chunks", chunkfile.chunk_name(index))
    with open(path, "rb") as fh:
        raw = fh.read()
    with open(path, "wb") as fh:
        fh.write(edit(raw))


@pytest.mark.parametrize(
    "damage, says",
    [
        (lambda raw: raw[:-8], "bytes of values"),  # truncated
        (lambda raw: raw[:-1] + bytes([raw[-1] ^ 1]), "checksum"),  # one bit flipped
        (lambda raw: b"framestats chunk 1\n" + raw[19:], "not a framestats chunk file"),
        (lambda raw: raw[:19] + b"x" + raw[20:], "damaged header"),
    ],
    ids=["truncated", "bit flip", "old version", "header"],
)
def test_damaged_files_are_refused_with_the_reason(folder, damage, says):
    spec = spec_of()
    chunkfile.write_chunk(folder, spec, result_of(spec, 0))
    _corrupt(folder, 0, damage)
    with pytest.raises(ChunkFileInvalid, match=says):
        chunkfile.read_chunk(folder, spec, 0)


def test_a_forged_header_is_refused_before_its_values_are_allocated(folder):
    """A header may claim any number of statistics: the file's size is checked against
    them before an array is made (here 5,000 x 37 x 10^6 float64, 1.5 TB)."""
    spec = spec_of(regions=10**6)
    head = {"job": spec.job_id, "index": 0, "range": [0, 37], "regions": 10**6,
            "stats": list(STATS) * 834, "crc32": 0, "meta": {}}  # fmt: skip
    raw = chunkfile.CHUNK_MAGIC + json.dumps(head).encode() + b"\n"
    folder.write_bytes(chunkfile.chunk_name(0), raw, in_chunks=True)
    with pytest.raises(ChunkFileInvalid, match="bytes of values"):
        chunkfile.read_chunk(folder, spec, 0)


@pytest.mark.parametrize(
    "other, says",
    [
        (lambda s: replace(s, job_id="b" * 16), "job"),
        (lambda s: replace(s, n_regions=8), "regions"),
        (lambda s: replace(s, boundaries=(0, 40, 74, 100)), "range"),
    ],
    ids=["another job", "other regions", "other range"],
)
def test_a_file_of_another_job_or_plan_is_not_taken(folder, other, says):
    """A chunk file another job left in the folder (a resubmission over the same output)
    is refused by the header check and by the full read."""
    spec = spec_of()
    them = other(spec)
    chunkfile.write_chunk(folder, them, result_of(them, 0))
    assert not chunkfile.is_committed(folder, spec, 0)
    assert chunkfile.committed(folder, spec) == set()
    with pytest.raises(ChunkFileInvalid, match=says):
        chunkfile.read_chunk(folder, spec, 0)


def test_shape_mismatch_is_refused_at_write(folder):
    spec = spec_of()
    bad = result_of(spec, 0)
    bad.stats["sum"] = bad.stats["sum"][:, :3]
    with pytest.raises(ValueError, match="statistics are not"):
        chunkfile.write_chunk(folder, spec, bad)
    assert chunkfile.committed(folder) == set()


def test_chunk_index_names():
    assert chunkfile.chunk_index(chunkfile.chunk_name(12)) == 12
    for name in ("00000013.npz", ".00000001.chunk.tmp-x", "manifest.json", "abc.chunk"):
        assert chunkfile.chunk_index(name) is None
