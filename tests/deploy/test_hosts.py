"""Many hosts, as far as one machine allows: two workers with their own node names and
data roots, sharing one Redis and one storage path, complete one job together."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest

from framestats import constants as C
from producer.samples import detector_frames, write_stack
from tests.support.reference import reference
from tests.support.workers import run_producer, start_worker

pytestmark = pytest.mark.integration


def test_two_hosts_share_one_job(tmp_path, redis_url, redis_client):
    # Given: shared storage at one path, and two "hosts" whose DATA_ROOT both cover it
    share = tmp_path / "share"
    (tmp_path / "scratch-b").mkdir()
    share.mkdir()
    frames = detector_frames(48, 20, 16, seed=11)
    data = write_stack(str(share / "scan.h5"), frames, form="bslz4", chunk_frames=2)
    labels = (np.arange(20 * 16).reshape(20, 16) % 4).astype(np.int32)
    np.save(share / "rois.npy", labels)
    queue = f"hosts-{os.getpid()}"
    hosts = [
        start_worker(redis_url, str(tmp_path), queue=queue, name="hosta",
                     env={"DATA_ROOT": str(share)}),
        start_worker(redis_url, str(tmp_path), queue=queue, name="hostb",
                     env={"DATA_ROOT": f"{share}:{tmp_path / 'scratch-b'}"}),
    ]  # fmt: skip
    try:
        for host in hosts:
            host.wait_ready(redis_client)
        # When: one job of many small chunks is submitted to their common queue
        res = run_producer(
            redis_url, "submit", data, "--mask", str(share / "rois.npy"), "--stats", "sum,max",
            "--chunk-frames", "2", "--queue", queue, "--wait", env={"DATA_ROOT": str(share)},
        )  # fmt: skip
        assert res.returncode == 0, res.stderr + hosts[0].log() + hosts[1].log()
        job_id = res.stdout.strip().splitlines()[0]
    finally:
        for host in hosts:
            host.stop()
    # Then: both hosts computed chunks, and the output matches numpy
    share_by_worker = redis_client.hgetall(C.job_key(job_id, C.JobPart.WORKERS))
    nodes = {worker.split("@", 1)[0] for worker in share_by_worker}
    assert nodes == {"hosta", "hostb"}, share_by_worker
    assert sum(int(v) for v in share_by_worker.values()) == 48
    with h5py.File(share / "scan.reduced.h5", "r") as f:
        got = {s: f["results"][s][()] for s in ("sum", "max")}
    ref = reference(frames, labels, ("sum", "max"))
    for s in ("sum", "max"):
        np.testing.assert_array_equal(got[s], ref[s])
