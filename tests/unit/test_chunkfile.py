"""Committed chunk files: what is written is read back bit for bit, and nothing else is."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from framestats import chunkfile as results
from framestats.constants import CHUNKS_DIR
from framestats.paths import chunk_index, chunk_path
from tests.support.layouts import write_legacy_chunk


def _result(index: int, frames: int, regions: int, stats: tuple[str, ...]) -> results.ChunkResult:
    rng = np.random.default_rng(index)
    values = {s: rng.normal(size=(frames, regions)) for s in stats}
    values["sum"][0, 0] = np.nan  # NaN, inf and signed zero keep their bits
    values["sum"][-1, -1] = -np.inf
    values["mean"][0, -1] = -0.0
    return results.ChunkResult(index, 100 * index, 100 * index + frames, values, {"worker": "w@h"})


@pytest.mark.parametrize("regions", [1, 7])
def test_round_trip_is_bit_exact(tmp_path, regions):
    os.makedirs(tmp_path / CHUNKS_DIR)
    stats = ("sum", "mean", "count", "min", "max", "std")
    written = _result(3, 37, regions, stats)
    path = results.write_chunk(str(tmp_path), written)
    assert path == chunk_path(str(tmp_path), 3)
    back = results.read_chunk(str(tmp_path), 3)
    assert (back.index, back.start, back.stop, back.meta) == (3, 300, 337, {"worker": "w@h"})
    assert list(back.stats) == list(stats)
    for s in stats:
        assert back.stats[s].dtype == np.float64 and back.stats[s].flags.c_contiguous
        assert back.stats[s].tobytes() == written.stats[s].tobytes()
    assert results.committed(str(tmp_path)) == {3}
    assert results.is_committed(str(tmp_path), 3) and not results.is_committed(str(tmp_path), 4)


def test_file_layout_is_the_documented_one(tmp_path):
    """Magic line, JSON line, then each statistic as little-endian float64 in order."""
    os.makedirs(tmp_path / CHUNKS_DIR)
    written = _result(0, 5, 2, ("sum", "mean"))
    with open(results.write_chunk(str(tmp_path), written), "rb") as fh:
        raw = fh.read()
    assert raw.startswith(results.CHUNK_MAGIC)
    end = raw.index(b"\n", len(results.CHUNK_MAGIC))
    head = json.loads(raw[len(results.CHUNK_MAGIC) : end])
    assert head == {
        "range": [0, 5],
        "stats": ["sum", "mean"],
        "shape": [5, 2],
        "meta": written.meta,
    }
    body = raw[end + 1 :]
    expected = b"".join(written.stats[s].astype("<f8").tobytes() for s in ("sum", "mean"))
    assert body == expected


def test_truncated_or_foreign_files_are_refused(tmp_path):
    os.makedirs(tmp_path / CHUNKS_DIR)
    path = results.write_chunk(str(tmp_path), _result(1, 8, 3, ("sum", "mean")))
    with open(path, "rb") as fh:
        raw = fh.read()
    with open(path, "wb") as fh:
        fh.write(raw[:-8])
    with pytest.raises(ValueError, match="holds"):
        results.read_chunk(str(tmp_path), 1)
    with open(path, "wb") as fh:
        np.savez(fh, stat_sum=np.zeros((8, 3)))  # the earlier .npz layout, under this name
    with pytest.raises(ValueError, match="not a framestats chunk"):
        results.read_chunk(str(tmp_path), 1)


def test_statistics_of_different_shapes_are_not_written(tmp_path):
    os.makedirs(tmp_path / CHUNKS_DIR)
    bad = results.ChunkResult(0, 0, 4, {"sum": np.zeros((4, 2)), "mean": np.zeros((4, 3))}, {})
    with pytest.raises(ValueError, match="differ in shape"):
        results.write_chunk(str(tmp_path), bad)
    assert results.committed(str(tmp_path)) == set()


def test_only_committed_names_count():
    assert chunk_index("00000012.chunk") == 12
    assert chunk_index("00000013.npz") == 13  # an earlier version's commit
    for name in ("00000012.chunk.tmp-99", "00000012.npz.tmp-7", "x.chunk", ".chunk", "12"):
        assert chunk_index(name) is None


def test_chunks_an_earlier_version_committed_are_read(tmp_path):
    """A job begun before an upgrade: its .npz chunks (written as that version wrote
    them) count as committed and are read back next to new ones."""
    workdir = str(tmp_path)
    os.makedirs(tmp_path / CHUNKS_DIR)
    old = _result(0, 6, 2, ("sum", "mean"))
    write_legacy_chunk(workdir, 0, old.start, old.stop, old.stats, old.meta)
    results.write_chunk(workdir, _result(1, 6, 2, ("sum", "mean")))
    assert results.committed(workdir) == {0, 1}
    assert results.is_committed(workdir, 0) and not results.is_committed(workdir, 2)
    back = results.read_chunk(workdir, 0)
    assert (back.start, back.stop, back.meta) == (old.start, old.stop, old.meta)
    for s in ("sum", "mean"):
        assert back.stats[s].tobytes() == old.stats[s].tobytes()
    with pytest.raises(FileNotFoundError):
        results.read_chunk(workdir, 2)
