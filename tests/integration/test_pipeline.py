"""The main job end to end: real Redis, real worker processes, real compressed HDF5 files."""

from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pytest

from framestats import constants as C
from producer.samples import detector_frames, write_stack
from tests.support.reference import check_against_reference, read_output
from tests.support.workers import WorkerProcess, run_producer, start_worker

pytestmark = pytest.mark.integration

ALL = ("sum", "mean", "count", "min", "max", "std")


CASES = [
    # form, dtype, mask kind, frames, chunk frames in the file, --chunk-frames
    ("none", "uint16", "bool", 53, 1, 8),
    ("gzip", "float32", "labels", 41, 4, 8),
    ("bslz4", "uint16", "labels", 37, 1, 5),
    ("bslz4", ">i4", "bool", 23, 2, 6),
]


@pytest.mark.parametrize(("form", "dtype", "mask_kind", "n", "file_chunk", "task_frames"), CASES)
def test_submit_wait_matches_numpy(
    tmp_path,
    redis_url,
    module_worker: WorkerProcess,
    form,
    dtype,
    mask_kind,
    n,
    file_chunk,
    task_frames,
):
    h, w = 24, 20
    frames = detector_frames(
        n, h, w, dtype=np.dtype(dtype).newbyteorder("=") if dtype[0] != ">" else np.int32, seed=n
    )
    frames = frames.astype(dtype)
    if frames.dtype.kind == "f":
        frames[1, 3, 4] = np.nan
        frames[2, :, :5] = np.nan
    data = write_stack(str(tmp_path / "in.h5"), frames, form=form, chunk_frames=file_chunk)
    rng = np.random.default_rng(n)
    if mask_kind == "bool":
        labels = (rng.random((h, w)) > 0.3).astype(np.int32)
        np.save(tmp_path / "m.npy", labels.astype(bool))
    else:
        labels = rng.integers(0, 5, size=(h, w)).astype(np.int32)
        labels[labels == 3] = 0  # a label that never occurs: an empty region
        np.save(tmp_path / "m.npy", labels)
    out_path = tmp_path / "out.h5"
    res = run_producer(
        redis_url,
        "submit",
        data,
        "--mask",
        str(tmp_path / "m.npy"),
        "--output",
        str(out_path),
        "--stats",
        ",".join(ALL),
        "--chunk-frames",
        str(task_frames),
        "--queue",
        module_worker.queue,
        "--wait",
    )
    assert res.returncode == 0, res.stderr + module_worker.log()
    out = read_output(str(out_path))
    check_against_reference(out, frames, labels, ALL)
    np.testing.assert_array_equal(out["frame_index"], np.arange(n))
    assert not os.path.exists(str(out_path) + ".parts"), "job folder is cleaned up after finalize"
    with h5py.File(out_path, "r") as f:
        attrs = dict(f.attrs)
    assert attrs["statistics"] == ",".join(ALL)
    assert json.loads(attrs["input_files"])[0]["file"] == os.path.abspath(data)
    assert len(attrs["mask_sha256"]) == 64
    assert attrs["job_id"] == res.stdout.strip().splitlines()[0]


def test_default_output_stats_and_dataset(tmp_path, redis_url, module_worker: WorkerProcess):
    frames = detector_frames(12, 8, 8, seed=3)
    data = write_stack(str(tmp_path / "scan.h5"), frames, form="gzip", chunk_frames=3)
    np.save(tmp_path / "m.npy", np.ones((8, 8), bool))
    res = run_producer(
        redis_url,
        "submit",
        data,
        "--mask",
        str(tmp_path / "m.npy"),
        "--queue",
        module_worker.queue,
        "--wait",
    )
    assert res.returncode == 0, res.stderr
    out = read_output(str(tmp_path / "scan.reduced.h5"))
    assert set(out) == {"sum", "mean", "pixel_count", "frame_index"}
    np.testing.assert_array_equal(out["sum"][:, 0], frames.reshape(12, -1).astype(np.int64).sum(1))


def test_two_processes_give_identical_output(
    tmp_path, redis_url, module_worker: WorkerProcess, redis_client
):
    """The same job on two pool processes and on one gives the same bytes."""
    frames = detector_frames(64, 16, 16, seed=5).astype(np.float32)
    data = write_stack(str(tmp_path / "in.h5"), frames, form="bslz4", chunk_frames=2)
    np.save(tmp_path / "m.npy", (np.arange(256).reshape(16, 16) % 3).astype(np.int32))
    single = start_worker(redis_url, str(tmp_path), concurrency=1)
    outs, job_ids = [], []
    try:
        single.wait_ready(redis_client, processes=1)
        for name, queue in (("two", module_worker.queue), ("one", single.queue)):
            out = tmp_path / f"out-{name}.h5"
            res = run_producer(
                redis_url, "submit", data, "--mask", str(tmp_path / "m.npy"),
                "--output", str(out), "--stats", "sum,mean,std", "--chunk-frames", "2",
                "--queue", queue, "--wait",
            )  # fmt: skip
            assert res.returncode == 0, res.stderr
            outs.append(read_output(str(out)))
            job_ids.append(res.stdout.strip().splitlines()[0])
    finally:
        single.stop()
    for key in ("sum", "mean", "std", "pixel_count", "frame_index"):
        assert outs[0][key].tobytes() == outs[1][key].tobytes(), key
    check_against_reference(outs[0], frames, np.load(tmp_path / "m.npy"), ("sum", "mean", "std"))
    # Both pool processes of the two-process worker computed chunks of the first job.
    share = redis_client.hgetall(C.job_key(job_ids[0], C.JobPart.WORKERS))
    assert len(share) == 2 and sum(int(v) for v in share.values()) == 64
    # Their heartbeats (written with each chunk's commit) count those frames, and name no
    # chunk as current once the job is done.
    for worker_id, frames_share in share.items():
        beat = redis_client.hgetall(C.worker_key(worker_id))
        assert beat["current"] == "" and int(beat["frames_done"]) >= int(frames_share), beat
