"""Resubmitting, resuming and forged messages never mix two jobs (real workers, real Redis)."""

from __future__ import annotations

import json
import os
import uuid

import h5py
import numpy as np
import pytest

from framestats import constants as C
from framestats.chunkfile import chunk_name
from framestats.messages import ChunkTask
from framestats.wire import task_message
from producer.samples import detector_frames, write_stack
from tests.support.reference import check_against_reference, read_output
from tests.support.wait import wait_until
from tests.support.workers import run_producer, start_worker, stored_keys

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


@pytest.fixture
def stack(tmp_path):
    """A job of many small tasks (slow enough to be caught running) and two masks."""
    frames = detector_frames(240, 32, 32, seed=21)
    data = write_stack(str(tmp_path / "in.h5"), frames, form="gzip", chunk_frames=2)
    yy, xx = np.mgrid[0:32, 0:32]
    first = (yy // 8 * 4 + xx // 8 + 1).astype(np.int32)  # 16 squares
    second = ((yy + xx) % 5).astype(np.int32)  # 4 diagonal regions, 0 = none
    np.save(tmp_path / "m1.npy", first)
    np.save(tmp_path / "m2.npy", second)
    return frames, data, {"m1": first, "m2": second}


def submit(redis_url, data, mask, output, queue, *extra):
    return run_producer(
        redis_url, "submit", data, "--mask", mask, "--output", output, "--stats",
        "sum,max,std", "--chunk-frames", "2", "--queue", queue, *extra,
    )  # fmt: skip


def one_line(res) -> str:
    lines = [line for line in (res.stdout + res.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    return lines[0]


def test_overwrite_over_a_running_job_cancels_it_and_equals_a_clean_run(
    tmp_path, redis_url, redis_client, stack
):
    """submit M1; while it runs, submit M2 --overwrite --wait: the first job is cancelled
    and waited for, and the output equals a clean run with M2, bit for bit."""
    frames, data, masks = stack
    worker = start_worker(redis_url, str(tmp_path), concurrency=2)
    try:
        worker.wait_ready(redis_client, processes=2)
        out = str(tmp_path / "out.h5")
        first = submit(redis_url, data, str(tmp_path / "m1.npy"), out, worker.queue)
        assert first.returncode == 0, first.stderr
        old = first.stdout.split()[0]
        wait_until(
            lambda: redis_client.scard(C.job_key(old, C.JobPart.DONE)) >= 2, 60, "M1 running"
        )
        second = submit(redis_url, data, str(tmp_path / "m2.npy"), out, worker.queue,
                        "--overwrite", "--wait")  # fmt: skip
        assert second.returncode == 0, second.stderr + worker.log()
        new = second.stdout.split()[0]
        clean_out = str(tmp_path / "clean.h5")
        clean = submit(redis_url, data, str(tmp_path / "m2.npy"), clean_out, worker.queue, "--wait")
        assert clean.returncode == 0, clean.stderr
    finally:
        worker.stop()
    assert redis_client.hget(C.job_key(old), "state") == "cancelled"
    got, want = read_output(out), read_output(clean_out)
    assert sorted(got) == sorted(want)
    for key in want:
        assert got[key].tobytes() == want[key].tobytes(), key
    check_against_reference(got, frames, masks["m2"], ("sum", "max", "std"))
    with h5py.File(out) as f:
        assert f.attrs["job_id"] == new
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["in.h5", "m1.npy", "m2.npy", "out.h5", "clean.h5", os.path.basename(worker.log_path)]
    ), "a job folder or a temporary file was left behind"


def test_a_second_plain_submit_to_a_live_output_is_refused(
    tmp_path, redis_url, redis_client, stack
):
    _, data, _ = stack
    out = str(tmp_path / "out.h5")
    idle = "q-idle-" + uuid.uuid4().hex[:8]
    first = submit(redis_url, data, str(tmp_path / "m1.npy"), out, idle)
    assert first.returncode == 0, first.stderr
    job = first.stdout.split()[0]
    before = stored_keys(redis_client), redis_client.llen(idle), os.listdir(out + ".parts")
    res = submit(redis_url, data, str(tmp_path / "m2.npy"), out, idle)
    assert res.returncode == 2
    line = one_line(res)
    assert job in line and "--overwrite" in line, line
    assert (
        stored_keys(redis_client),
        redis_client.llen(idle),
        os.listdir(out + ".parts"),
    ) == before


def test_resume_of_a_live_job_is_refused(tmp_path, redis_url, redis_client, stack):
    """A resume would queue the live job's chunks a second time: refused, nothing changes."""
    _, data, _ = stack
    out = str(tmp_path / "out.h5")
    idle = "q-idle-" + uuid.uuid4().hex[:8]
    first = submit(redis_url, data, str(tmp_path / "m1.npy"), out, idle)
    assert first.returncode == 0, first.stderr
    job = first.stdout.split()[0]
    before = redis_client.hgetall(C.job_key(job)), redis_client.lrange(idle, 0, -1)
    for target in (job, out):
        res = run_producer(redis_url, "resume", target)
        assert res.returncode == 2
        assert "is queued; nothing to resume" in one_line(res)
    assert (redis_client.hgetall(C.job_key(job)), redis_client.lrange(idle, 0, -1)) == before


def _old_format_chunk(start: int, stop: int, regions: int, value: float) -> bytes:
    """A chunk file as the previous version wrote it (no job id, no checksum)."""
    head = {"range": [start, stop], "stats": ["sum", "max", "std"], "shape": [stop - start, regions],
            "meta": {"worker": "old@host:1", "device": "cpu"}}  # fmt: skip
    body = np.full((3, stop - start, regions), value, dtype="<f8").tobytes()
    return b"framestats chunk 1\n" + json.dumps(head).encode() + b"\n" + body


def test_chunk_files_another_job_left_are_computed_again(tmp_path, redis_url, redis_client, stack):
    """Chunk files that are not whole results of this job (an earlier job's, an earlier
    version's, another job's in the current format, a truncated one) are never taken:
    the chunks run, and the output equals numpy's."""
    frames, data, masks = stack
    out = str(tmp_path / "out.h5")
    queue = "q-" + uuid.uuid4().hex[:8]
    res = submit(redis_url, data, str(tmp_path / "m1.npy"), out, queue)
    assert res.returncode == 0, res.stderr
    chunks = os.path.join(out + ".parts", "chunks")
    with open(os.path.join(chunks, chunk_name(0)), "wb") as fh:
        fh.write(_old_format_chunk(0, 2, 16, 7.0))
    with open(os.path.join(chunks, chunk_name(3)), "wb") as fh:
        fh.write(_old_format_chunk(6, 8, 16, 9.0)[:-5])
    with open(os.path.join(chunks, "00000005.npz"), "wb") as fh:
        fh.write(b"PK\x03\x04 not a zip")
    worker = start_worker(redis_url, str(tmp_path), queue=queue)
    try:
        worker.wait_ready(redis_client)
        res = run_producer(redis_url, "watch", res.stdout.split()[0])
        assert res.returncode == 0, res.stderr + worker.log()
    finally:
        worker.stop()
    check_against_reference(read_output(out), frames, masks["m1"], ("sum", "max", "std"))


def test_forged_chunk_messages_are_refused_and_never_computed(
    tmp_path, redis_url, redis_client, stack
):
    """Chunk messages whose index or frame range is not in the job's plan are refused and
    logged: no result is written for them, and the job goes on."""
    _, data, _ = stack
    out = str(tmp_path / "out.h5")
    idle = "q-idle-" + uuid.uuid4().hex[:8]
    res = submit(redis_url, data, str(tmp_path / "m1.npy"), out, idle)
    assert res.returncode == 0, res.stderr
    job = res.stdout.split()[0]
    manifest = os.path.join(out + ".parts", "manifest.json")
    worker = start_worker(redis_url, str(tmp_path), concurrency=1)
    try:
        worker.wait_ready(redis_client)
        forged = [ChunkTask(job, manifest, 5, 0, 200), ChunkTask(job, manifest, 500, 0, 2)]
        for task in forged:
            message = task_message(C.TASK_REDUCE, [task.to_json()], worker.queue)
            redis_client.lpush(worker.queue, json.dumps(message))
        wait_until(lambda: worker.log().count("not in its plan") >= 2, 60, "both refused")
    finally:
        worker.stop()
    assert os.listdir(os.path.join(out + ".parts", "chunks")) == []
    assert redis_client.hget(C.job_key(job), "state") == "running"
