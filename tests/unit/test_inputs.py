"""Real detector layouts as input: Eiger master files, globs of files, VDS, --frames, masks.

Unit tests resolve generated layouts without Redis; error cases run the real CLI and
check one line, nothing written, nothing queued; end-to-end tests run real workers and
compare with the independent numpy reference.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from framestats.errors import InputError, OptionError
from framestats.inputs.selection import effective_range, parse_frames, parse_valid_range
from framestats.inputs.sources import resolve_inputs, select, select_segment
from framestats.messages import Segment
from producer.cli import cli
from producer.samples import detector_frames, write_stack
from tests.support.layouts import write_eiger, write_vds
from tests.support.reference import reference
from tests.support.workers import WorkerProcess, run_producer, stored_keys

H, W = 12, 10
ALL = ("sum", "mean", "count", "min", "max", "std")


def pixel_mask() -> np.ndarray:
    """An Eiger-like pixel mask: gaps and dead pixels plus informational upper bits."""
    pm = np.zeros((H, W), np.uint32)
    pm[:, 4] = 1  # a gap column
    pm[2, 7] = 2  # dead
    pm[9, 1] = 1 << 4  # noisy
    pm[5, 5] = 1 << 20  # informational only: a good pixel
    pm[6, 6] = 1 << 31  # virtual-pixel tag only: a good pixel
    pm[7, 8] = (1 << 31) | 8  # tagged and over-responding: bad
    return pm


@pytest.fixture
def eiger(tmp_path):
    blocks = [detector_frames(n, H, W, seed=n) for n in (5, 8, 3)]
    # A few counts at/above the cutoff, as saturated or flagged pixels would be.
    blocks[0][1, 3, 3] = 65535
    blocks[1][4, 8, 2] = 4000
    blocks[2][0, 0, 0] = 3001
    master = write_eiger(str(tmp_path), "scan", blocks, pixel_mask=pixel_mask(), cutoff=3000)
    return master, blocks


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


# --- bad input through the CLI: one line, nothing written, nothing queued --------------------


def snapshot(folder) -> set[str]:
    return {os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs}


def run_bad(folder, redis_url, redis_client, args, expect) -> str:
    before_files = snapshot(folder)
    before_keys = stored_keys(redis_client)
    result = CliRunner().invoke(cli, args, env={"REDIS_URL": redis_url}, catch_exceptions=False)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert expect in lines[0], lines[0]
    assert snapshot(folder) == before_files, "nothing written"
    assert stored_keys(redis_client) == before_keys, "nothing queued"
    return lines[0]


@pytest.fixture
def layout(tmp_path, eiger):
    master, _ = eiger
    for name, n in (("p_1.h5", 3), ("p_2.h5", 2)):
        write_stack(str(tmp_path / name), detector_frames(n, H, W, seed=n), form="gzip")
    write_stack(str(tmp_path / "p_small.h5"), detector_frames(2, H, W - 1))
    vds, parts = write_vds(str(tmp_path), "v", [detector_frames(2, H, W, seed=9)] * 2)
    np.save(tmp_path / "m.npy", np.ones((H, W), bool))
    np.save(tmp_path / "labels.npy", np.arange(H * W).reshape(H, W) % 3)
    np.save(tmp_path / "wrong.npy", np.ones((H, W + 1), bool))
    np.save(tmp_path / "allbad.npy", np.ones((H, W), bool))
    with h5py.File(tmp_path / "pm.h5", "w") as f:
        f["/a"] = pixel_mask()
        f["/b"] = pixel_mask()
    return tmp_path, master, vds, parts


def _damage_link(folder, master):
    os.remove(os.path.join(folder, "scan_data_000003.h5"))
    return [master]


def _garbage_link(folder, master):
    with open(os.path.join(folder, "scan_data_000001.h5"), "w") as fh:
        fh.write("junk")
    return [master]


def _vds_missing(folder, parts, vds):
    os.remove(parts[0])
    return [vds]


BAD = {
    "linked file missing": (
        lambda f, m, v, p: (_damage_link(f, m), []),
        "data file not found: {f}/scan_data_000003.h5",
    ),
    "linked file unreadable": (
        lambda f, m, v, p: (_garbage_link(f, m), []),
        "scan_data_000001.h5",
    ),
    "vds source missing": (lambda f, m, v, p: (_vds_missing(f, p, v), []), "v_part0.h5"),
    "glob matches nothing": (
        lambda f, m, v, p: ([str(f / "zz_*.h5")], []),
        "no input file matches",
    ),
    "glob different shapes": (
        lambda f, m, v, p: ([str(f / "p_*.h5")], []),
        "different frame shapes",
    ),
    "same file twice": (lambda f, m, v, p: ([str(f / "p_1.h5"), str(f / "p_1.h5")], []), "twice"),
    "data file and its master": (
        lambda f, m, v, p: ([m, str(f / "scan_data_000002.h5")], []),
        "pass only the master",
    ),
    "frames syntax": (lambda f, m, v, p: ([m], ["--frames", "1-5"]), "--frames '1-5'"),
    "frames step zero": (
        lambda f, m, v, p: ([m], ["--frames", "::0"]),
        "STEP must be a positive integer",
    ),
    "frames empty": (lambda f, m, v, p: ([m], ["--frames", "100:"]), "selects no frame of the 16"),
    "valid range syntax": (lambda f, m, v, p: ([m], ["--valid-range", "x"]), "--valid-range 'x'"),
    "valid range reversed": (
        lambda f, m, v, p: ([m], ["--valid-range", "9:1"]),
        "LO is above HI",
    ),
    "valid range above saturation": (
        lambda f, m, v, p: ([m], ["--valid-range", "5000:"]),
        "above the detector's saturation value 3000",
    ),
    "convention unknown": (
        lambda f, m, v, p: ([m], ["--mask-convention", "cbf"]),
        "--mask-convention 'cbf' is unknown",
    ),
    "invert labels": (
        lambda f, m, v, p: ([m], ["--invert", "--mask", str(f / "labels.npy")]),
        "--invert needs a boolean mask",
    ),
    "exclude wrong shape": (
        lambda f, m, v, p: ([m], ["--exclude", str(f / "wrong.npy")]),
        "wrong.npy has shape (12, 11)",
    ),
    "exclude missing": (
        lambda f, m, v, p: ([m], ["--exclude", str(f / "nope.npy")]),
        "mask file not found",
    ),
    "exclude everything": (
        lambda f, m, v, p: ([m], ["--exclude", str(f / "allbad.npy")]),
        "selects no pixel once bad pixels are excluded",
    ),
    "h5 mask dataset missing": (
        lambda f, m, v, p: ([m], ["--mask", str(f / "pm.h5") + ":/zz"]),
        "dataset /zz not found in mask file",
    ),
    "h5 mask ambiguous": (
        lambda f, m, v, p: ([m], ["--mask", str(f / "pm.h5")]),
        "several 2-D datasets",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input(case, layout, redis_url, redis_client):
    folder, master, vds, parts = layout
    build, expect = BAD[case]
    inputs, extra = build(folder, master, vds, parts)
    args = ["submit", *inputs, "--mask", str(folder / "m.npy"), *extra]
    if "--mask" in extra:  # the case's own mask replaces the default one
        args = ["submit", *inputs, *extra]
    run_bad(folder, redis_url, redis_client, args, expect.format(f=folder))


def test_data_root_applies_to_linked_and_virtual_source_files(tmp_path, redis_url, redis_client):
    inside, outside = tmp_path / "root", tmp_path / "elsewhere"
    inside.mkdir()
    outside.mkdir()
    blocks = [detector_frames(2, H, W, seed=i) for i in range(2)]
    # A master inside the root whose (absolute) links lead out of it.
    write_eiger(str(outside), "x", blocks)
    with h5py.File(inside / "x_master.h5", "w") as f:
        for i in (1, 2):
            f[f"/entry/data/data_{i:06d}"] = h5py.ExternalLink(
                str(outside / f"x_data_{i:06d}.h5"), "/entry/data/data"
            )
    # A VDS inside the root over a source file outside it.
    layout = h5py.VirtualLayout(shape=(4, H, W), dtype=blocks[0].dtype)
    layout[0:2] = h5py.VirtualSource(
        str(outside / "x_data_000001.h5"), "/entry/data/data", (2, H, W)
    )
    write_stack(str(inside / "local.h5"), blocks[1])
    layout[2:4] = h5py.VirtualSource(str(inside / "local.h5"), "/entry/data/data", (2, H, W))
    with h5py.File(inside / "v.h5", "w") as f:
        f.create_virtual_dataset("/entry/data/data", layout)
    np.save(inside / "m.npy", np.ones((H, W), bool))
    env = {"REDIS_URL": redis_url, "DATA_ROOT": str(inside)}
    for data in ("x_master.h5", "v.h5"):
        before = stored_keys(redis_client)
        result = CliRunner().invoke(
            cli, ["submit", str(inside / data), "--mask", str(inside / "m.npy")], env=env
        )
        assert result.exit_code == 2, result.output
        assert "x_data_000001.h5" in result.output and "outside DATA_ROOT" in result.output
        assert stored_keys(redis_client) == before
        assert not any(p.name.endswith(".parts") for p in inside.iterdir())


@pytest.mark.parametrize("which", ["linked", "virtual"])
def test_unreadable_linked_or_source_file_is_named(tmp_path, which, redis_url, redis_client):
    """As root (which reads any file) the CLI runs without the capabilities that bypass
    file permissions (setpriv), as in test_submit_validation."""
    import shutil
    import subprocess
    import sys

    blocks = [detector_frames(2, H, W, seed=i) for i in range(2)]
    if which == "linked":
        data = write_eiger(str(tmp_path), "s", blocks)
        culprit = str(tmp_path / "s_data_000002.h5")
        expect = f"input file is not readable: {culprit} (linked from {data}:"
    else:
        data, parts = write_vds(str(tmp_path), "v", blocks)
        culprit = parts[1]
        expect = f"is not readable: {culprit}"
    os.chmod(culprit, 0)
    np.save(tmp_path / "m.npy", np.ones((H, W), bool))
    argv = [sys.executable, "-m", "producer", "submit", data, "--mask", str(tmp_path / "m.npy")]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("root reads any file and setpriv is missing to drop that capability")
        argv = [setpriv, "--bounding-set=-dac_override,-dac_read_search", *argv]
    before_files, before_keys = snapshot(tmp_path), stored_keys(redis_client)
    res = subprocess.run(
        argv, env={**os.environ, "REDIS_URL": redis_url}, capture_output=True, text=True
    )
    lines = [line for line in (res.stdout + res.stderr).splitlines() if line.strip()]
    assert res.returncode == 2, res.stderr
    assert len(lines) == 1 and expect in lines[0], lines
    assert snapshot(tmp_path) == before_files
    assert stored_keys(redis_client) == before_keys


def test_detector_mask_of_wrong_shape(tmp_path, redis_url, redis_client):
    master = write_eiger(
        str(tmp_path), "odd", [detector_frames(2, H, W)], pixel_mask=np.zeros((3, 3), np.uint32)
    )
    np.save(tmp_path / "m.npy", np.ones((H, W), bool))
    args = ["submit", master, "--mask", str(tmp_path / "m.npy")]
    line = run_bad(tmp_path, redis_url, redis_client, args, "detector pixel mask")
    assert "odd_master.h5" in line and "--no-detector-mask" in line


# --- end to end: real workers, compared with numpy -------------------------------------------


def read_output(path):
    with h5py.File(path, "r") as f:
        out = {k: f["results"][k][()] for k in f["results"]}
        attrs = dict(f.attrs)
    return out, attrs


def compare(out, frames, labels, stats):
    ref = reference(frames, labels, stats)
    exact = frames.dtype.kind in "ui" or np.all(np.isnan(frames) | (frames == np.round(frames)))
    for s in stats:
        if exact and s in ("sum", "count", "min", "max"):
            np.testing.assert_array_equal(out[s], ref[s], err_msg=s)
        else:
            np.testing.assert_allclose(out[s], ref[s], rtol=1e-12, equal_nan=True, err_msg=s)


def submit(redis_url, worker, *args):
    res = run_producer(redis_url, "submit", *args, "--queue", worker.queue, "--wait")
    assert res.returncode == 0, res.stderr + worker.log()
    return res


def nan_outside(frames, lo, hi):
    out = frames.astype(np.float64)
    with np.errstate(invalid="ignore"):
        out[(out < lo) | (out > hi)] = np.nan
    return out


@pytest.mark.integration
def test_eiger_master_end_to_end(tmp_path, eiger, redis_url, module_worker: WorkerProcess):
    master, blocks = eiger
    frames = np.concatenate(blocks)
    labels = (np.arange(H * W).reshape(H, W) % 4).astype(np.int32)
    np.save(tmp_path / "roi.npy", labels)
    out_path = str(tmp_path / "out.h5")
    submit(
        redis_url,
        module_worker,
        master,
        "--mask",
        str(tmp_path / "roi.npy"),
        "--stats",
        ",".join(ALL),
        "--chunk-frames",
        "3",
        "--output",
        out_path,
    )
    out, attrs = read_output(out_path)
    good = (pixel_mask() & 0xFFFF) == 0
    expected_labels = np.where(good, labels, 0)
    compare(out, nan_outside(frames, -np.inf, 3000), expected_labels, ALL)
    assert np.nanmax(out["max"]) <= 3000, "counts above the cutoff are excluded"
    np.testing.assert_array_equal(out["frame_index"], np.arange(16))
    np.testing.assert_array_equal(
        out["pixel_count"], np.bincount(expected_labels.ravel(), minlength=4)[1:]
    )
    inputs = json.loads(attrs["input_files"])
    assert [os.path.basename(i["file"]) for i in inputs] == [
        f"scan_data_00000{i}.h5" for i in (1, 2, 3)
    ]
    assert [i["frames"] for i in inputs] == [[0, 5], [5, 13], [13, 16]]
    masks = json.loads(attrs["masks"])
    assert [m["role"] for m in masks] == ["regions", "detector", "combined"]
    assert masks[1]["path"] == os.path.abspath(master) and len(masks[1]["sha256"]) == 64
    assert "0xFFFF" in masks[1]["rule"]
    options = json.loads(attrs["options"])
    assert options["valid_range"] == [None, 3000]
    assert options["saturation"]["value"] == 3000
    assert options["detector_mask"] is True and options["mask_convention"] == "labels"


@pytest.mark.integration
def test_eiger_without_detector_mask_and_with_frames(
    tmp_path, eiger, redis_url, module_worker: WorkerProcess
):
    master, blocks = eiger
    frames = np.concatenate(blocks)
    np.save(tmp_path / "m.npy", np.ones((H, W), bool))
    out_path = str(tmp_path / "out.h5")
    submit(
        redis_url,
        module_worker,
        master,
        "--mask",
        str(tmp_path / "m.npy"),
        "--no-detector-mask",
        "--frames",
        "1:15:2",
        "--stats",
        "sum,count,max",
        "--output",
        out_path,
    )
    out, attrs = read_output(out_path)
    picked = np.arange(16)[1:15:2]
    compare(out, frames[picked], np.ones((H, W), np.int32), ("sum", "count", "max"))
    np.testing.assert_array_equal(out["frame_index"], picked)
    assert out["max"][0, 0] == 65535, "no saturation cut without the detector mask"
    inputs = json.loads(attrs["input_files"])
    assert [i["frames"] for i in inputs] == [[0, 2], [2, 6], [6, 7]]
    assert [i["file_frames"]["start"] for i in inputs] == [1, 0, 0]
    assert json.loads(attrs["options"])["frames"] == "1:15:2"


@pytest.mark.integration
def test_glob_of_files_with_frames_and_valid_range(
    tmp_path, redis_url, module_worker: WorkerProcess
):
    counts = (7, 2, 5)
    stacks = [detector_frames(n, H, W, dtype=np.float32, seed=n) for n in counts]
    stacks[0][2, 1, 1] = np.nan
    for i, stack in enumerate(stacks):
        write_stack(str(tmp_path / f"run_{i}.h5"), stack, form="bslz4", chunk_frames=2)
    frames = np.concatenate(stacks)
    labels = (np.arange(H * W).reshape(H, W) % 3).astype(np.int32)
    np.save(tmp_path / "roi.npy", labels)
    out_path = str(tmp_path / "out.h5")
    submit(
        redis_url,
        module_worker,
        str(tmp_path / "run_*.h5"),
        "--mask",
        str(tmp_path / "roi.npy"),
        "--frames",
        "1:13",
        "--valid-range",
        "1:6",
        "--stats",
        ",".join(ALL),
        "--chunk-frames",
        "2",
        "--output",
        out_path,
    )
    out, attrs = read_output(out_path)
    compare(out, nan_outside(frames[1:13], 1, 6), labels, ALL)
    np.testing.assert_array_equal(out["frame_index"], np.arange(1, 13))
    inputs = json.loads(attrs["input_files"])
    assert [os.path.basename(i["file"]) for i in inputs] == ["run_0.h5", "run_1.h5", "run_2.h5"]
    assert [i["index"] for i in inputs] == [[0, 7], [7, 9], [9, 14]]
    assert [i["frames"] for i in inputs] == [[0, 6], [6, 8], [8, 12]]


@pytest.mark.integration
def test_vds_with_h5_nexus_mask_and_exclude(tmp_path, redis_url, module_worker: WorkerProcess):
    blocks = [detector_frames(n, H, W, seed=n + 20) for n in (6, 5)]
    vds, _ = write_vds(str(tmp_path), "v", blocks)
    frames = np.concatenate(blocks)
    pm = pixel_mask()
    with h5py.File(tmp_path / "masks.h5", "w") as f:
        f["/entry/pixel_mask"] = pm
    bad = np.zeros((H, W), bool)
    bad[0] = True
    np.save(tmp_path / "bad.npy", bad)
    out_path = str(tmp_path / "out.h5")
    submit(
        redis_url,
        module_worker,
        vds,
        "--mask",
        f"{tmp_path}/masks.h5:/entry/pixel_mask",
        "--mask-convention",
        "nexus",
        "--exclude",
        str(tmp_path / "bad.npy"),
        "--stats",
        "sum,mean,count",
        "--output",
        out_path,
    )
    out, attrs = read_output(out_path)
    labels = (((pm & 0xFFFF) == 0) & ~bad).astype(np.int32)
    compare(out, frames, labels, ("sum", "mean", "count"))
    np.testing.assert_array_equal(out["frame_index"], np.arange(11))
    masks = json.loads(attrs["masks"])
    assert [m["role"] for m in masks] == ["regions", "exclude", "combined"]
    assert masks[0]["dataset"] == "/entry/pixel_mask" and masks[0]["convention"] == "nexus"
    assert attrs["mask_path"] == f"{tmp_path}/masks.h5:/entry/pixel_mask"
    (inp,) = json.loads(attrs["input_files"])
    assert inp["kind"] == "virtual" and len(inp["virtual_sources"]) == 2


@pytest.mark.integration
def test_label_image_and_emptied_top_region(tmp_path, redis_url, module_worker: WorkerProcess):
    from PIL import Image

    frames = detector_frames(9, H, W, seed=4)
    data = write_stack(str(tmp_path / "in.h5"), frames, form="gzip", chunk_frames=3)
    labels = np.zeros((H, W), np.uint16)
    labels[1:5, 1:5] = 1
    labels[6:, :] = 2
    labels[0, 9] = 3  # region 3: one pixel, excluded below
    Image.fromarray(labels).save(tmp_path / "roi.png")
    bad = np.zeros((H, W), np.uint8)
    bad[0, 9] = 1
    bad[7, 3] = 1
    np.save(tmp_path / "bad.npy", bad)
    out_path = str(tmp_path / "out.h5")
    submit(
        redis_url,
        module_worker,
        data,
        "--mask",
        str(tmp_path / "roi.png"),
        "--exclude",
        str(tmp_path / "bad.npy"),
        "--stats",
        "sum,mean,count",
        "--output",
        out_path,
    )
    out, _ = read_output(out_path)
    kept = np.where(bad > 0, 0, labels).astype(np.int32)
    assert out["sum"].shape == (9, 3), "region 3 keeps its column"
    sub = {k: v[:, :2] for k, v in out.items() if k in ("sum", "mean", "count")}
    compare(sub, frames, kept, ("sum", "mean", "count"))
    np.testing.assert_array_equal(out["sum"][:, 2], 0)
    np.testing.assert_array_equal(out["count"][:, 2], 0)
    assert np.all(np.isnan(out["mean"][:, 2]))
    np.testing.assert_array_equal(out["pixel_count"], [16, 59, 0])
