"""Real detector layouts end to end: bad input through the CLI (one line, nothing written,
nothing queued) and jobs on real workers compared with the independent numpy reference."""

from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from producer.cli import cli
from producer.samples import detector_frames, write_stack
from tests.support.layouts import H, W, eiger_scan, pixel_mask, write_eiger, write_vds
from tests.support.reference import reference
from tests.support.workers import WorkerProcess, run_producer, stored_keys

ALL = ("sum", "mean", "count", "min", "max", "std")


@pytest.fixture
def eiger(tmp_path):
    return eiger_scan(str(tmp_path))


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
