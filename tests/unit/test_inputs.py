"""Real detector layouts resolved without Redis: Eiger master files, globs of files, VDS,
--frames, value ranges (tests/integration/test_detector_inputs.py runs them end to end)."""

from __future__ import annotations

import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from framestats.errors import InputError, OptionError
from framestats.inputs.selection import effective_range, parse_frames, parse_valid_range
from framestats.inputs.sources import resolve_inputs, select, select_segment
from framestats.messages import Segment
from producer.samples import detector_frames, write_stack
from tests.support.layouts import H, W, eiger_scan, write_eiger, write_vds

ALL = ("sum", "mean", "count", "min", "max", "std")


@pytest.fixture
def eiger(tmp_path):
    return eiger_scan(str(tmp_path))


# --- resolving inputs (no Redis) --------------------------------------------------------------


def test_master_resolves_to_its_data_files_in_link_order(eiger):
    master, blocks = eiger
    folder = os.path.dirname(master)
    resolved = resolve_inputs([master], None)
    segs = [s.segment for s in resolved.sources]
    assert [s.path for s in segs] == [
        os.path.join(folder, f"scan_data_{i:06d}.h5") for i in (1, 2, 3)
    ]
    assert [(s.start, s.count, s.index_base) for s in segs] == [(0, 5, 0), (5, 8, 5), (13, 3, 13)]
    assert all(s.dataset == "/entry/data/data" for s in segs)
    (det,) = resolved.detectors
    assert det.master == os.path.abspath(master)
    assert det.saturation == 3000
    assert det.pixel_mask.endswith("detectorSpecific/pixel_mask")
    rows = resolved.records()
    assert [r["frames"] for r in rows] == [[0, 5], [5, 13], [13, 16]]
    assert {r["input"] for r in rows} == {os.path.abspath(master)}


def test_link_order_is_numeric_not_creation_order(tmp_path):
    blocks = [np.full((2, H, W), i, np.uint16) for i in range(3)]
    master = write_eiger(str(tmp_path), "s", blocks)
    with h5py.File(master, "a") as f:  # re-create the links in reverse order
        grp = f["/entry/data"]
        for i in (3, 2, 1):
            del grp[f"data_{i:06d}"]
        for i in (3, 2, 1):
            grp[f"data_{i:06d}"] = h5py.ExternalLink(f"s_data_{i:06d}.h5", "/entry/data/data")
    paths = [s.segment.path for s in resolve_inputs([master], None).sources]
    assert [p[-9:-3] for p in paths] == ["000001", "000002", "000003"]


def test_master_linked_from_another_folder(tmp_path, monkeypatch):
    blocks = [detector_frames(3, H, W, seed=i) for i in range(2)]
    master = write_eiger(str(tmp_path), "far", blocks)
    monkeypatch.chdir("/")
    resolved = resolve_inputs([master], None)
    assert [s.segment.count for s in resolved.sources] == [3, 3]


@pytest.mark.parametrize(
    ("damage", "expect"),
    [
        ("remove", "data file not found: {f}"),
        ("garbage", "input is not an HDF5 file: {f}"),
        ("no-dataset", "dataset /entry/data/data not found in {f}"),
        ("2-D", "2-D"),
    ],
)
def test_bad_linked_file_is_named(eiger, damage, expect):
    master, _ = eiger
    target = os.path.join(os.path.dirname(master), "scan_data_000002.h5")
    os.remove(target)
    if damage == "garbage":
        with open(target, "w") as fh:
            fh.write("not hdf5")
    elif damage == "no-dataset":
        with h5py.File(target, "w") as f:
            f["other"] = np.zeros(3)
    elif damage == "2-D":
        with h5py.File(target, "w") as f:
            f["/entry/data/data"] = np.zeros((H, W))
    with pytest.raises(InputError) as info:
        resolve_inputs([master], None)
    message = str(info.value)
    assert expect.format(f=target) in message
    assert "scan_data_000002.h5" in message and "data_000002" in message


