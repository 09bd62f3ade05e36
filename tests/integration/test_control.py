"""Steer jobs: cancel (queued chunks never computed, running ones finish) and resume
(after Redis lost everything, an output identical to an uninterrupted run)."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest

from framestats import connection, jobs
from framestats import constants as C
from producer.samples import detector_frames, write_stack
from tests.support.cli import (
    as_json,
    committed_files,
    drained,
    new_queue,
    ok,
    running,
    submit,
    worker_rows,
)
from tests.support.wait import wait_until
from tests.support.workers import run_producer, start_worker

pytestmark = pytest.mark.integration


# --- cancel ------------------------------------------------------------------------------


def test_cancel_computes_no_queued_chunk(redis_url, tmp_path):
    frames = detector_frames(100, 8, 8, seed=4)
    data = write_stack(str(tmp_path / "in.h5"), frames, form="gzip", chunk_frames=1)
    np.save(tmp_path / "m.npy", np.ones((8, 8), bool))
    out = str(tmp_path / "out.h5")
    queue = new_queue()
    job_id = submit(
        redis_url, data, str(tmp_path / "m.npy"), out, queue, "--chunk-frames", "1"
    )  # no worker consumes this queue yet: 64 tasks wait, 36 are pending
    assert as_json(redis_url, "status")["queues"][queue]["waiting"] == 64
    res = ok(run_producer(redis_url, "cancel", job_id))
    assert f"cancelled {job_id}" in res
    job = as_json(redis_url, "status", job_id)
    assert job["state"] == "cancelled" and job["reason"] == "cancelled by user"
    assert job["chunks_pending"] == 0

    worker = start_worker(redis_url, str(tmp_path), queue=queue, concurrency=1)
    client = connection.connect(redis_url)
    try:
        worker.wait_ready(client)
        wait_until(
            lambda: drained(as_json(redis_url, "status")["queues"][queue]),
            60,
            "the cancelled job's tasks to be taken off the queue",
            interval=0.3,
        )
        rows = wait_until(lambda: worker_rows(redis_url, worker), 10, "the worker's heartbeat")
        assert sum(w["chunks_done"] for w in rows) == 0, "no chunk was computed"
        assert committed_files(out) == set()
        job = as_json(redis_url, "status", job_id)
        assert job["state"] == "cancelled"
        assert job["chunks_done"] == job["frames_done"] == 0
        # Every delivered task was skipped, and brought back no per-chunk hash of the
        # ended job (docs/guarantees.md, retention).
        assert not client.exists(
            C.job_key(job_id, C.JobPart.ATTEMPTS), C.job_key(job_id, C.JobPart.SUCCESSORS)
        )
        assert not os.path.exists(out)
        ok(run_producer(redis_url, "cancel", job_id))  # cancelling again is harmless
        assert as_json(redis_url, "status", job_id)["state"] == "cancelled"
    finally:
        worker.stop()


def test_cancel_while_running_lets_only_running_chunks_finish(redis_url, tmp_path):
    frames = detector_frames(300, 32, 32, seed=6)
    data = write_stack(str(tmp_path / "in.h5"), frames, form="gzip", chunk_frames=1)
    np.save(tmp_path / "m.npy", np.ones((32, 32), bool))
    out = str(tmp_path / "out.h5")
    queue = new_queue()
    worker = start_worker(redis_url, str(tmp_path), queue=queue, concurrency=2)
    client = connection.connect(redis_url)
    try:
        worker.wait_ready(client, processes=2)
        job_id = submit(redis_url, data, str(tmp_path / "m.npy"), out, queue, "--chunk-frames", "1")
        wait_until(lambda: jobs.chunks_done(client, job_id) >= 5, 60, "5 chunks", interval=0.02)
        ok(run_producer(redis_url, "cancel", job_id))
        at_cancel = committed_files(out)
        wait_until(
            lambda: drained(as_json(redis_url, "status")["queues"][queue]),
            60,
            "the queue to drain",
            interval=0.3,
        )
        # The chunks that were running when the job was cancelled finish, and no other runs.
        wait_until(lambda: not running(client, job_id), 60, "no chunk of the job running")
        after = committed_files(out)
        assert len(at_cancel) < 300
        assert len(after - at_cancel) <= 2, "only the two running chunks may finish"
        job = as_json(redis_url, "status", job_id)
        assert job["state"] == "cancelled" and job["chunks_done"] == len(after)
        assert not os.path.exists(out)
    finally:
        worker.stop()


# --- resume ------------------------------------------------------------------------------


def read_results(path: str) -> dict[str, bytes]:
    with h5py.File(path, "r") as f:
        return {k: f["results"][k][()].tobytes() for k in f["results"]}


def test_resume_after_losing_all_redis_keys_matches_an_uninterrupted_run(
    redis_url, tmp_path, redis_client
):
    frames = detector_frames(200, 32, 32, seed=9).astype(np.float32)
    frames[3, 2, 2] = np.nan
    data = write_stack(str(tmp_path / "in.h5"), frames, form="bslz4", chunk_frames=1)
    np.save(tmp_path / "m.npy", (np.arange(32 * 32).reshape(32, 32) % 5).astype(np.int32))
    mask = str(tmp_path / "m.npy")
    queue = new_queue()
    stats = ("--stats", "sum,mean,min,max,std", "--chunk-frames", "1")
    ref, out = str(tmp_path / "ref.h5"), str(tmp_path / "out.h5")
    client = connection.connect(redis_url)

    first = start_worker(redis_url, str(tmp_path), queue=queue, concurrency=1)
    try:
        first.wait_ready(client)
        ok(
            run_producer(
                redis_url,
                "submit",
                data,
                "--mask",
                mask,
                "-o",
                ref,
                "--queue",
                queue,
                *stats,
                "--wait",
            ),
            first,
        )
        job_id = submit(redis_url, data, mask, out, queue, *stats)
        wait_until(lambda: jobs.chunks_done(client, job_id) >= 10, 60, "10 chunks", interval=0.02)
    finally:
        first.stop()
    done_before = committed_files(out)
    assert 10 <= len(done_before) < 200, "the job was interrupted part way"

    # Redis loses every key of the job.
    jobs.delete(client, job_id)
    for key in redis_client.scan_iter(f"{C.KEY_PREFIX}job:{job_id}*"):
        redis_client.delete(key)
    assert not redis_client.keys(f"*{job_id}*")
    lost = as_json(redis_url, "status", out)
    assert lost["id"] == job_id and lost["state"] == "unknown"
    assert lost["chunks_done"] == len(done_before) and lost["chunks_total"] == 200

    res = run_producer(redis_url, "resume", out)
    ok(res)
    assert res.stdout.strip() == job_id
    assert f"resumed: {200 - len(done_before)} of 200 chunks queued again" in res.stderr
    job = as_json(redis_url, "status", job_id)
    assert job["state"] == "queued" and job["chunks_done"] == len(done_before)
    second = start_worker(redis_url, str(tmp_path), queue=queue, concurrency=1)
    try:
        second.wait_ready(client)
        ok(run_producer(redis_url, "watch", out), second)
    finally:
        second.stop()
    job = as_json(redis_url, "status", job_id)
    assert job["state"] == "done" and job["frames_done"] == 200
    # Only frames computed after the resume count towards its rate.
    assert job["frames_per_s"] > 0
    a, b = read_results(ref), read_results(out)
    assert (
        a.keys() == b.keys() == {"sum", "mean", "min", "max", "std", "pixel_count", "frame_index"}
    )
    for key in a:
        assert a[key] == b[key], f"{key} differs from the uninterrupted run"
