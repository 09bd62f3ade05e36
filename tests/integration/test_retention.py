"""Nothing grows forever: finished jobs' keys expire, ``producer prune`` forgets them now.

Real Redis (the tests' database), real ``producer`` commands and a real worker. A job's
keys are ``constants.job_keys``; its per-chunk hashes (pending, attempts, successors,
missing) go when it ends, the others after ``FRAMESTATS_JOB_TTL`` (a few seconds here).
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

from framestats import constants as C
from framestats import jobs
from framestats.messages import JobSpec, JobState, Segment
from producer.samples import detector_frames, write_stack
from tests.support.wait import wait_until
from tests.support.workers import run_producer

pytestmark = pytest.mark.integration

#: The per-chunk hashes, dropped as soon as a job ends.
PER_CHUNK = ("pending", "attempts", "successors", "missing")


@pytest.fixture
def small(tmp_path) -> tuple[str, str]:
    data = write_stack(
        str(tmp_path / "in.h5"), detector_frames(24, 16, 16, seed=3), form="gzip", chunk_frames=4
    )
    mask = str(tmp_path / "m.npy")
    np.save(mask, np.ones((16, 16), bool))
    return data, mask


def submit(redis_url, data, mask, output, queue, *extra, **env) -> str:
    res = run_producer(
        redis_url, "submit", data, "--mask", mask, "--output", output, "--queue", queue,
        "--chunk-frames", "8", *extra, env=env,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    return res.stdout.split()[0]


def job_key_ttls(client, job_id: str) -> dict[str, int]:
    """name suffix -> TTL in seconds (-1: none) of each key of the job that exists."""
    out = {}
    for key in C.job_keys(job_id):
        ttl = client.ttl(key)
        if ttl != -2:
            out[key.removeprefix(C.job_key(job_id)).lstrip(":") or "job"] = ttl
    return out


def wait_gone(client, job_ids: list[str], timeout: float) -> None:
    def gone() -> bool:
        return not any(job_key_ttls(client, j) for j in job_ids)

    wait_until(gone, timeout, f"every key of {job_ids} gone", interval=0.1)


def test_ended_jobs_keep_their_keys_for_job_ttl_then_lose_them(
    redis_url, redis_client, module_worker, small, tmp_path
):
    """Done, failed and cancelled jobs: per-chunk hashes go at once, every other key
    expires after FRAMESTATS_JOB_TTL; then `producer status` forgets the ids."""
    data, mask = small
    ttl = {"FRAMESTATS_JOB_TTL": "4"}
    done = submit(
        redis_url, data, mask, str(tmp_path / "done.h5"), module_worker.queue, "--wait", **ttl
    )
    idle = "q-retention-idle"
    cancelled = submit(redis_url, data, mask, str(tmp_path / "cancelled.h5"), idle, **ttl)
    res = run_producer(redis_url, "cancel", cancelled)
    assert res.returncode == 0, res.stderr
    failed = submit(redis_url, data, mask, str(tmp_path / "failed.h5"), idle, **ttl)
    jobs.record_error(redis_client, failed, 0, (0, 8), "disk on fire")
    assert jobs.finish(redis_client, failed, JobState.FAILED, "chunk 0: disk on fire")
    for job_id, state in ((done, "done"), (cancelled, "cancelled"), (failed, "failed")):
        assert redis_client.hget(C.job_key(job_id), "state") == state
        ttls = job_key_ttls(redis_client, job_id)
        assert not set(PER_CHUNK) & set(ttls), (state, ttls)
        assert ttls and all(0 < t <= 4 for t in ttls.values()), (state, ttls)
    wait_gone(redis_client, [done, cancelled, failed], timeout=20)
    res = run_producer(redis_url, "status", "--json")
    assert res.returncode == 0, res.stderr
    view = json.loads(res.stdout)
    assert not {done, cancelled, failed} & {r["id"] for r in view["jobs"]}
    index = set(redis_client.zrange(C.JOBS_INDEX, 0, -1))
    assert not {done, cancelled, failed} & index, "expired ids left in the job index"
    redis_client.delete(idle)


def test_a_late_chunk_brings_no_key_back(redis_client, tmp_path):
    """A chunk delivered, finished or failing after its job was cancelled (as a worker
    still running it does) leaves no key of the job without an expiry."""
    job_id = "late" + os.urandom(4).hex()
    spec = JobSpec(
        job_id=job_id, segments=(Segment("/data/in.h5", "/d", 0, 8),), frame_shape=(4, 4), dtype="<u2", n_frames=8,
        n_regions=1, stats=("sum",), boundaries=(0, 4, 8), output=str(tmp_path / "o.h5"),
        workdir=str(tmp_path / "o.h5.parts"), mask_path="", mask_sha256="", queue="q-late",
        chunk_frames=4, created=time.time(), version="test",
    )  # fmt: skip
    jobs.create(redis_client, spec, [1])
    assert jobs.begin_chunk(redis_client, job_id, 0)[0] is JobState.RUNNING
    assert jobs.begin_chunk(redis_client, job_id, 0)[1] == 2  # delivered again
    assert jobs.finish(redis_client, job_id, JobState.CANCELLED, "cancelled by user")
    # the attempts hash goes; what it showed worth keeping stays in the job's hash
    assert jobs.redelivered(jobs.get(redis_client, job_id) or {}) == {0: 2}
    # what the workers still holding chunks 0 and 1 do next
    jobs.begin_chunk(redis_client, job_id, 1, ("fs:worker:late:1", f"{job_id}#1"), 5)
    jobs.finish_chunk(redis_client, job_id, 0, 4, 128, "late:1")
    jobs.successor_published(redis_client, job_id, 0, [1])
    jobs.record_error(redis_client, job_id, 1, (4, 8), "I/O error")
    ttls = job_key_ttls(redis_client, job_id)
    assert not set(PER_CHUNK) & set(ttls), ttls
    assert all(0 < t <= 7 * 86400 for t in ttls.values()), ttls  # the default TTL
    redis_client.delete(*C.job_keys(job_id), "fs:worker:late:1")
    redis_client.zrem(C.JOBS_INDEX, job_id)


def test_prune_forgets_finished_jobs_and_removes_their_folders(
    redis_url, redis_client, module_worker, small, tmp_path
):
    """`producer prune`: --older-than spares young jobs; then every finished job's keys
    go, failed and cancelled jobs' folders go, a done job's output stays, a live job is
    untouched, and no symbolic link is followed out of a folder."""
    data, mask = small
    idle = "q-prune-idle"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep me")
    done_out = str(tmp_path / "done.h5")
    done = submit(redis_url, data, mask, done_out, module_worker.queue, "--wait")
    cancelled = submit(redis_url, data, mask, str(tmp_path / "c.h5"), idle)
    failed = submit(redis_url, data, mask, str(tmp_path / "f.h5"), idle)
    # a failed job whose folder holds a link out of it, and one whose folder is a link
    linked = submit(redis_url, data, mask, str(tmp_path / "l.h5"), idle)
    os.symlink(outside, str(tmp_path / "l.h5.parts" / "chunks" / "escape"))
    swapped = submit(redis_url, data, mask, str(tmp_path / "s.h5"), idle)
    # a failed job whose output now has a new, live job (resubmitted with --overwrite)
    reused_out = str(tmp_path / "r.h5")
    old = submit(redis_url, data, mask, reused_out, idle)
    for job_id in (cancelled, failed, linked, swapped, old):
        state = JobState.CANCELLED if job_id == cancelled else JobState.FAILED
        assert jobs.finish(redis_client, job_id, state, "test")
    live = submit(redis_url, data, mask, reused_out, idle, "--overwrite")
    real = tmp_path / "s.h5.parts.real"
    os.rename(tmp_path / "s.h5.parts", real)
    os.symlink(real, tmp_path / "s.h5.parts")
    ended = [done, cancelled, failed, linked, swapped, old]

    res = run_producer(redis_url, "prune", "--older-than", "7d")
    assert res.returncode == 0, res.stderr
    assert "forgot 0 finished jobs" in res.stdout, res.stdout
    res = run_producer(redis_url, "prune", "--dry-run")
    assert res.returncode == 0, res.stderr
    assert "would forget" in res.stdout and (tmp_path / "c.h5.parts").exists()
    assert all(job_key_ttls(redis_client, j) for j in ended)

    res = run_producer(redis_url, "prune")
    assert res.returncode == 0, res.stderr
    # (the tests' database may hold other tests' ended jobs: prune takes them too)
    assert res.stdout.startswith("forgot "), res.stdout
    for folder in ("c.h5.parts", "f.h5.parts", "l.h5.parts"):
        assert f"  {tmp_path / folder}\n" in res.stdout, res.stdout
    for job_id in ended:
        assert not job_key_ttls(redis_client, job_id), job_id
    index = set(redis_client.zrange(C.JOBS_INDEX, 0, -1))
    assert live in index and not set(ended) & index
    assert redis_client.hget(C.job_key(live), "state") == "queued"
    assert not (tmp_path / "c.h5.parts").exists() and not (tmp_path / "f.h5.parts").exists()
    assert not (tmp_path / "l.h5.parts").exists()
    assert (outside / "precious.txt").read_text() == "keep me", "a link was followed"
    assert os.path.islink(tmp_path / "s.h5.parts") and (real / "manifest.json").exists()
    assert "s.h5.parts: a symbolic link" in res.stderr, res.stderr
    assert "r.h5.parts: holds no manifest of this job" in res.stderr, res.stderr
    assert (tmp_path / "r.h5.parts" / "manifest.json").exists(), "the live job's folder went"
    assert f'"job_id": "{live}"' in (tmp_path / "r.h5.parts" / "manifest.json").read_text()
    assert os.path.exists(done_out), "the done job's output went"
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["in.h5", "m.npy", "done.h5", "outside", "s.h5.parts", "s.h5.parts.real", "r.h5.parts"]
    )
    redis_client.delete(*C.job_keys(live), idle)
    redis_client.zrem(C.JOBS_INDEX, live)


def test_workers_trim_the_index_of_expired_jobs(redis_client, monkeypatch):
    """Without any status or prune, the workers' sweep drops ids whose job expired."""
    from worker import recovery
    from worker.recovery import Sweeper

    monkeypatch.setattr(recovery, "sweep", lambda *_: [])  # leave other tests' jobs alone

    expired = "expired" + os.urandom(4).hex()  # in the index, its hash gone
    redis_client.zadd(C.JOBS_INDEX, {expired: time.time() - 8 * 86400})
    sweeper = Sweeper(redis_client, "test-trim", 0.2, lambda *_: None)
    for _ in range(20):  # a live worker's sweep may hold this round's lock: take it
        redis_client.delete(C.SWEEP_LOCK)
        sweeper.once()
        if redis_client.zscore(C.JOBS_INDEX, expired) is None:
            break
    assert redis_client.zscore(C.JOBS_INDEX, expired) is None, "the sweep left an expired id"