def test_glob_sorted_concatenation_with_different_frame_counts(tmp_path):
    counts = {"scan_003.h5": 4, "scan_001.h5": 6, "scan_002.h5": 1}
    for name, n in counts.items():
        write_stack(str(tmp_path / name), detector_frames(n, H, W, seed=n), form="bslz4")
    (tmp_path / "other.h5").write_text("not matched")
    resolved = resolve_inputs([str(tmp_path / "scan_*.h5")], None)
    names = [os.path.basename(s.segment.path) for s in resolved.sources]
    assert names == ["scan_001.h5", "scan_002.h5", "scan_003.h5"]
    assert [(s.segment.start, s.segment.count) for s in resolved.sources] == [
        (0, 6),
        (6, 1),
        (7, 4),
    ]
    # Several paths, given in any order, are sorted too.
    again = resolve_inputs([str(tmp_path / n) for n in counts], None)
    assert [s.segment.path for s in again.sources] == [s.segment.path for s in resolved.sources]


def test_vds_resolves_and_lists_its_sources(tmp_path):
    blocks = [detector_frames(n, H, W, seed=n) for n in (4, 6)]
    vds, parts = write_vds(str(tmp_path), "v", blocks)
    (src,) = resolve_inputs([vds], None).sources
    assert src.kind == "virtual" and src.segment.path == vds and src.segment.count == 10
    assert [p for p, _ in src.virtual_sources] == parts
    os.remove(parts[1])
    with pytest.raises(InputError, match=f"source of virtual dataset .* is missing: {parts[1]}"):
        resolve_inputs([vds], None)


_CHECK_IN_FRESH_PROCESS = """
import sys
import h5py
import numpy as np
from framestats.inputs.sources import resolve_inputs
(src,) = resolve_inputs([sys.argv[1]], None).sources
with h5py.File(src.segment.path) as f:
    frames = f[src.segment.dataset][:]
print(src.segment.count, "hdf5plugin" in sys.modules, int(frames.astype(np.int64).sum()))
"""


