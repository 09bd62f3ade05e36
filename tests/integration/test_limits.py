"""Masks and jobs that would make absurd outputs are refused at submit, naming the limit.

Each refusal is one line naming the setting (``FRAMESTATS_MAX_REGIONS``,
``FRAMESTATS_MAX_OUTPUT_GIB``), exit code 2, nothing written and nothing queued.
"""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from framestats import constants as C
from producer.cli import cli
from producer.samples import detector_frames, write_stack
from tests.support.workers import stored_keys

H, W = 6, 5


@pytest.fixture
def files(tmp_path):
    data = write_stack(
        str(tmp_path / "in.h5"), detector_frames(10, H, W, seed=2), form="gzip", chunk_frames=2
    )
    return tmp_path, data


def snapshot(folder) -> set[str]:
    return {os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs}


def labels(dtype, top) -> np.ndarray:
    """A label image with regions 1 and 2, and one pixel labelled ``top``."""
    out = np.ones((H, W), dtype=dtype)
    out[0, :] = 2
    out[H - 1, W - 1] = top
    return out


def save(folder, name, array) -> str:
    path = str(folder / name)
    if name.endswith(".npy"):
        np.save(path, array)
    else:
        with h5py.File(path, "w") as f:
            f["mask"] = array
        path += ":/mask"
    return path


def invoke(args, redis_url, **env):
    return CliRunner().invoke(cli, args, env={"REDIS_URL": redis_url, **env})


def refused(folder, redis_url, redis_client, args, expect, **env) -> str:
    before = snapshot(folder), stored_keys(redis_client)
    result = invoke(args, redis_url, **env)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert expect in lines[0], lines[0]
    assert (snapshot(folder), stored_keys(redis_client)) == before, "nothing written or queued"
    return lines[0]


MASKS = {
    # a float label beyond int32 used to wrap around to a negative int32 and be accepted
    "float 3e9": ("float64", 3e9, "m.npy"),
    "float 3e9 in HDF5": ("float64", 3e9, "m.h5"),
    "float 1e300": ("float64", 1e300, "m.npy"),
    "int64 3e9": ("int64", 3_000_000_000, "m.npy"),
    "uint64 2**63": ("uint64", 2**63, "m.npy"),
    # a region count that would size every output: one pixel labelled 2e9
    "int32 2e9": ("int32", 2_000_000_000, "m.npy"),
    "float32 2e9": ("float32", 2e9, "m.npy"),
    "int32 65536": ("int32", 65_536, "m.npy"),
}


@pytest.mark.parametrize("case", sorted(MASKS))
def test_labels_beyond_the_region_limit_are_refused(case, files, redis_url, redis_client):
    folder, data = files
    dtype, top, name = MASKS[case]
    mask = save(folder, name, labels(dtype, top))
    line = refused(
        folder, redis_url, redis_client, ["submit", data, "--mask", mask], "FRAMESTATS_MAX_REGIONS"
    )
    assert "at most 65535" in line, line


@pytest.mark.parametrize(
    ("value", "expect"),
    [(0.5, "non-integer"), (np.nan, "non-integer"), (np.inf, "non-integer"), (-1.0, "negative")],
)
def test_float_labels_must_be_whole_and_in_range(value, expect, files, redis_url, redis_client):
    folder, data = files
    mask = save(folder, "m.npy", labels("float64", value))
    refused(folder, redis_url, redis_client, ["submit", data, "--mask", mask], expect)


def test_region_limit_is_a_setting(files, redis_url, redis_client):
    """A lower FRAMESTATS_MAX_REGIONS refuses what the default accepts; a higher one
    accepts what the default refuses, with the label kept as the region count."""
    folder, data = files
    mask = save(folder, "m.npy", labels("int32", 100))
    line = refused(
        folder, redis_url, redis_client, ["submit", data, "--mask", mask], "FRAMESTATS_MAX_REGIONS",
        FRAMESTATS_MAX_REGIONS="99",
    )  # fmt: skip
    assert "at most 99" in line
    mask = save(folder, "big.npy", labels("float64", 70_000.0))
    out = str(folder / "out.h5")
    result = invoke(
        ["submit", data, "--mask", mask, "--output", out, "--queue", "q-limits-idle"],
        redis_url,
        FRAMESTATS_MAX_REGIONS="70000",
    )
    assert result.exit_code == 0, result.output
    job_id = result.output.split()[0]
    assert redis_client.hget(C.job_key(job_id), "n_regions") == "70000"
    redis_client.delete(*C.job_keys(job_id), "q-limits-idle")


def test_output_size_over_the_limit_is_refused(files, redis_url, redis_client):
    """10 frames x 1000 regions x 6 statistics x 8 bytes = 469 KiB, over a 0.0001 GiB
    (105 KiB) limit: refused naming FRAMESTATS_MAX_OUTPUT_GIB; the same job passes the
    default limit."""
    folder, data = files
    mask = save(folder, "m.npy", labels("int32", 1000))
    args = ["submit", data, "--mask", mask, "--stats", "sum,mean,count,min,max,std"]
    line = refused(
        folder, redis_url, redis_client, args, "FRAMESTATS_MAX_OUTPUT_GIB",
        FRAMESTATS_MAX_OUTPUT_GIB="0.0001",
    )  # fmt: skip
    assert "10 frames x 1000 regions x 6 statistics" in line, line
    out = str(folder / "ok.h5")
    result = invoke([*args, "--output", out, "--queue", "q-limits-idle"], redis_url)
    assert result.exit_code == 0, result.output
    redis_client.delete(*C.job_keys(result.output.split()[0]), "q-limits-idle")


def test_output_estimate():
    """Per statistic a float64 per frame and region; the frame index and pixel counts;
    and the largest task's result on top."""
    from framestats.limits import output_bytes

    whole, task = output_bytes(1000, 10, 2, [0, 300, 700, 1000])
    assert whole == 1000 * (10 * 2 * 8 + 8) + 10 * 8
    assert task == 400 * 10 * 2 * 8
    # the default limit refuses a stray label's worth of regions over a long scan
    whole, task = output_bytes(10**6, 65_535, 6, [0, 10**6])
    assert whole > 256 * 2**30
