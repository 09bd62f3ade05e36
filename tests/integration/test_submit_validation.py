"""Bad input: one line naming the problem, a non-zero exit, nothing queued, nothing written."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from producer.cli import cli
from producer.samples import detector_frames, write_stack
from tests.support.workers import stored_keys


@pytest.fixture
def files(tmp_path):
    frames = detector_frames(10, 6, 5, seed=2)
    data = write_stack(str(tmp_path / "in.h5"), frames, form="gzip", chunk_frames=2)
    np.save(tmp_path / "m.npy", np.ones((6, 5), bool))
    return tmp_path, data, str(tmp_path / "m.npy")


def snapshot(folder) -> set[str]:
    return {os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs}


def run_bad(folder, redis_url, redis_client, args, expect):
    before_files = snapshot(folder)
    before_keys = stored_keys(redis_client)
    result = CliRunner().invoke(cli, args, env={"REDIS_URL": redis_url}, catch_exceptions=False)
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert expect in lines[0], lines[0]
    assert "Traceback" not in result.output
    assert snapshot(folder) == before_files, "nothing written"
    assert stored_keys(redis_client) == before_keys, "nothing queued"
    return lines[0]


def make(folder, name, maker):
    path = str(folder / name)
    maker(path)
    return path


CASES = {
    "missing file": (lambda f, d, m: ["submit", str(f / "nope.h5"), "--mask", m], "not found"),
    "not hdf5": (
        lambda f, d, m: [
            "submit",
            make(f, "x.h5", lambda p: open(p, "w").write("hello")),
            "--mask",
            m,
        ],
        "not an HDF5 file",
    ),
    "truncated": (
        lambda f, d, m: [
            "submit",
            make(f, "t.h5", lambda p: open(p, "wb").write(open(d, "rb").read()[:3000])),
            "--mask",
            m,
        ],
        "t.h5",
    ),
    "missing dataset": (
        lambda f, d, m: ["submit", d, "--mask", m, "--dataset", "/nope"],
        "dataset /nope not found",
    ),
    "2-D dataset": (
        lambda f, d, m: [
            "submit",
            make(
                f,
                "two.h5",
                lambda p: h5py.File(p, "w").create_dataset("x", data=np.zeros((4, 4))).file.close(),
            ),
            "--mask",
            m,
            "--dataset",
            "/x",
        ],
        "2-D",
    ),
    "4-D dataset": (
        lambda f, d, m: [
            "submit",
            make(
                f,
                "four.h5",
                lambda p: (
                    h5py.File(p, "w").create_dataset("x", data=np.zeros((2, 2, 6, 5))).file.close()
                ),
            ),
            "--mask",
            m,
            "--dataset",
            "/x",
        ],
        "4-D",
    ),
    "zero frames": (
        lambda f, d, m: [
            "submit",
            make(
                f,
                "zero.h5",
                lambda p: (
                    h5py.File(p, "w").create_dataset("x", shape=(0, 6, 5), dtype="u2").file.close()
                ),
            ),
            "--mask",
            m,
        ],
        "zero frames",
    ),
    "mask wrong shape": (
        lambda f, d, m: [
            "submit",
            d,
            "--mask",
            make(f, "w.npy", lambda p: np.save(p, np.ones((5, 6), bool))),
        ],
        "shape (5, 6)",
    ),
    "mask not 2-D": (
        lambda f, d, m: [
            "submit",
            d,
            "--mask",
            make(f, "w.npy", lambda p: np.save(p, np.ones((2, 6, 5), bool))),
        ],
        "3-D",
    ),
    "float mask": (
        lambda f, d, m: [
            "submit",
            d,
            "--mask",
            make(f, "w.npy", lambda p: np.save(p, np.full((6, 5), 0.5))),
        ],
        "non-integer",
    ),
    "empty mask": (
        lambda f, d, m: [
            "submit",
            d,
            "--mask",
            make(f, "w.npy", lambda p: np.save(p, np.zeros((6, 5), bool))),
        ],
        "selects no pixel",
    ),
    "mask not npy": (
        lambda f, d, m: [
            "submit",
            d,
            "--mask",
            make(f, "w.txt", lambda p: open(p, "w").write("1")),
        ],
        ".npy",
    ),
    "mask corrupt": (
        lambda f, d, m: [
            "submit",
            d,
            "--mask",
            make(f, "w.npy", lambda p: open(p, "w").write("garbage")),
        ],
        "not a valid .npy",
    ),
    "mask missing": (
        lambda f, d, m: ["submit", d, "--mask", str(f / "none.npy")],
        "mask file not found",
    ),
    "unknown stat": (
        lambda f, d, m: ["submit", d, "--mask", m, "--stats", "sum,median"],
        "unknown statistic median",
    ),
    "chunk zero": (
        lambda f, d, m: ["submit", d, "--mask", m, "--chunk-frames", "0"],
        "--chunk-frames",
    ),
    "chunk negative": (
        lambda f, d, m: ["submit", d, "--mask", m, "--chunk-frames", "-3"],
        "--chunk-frames",
    ),
    "output exists": (
        lambda f, d, m: [
            "submit",
            d,
            "--mask",
            m,
            "--output",
            make(f, "o.h5", lambda p: open(p, "w").write("")),
        ],
        "output exists",
    ),
    "output folder missing": (
        lambda f, d, m: ["submit", d, "--mask", m, "--output", str(f / "no" / "o.h5")],
        "output folder does not exist",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input(case, files, redis_url, redis_client):
    folder, data, mask = files
    build, expect = CASES[case]
    args = build(folder, data, mask)
    run_bad(folder, redis_url, redis_client, args, expect)


def test_several_3d_datasets_are_listed(files, redis_url, redis_client):
    folder, _, mask = files
    path = str(folder / "multi.h5")
    with h5py.File(path, "w") as f:
        f.create_dataset("a", data=np.zeros((2, 6, 5)))
        f.create_dataset("b", data=np.zeros((2, 6, 5)))
    line = run_bad(
        folder, redis_url, redis_client, ["submit", path, "--mask", mask], "several 3-D datasets"
    )
    assert "/a" in line and "/b" in line


def test_unreachable_redis_names_url(files):
    folder, data, mask = files
    before = snapshot(folder)
    result = CliRunner().invoke(
        cli, ["submit", data, "--mask", mask], env={"REDIS_URL": "redis://:secret@127.0.0.1:1/0"}
    )
    assert result.exit_code == 3
    assert "redis://:***@127.0.0.1:1/0" in result.output
    assert "secret" not in result.output
    assert snapshot(folder) == before


def test_mask_unreadable(files, redis_url, redis_client):
    """A mask the user may not read: as root (which reads any file) the CLI runs with the
    capabilities that bypass file permissions dropped (setpriv)."""
    import shutil
    import subprocess
    import sys

    folder, data, mask = files
    os.chmod(mask, 0)
    argv = [sys.executable, "-m", "producer", "submit", data, "--mask", mask]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("root reads any file and setpriv is missing to drop that capability")
        argv = [setpriv, "--bounding-set=-dac_override,-dac_read_search", *argv]
    before_files, before_keys = snapshot(folder), stored_keys(redis_client)
    res = subprocess.run(
        argv, env={**os.environ, "REDIS_URL": redis_url}, capture_output=True, text=True
    )
    lines = [line for line in (res.stdout + res.stderr).splitlines() if line.strip()]
    assert res.returncode == 2, res.stderr
    assert lines == [f"error: mask file is not readable: {mask}"], lines
    assert snapshot(folder) == before_files
    assert stored_keys(redis_client) == before_keys


def test_compression_filter_not_available(files, redis_url, redis_client):
    """A dataset whose chunks need an HDF5 filter no plugin provides (id 40123)."""
    from h5py import h5d, h5p, h5s, h5t, h5z

    folder, _, mask = files
    path = str(folder / "nofilter.h5")
    with h5py.File(path, "w") as f:
        dcpl = h5p.create(h5p.DATASET_CREATE)
        dcpl.set_chunk((2, 6, 5))
        # HDF5 refuses to create a dataset with an unregistered mandatory filter, so mark
        # it optional; the chunks are written as if it had been applied (filter_mask 0).
        dcpl.set_filter(40123, h5z.FLAG_OPTIONAL, (1,))
        dsid = h5d.create(
            f.id, b"data", h5t.NATIVE_UINT16, h5s.create_simple((10, 6, 5)), dcpl=dcpl
        )
        for i in range(5):
            dsid.write_direct_chunk((2 * i, 0, 0), np.ones((2, 6, 5), "u2").tobytes(), 0)
    line = run_bad(
        folder,
        redis_url,
        redis_client,
        ["submit", path, "--mask", mask],
        "needs a compression filter that is not available",
    )
    assert "HDF5 filter id 40123" in line


@pytest.mark.integration
def test_corrupt_chunk_found_at_run_time(tmp_path, redis_url, module_worker):
    """Frame 0 reads, so submit accepts the file; a damaged gzip chunk further on fails
    the job with its frame range and the reason, and no output is written."""
    from tests.support.workers import run_producer

    frames = detector_frames(40, 16, 16, seed=4)
    data = write_stack(str(tmp_path / "in.h5"), frames, form="gzip", chunk_frames=4)
    with h5py.File(data, "r") as f:
        info = f["/entry/data/data"].id.get_chunk_info(5)  # frames 20-23
    with open(data, "r+b") as fh:
        fh.seek(info.byte_offset + info.size // 3)
        fh.write(b"\xff" * 24)
    np.save(tmp_path / "m.npy", np.ones((16, 16), bool))
    out = tmp_path / "out.h5"
    res = run_producer(
        redis_url,
        "submit",
        data,
        "--mask",
        str(tmp_path / "m.npy"),
        "--output",
        str(out),
        "--chunk-frames",
        "8",
        "--queue",
        module_worker.queue,
        "--wait",
    )
    assert res.returncode != 0
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: job ") and " failed: " in last, last
    assert "chunk 2 (frames 16-24): cannot read frames 16-24" in last, last
    assert "filter returned failure during read" in last, last
    assert not out.exists()