@pytest.mark.parametrize(
    "form, whole_hdf5plugin",
    [
        ("none", False),
        ("gzip", False),
        ("bslz4", True),
        ("lz4", True),
        ("zstd", True),
        ("blosc", True),
        ("vds-bslz4", True),
    ],
)
def test_plugin_filters_are_registered_only_when_an_input_needs_them(
    tmp_path, form, whole_hdf5plugin
):
    """hdf5plugin (a dozen filter libraries) is loaded only for a dataset that needs a
    filter HDF5 lacks, a virtual one's sources included, and the frames read as written.
    """
    frames = detector_frames(5, H, W, seed=3)
    if form == "vds-bslz4":
        path, _ = write_vds(str(tmp_path), "v", [frames[:2], frames[2:]], bitshuffle=True)
    else:
        path = write_stack(str(tmp_path / f"{form}.h5"), frames, form)
    out = subprocess.run(
        [sys.executable, "-c", _CHECK_IN_FRESH_PROCESS, path],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    total = int(frames.astype(np.int64).sum())
    assert out.stdout.split() == ["5", str(whole_hdf5plugin), str(total)]


def test_explicit_dataset_through_an_external_link_reads_the_data_file(eiger):
    master, _ = eiger
    (src,) = resolve_inputs([master], "/entry/data/data_000002").sources
    assert src.segment.path == os.path.join(os.path.dirname(master), "scan_data_000002.h5")
    assert src.segment.count == 8


@settings(max_examples=200, deadline=None)
@given(
    counts=st.lists(st.integers(1, 9), min_size=1, max_size=5),
    start=st.none() | st.integers(-45, 45),
    stop=st.none() | st.integers(-45, 45),
    step=st.integers(1, 7),
)
def test_frame_selection_matches_python_slicing(counts, start, stop, step):
    segs, pos = [], 0
    for i, n in enumerate(counts):
        segs.append(Segment(path=f"f{i}", dataset="d", start=pos, count=n, index_base=pos))
        pos += n
    wanted = np.arange(pos)[slice(start, stop, step)]
    frames = range(*slice(start, stop, step).indices(pos))
    chosen, out = [], 0
    for seg in segs:
        part = select_segment(seg, frames, out)
        if part is not None:
            assert part.start == out and part.count > 0 and part.offset < seg.count
            assert part.offset + part.step * (part.count - 1) < seg.count, "stays inside its file"
            chosen.append(part)
            out += part.count
    got = np.concatenate([s.frame_index() for s in chosen]) if chosen else np.array([], int)
    np.testing.assert_array_equal(got, wanted)


def test_parsers():
    assert parse_frames("2:10:3").indices(100) == range(2, 10, 3)
    assert parse_frames(":5").indices(3) == range(0, 3)
    assert parse_frames("-4:").indices(10) == range(6, 10)
    assert parse_frames("::2").normalized() == "::2"
    for bad in ("5", "a:b", "1:2:0", "1:2:-1", "1:2:3:4", ""):
        with pytest.raises(OptionError, match="--frames"):
            parse_frames(bad)
    assert parse_valid_range("0:65534") == (0, 65534)
    assert parse_valid_range(":1e3") == (None, 1000)
    assert parse_valid_range("-0.5:") == (-0.5, None)
    for bad in ("1", ":", "a:2", "5:1", "0:inf", "1:2:3"):
        with pytest.raises(OptionError, match="--valid-range"):
            parse_valid_range(bad)
    assert effective_range(None, 3000) == (None, 3000)
    assert effective_range((10, 5000), 3000) == (10, 3000)
    assert effective_range((10, 20), None) == (10, 20)
    with pytest.raises(OptionError, match="saturation"):
        effective_range((5000, None), 3000)


def test_select_drops_files_without_frames_but_records_them(tmp_path):
    for name, n in (("a.h5", 4), ("b.h5", 3), ("c.h5", 5)):
        write_stack(str(tmp_path / name), detector_frames(n, H, W, seed=n))
    resolved = resolve_inputs([str(tmp_path / "*.h5")], None)
    picked = select(resolved, range(8, 12), "8:12")
    assert [os.path.basename(s.segment.path) for s in picked.sources] == ["c.h5"]
    rows = picked.records()
    assert [r["frames"] for r in rows] == [[0, 0], [0, 0], [0, 4]]
    assert rows[2]["file_frames"] == {"start": 1, "step": 1, "count": 4}
    with pytest.raises(OptionError, match="selects no frame of the 12 input frames"):
        select(resolved, range(20, 30), "20:30")


def _spec(dtype, valid_range):
    from framestats.messages import JobSpec

    return JobSpec(
        job_id="j", segments=(), frame_shape=(H, W), dtype=dtype, n_frames=1, n_regions=1,
        stats=("sum",), boundaries=(0, 1), output="o", workdir="w", mask_path="m",
        mask_sha256="", queue="q", chunk_frames=1, created=0.0, version="0",
        options={"valid_range": valid_range},
    )  # fmt: skip


def test_value_range_in_the_worker():
    from worker.valuerange import ValueRange, fit_regions

    assert ValueRange.from_spec(_spec("<u2", None)) is None
    assert ValueRange.from_spec(_spec("<u2", [None, 65535])) is None, "cannot exclude a uint16"
    assert ValueRange.from_spec(_spec("<u2", [0, None])) is None
    assert ValueRange.from_spec(_spec("<u2", [None, 65534])) is not None
    assert ValueRange.from_spec(_spec("<f4", [None, 1e30])) is not None, "NaN-free floats vary"
    vr = ValueRange.from_spec(_spec(">i4", [-2, 3]))
    assert vr is not None
    block = np.arange(-5, 7, dtype=">i4").reshape(1, 3, 4)
    out = vr.apply(block)
    assert out.dtype == np.float64
    expected = np.where((block >= -2) & (block <= 3), block, np.nan).astype(np.float64)
    np.testing.assert_array_equal(out, expected)
    assert np.shares_memory(vr.apply(block), out), "the buffer is reused"
    padded = fit_regions({"sum": np.ones((2, 1)), "mean": np.ones((2, 1))}, 3)
    np.testing.assert_array_equal(padded["sum"], [[1, 0, 0], [1, 0, 0]])
    assert np.isnan(padded["mean"][:, 1:]).all()
