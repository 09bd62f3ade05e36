"""Redis refusing writes mid-job (OOM, MISCONF, READONLY): the workers stay up, say why
in one line, and the job completes with nothing lost.

A private redis-server (the fault suite's) and two real workers: one running the fault
tests' job (in 40 chunks), one idle on another queue (its consumer has a BRPOP open,
itself a write). While chunks flow, Redis refuses every write for a few seconds, three
times: ``CONFIG SET maxmemory 1`` (OOM under ``noeviction``); a BGSAVE that cannot rename
its file into place (a folder holds the name) with save points and
``stop-writes-on-bgsave-error yes`` (MISCONF); ``REPLICAOF`` an address where no master
answers (READONLY, and blocked BRPOPs are unblocked). Each time Redis is then restored.
The output is compared with an independent numpy computation.
"""

from __future__ import annotations

import os
import time

import h5py
import numpy as np
import pytest

from tests.faults.util import N_FRAMES, STATS, full_log
from tests.support.reference import reference
from tests.support.wait import wait_until
from tests.support.workers import free_port, start_worker

pytestmark = [pytest.mark.faults, pytest.mark.timeout(300)]

#: Seconds each refusal lasts: many chunks' worth.
REFUSAL_S = 4.0
#: How each refusal reads in the worker's log.
REASONS = {"oom": "(OOM", "misconf": "(MISCONF", "readonly": "(READONLY"}


def refuse(client, how: str, folder: str) -> None:
    if how == "oom":
        assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
        client.config_set("maxmemory", "1")  # every write is over the limit
    elif how == "misconf":
        # The save's last step, renaming its file to dump.rdb, fails: a folder holds the
        # name. Redis refuses writes after a failed save only when save points are set.
        os.makedirs(os.path.join(folder, "dump.rdb"), exist_ok=True)
        client.config_set("save", "3600 1")
        client.config_set("stop-writes-on-bgsave-error", "yes")
        client.bgsave()
        wait_until(
            lambda: client.info("persistence")["rdb_last_bgsave_status"] == "err",
            10,
            "the BGSAVE failing",
        )
    else:  # a replica of a master that never answers keeps its data and refuses writes
        client.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))


def restore(client, folder: str) -> None:
    client.execute_command("REPLICAOF", "NO", "ONE")
    client.config_set("maxmemory", "0")
    client.config_set("save", "")  # no save points: a failed save stops no write
    if os.path.isdir(os.path.join(folder, "dump.rdb")):
        os.rmdir(os.path.join(folder, "dump.rdb"))


def check_against_numpy(output: str, data: str, mask: str) -> None:
    with h5py.File(data, "r") as f:
        frames = f["/entry/data/data"][()]
    labels = np.load(mask)
    ref = reference(frames, labels, tuple(STATS.split(",")))
    with h5py.File(output, "r") as f:
        for stat, expected in ref.items():
            got = f["results"][stat][()]
            if stat in ("sum", "count", "min", "max"):
                np.testing.assert_array_equal(got, expected, err_msg=stat)
            else:
                np.testing.assert_allclose(got, expected, rtol=1e-12, equal_nan=True, err_msg=stat)
        np.testing.assert_array_equal(f["results"]["frame_index"][()], np.arange(N_FRAMES))


def test_workers_survive_redis_refusing_writes_and_lose_nothing(
    fault_redis, fault_client, fault_data, submit_job, queue, worker_env, tmp_path
):
    url, folder = fault_redis.url(), fault_redis.folder
    busy = start_worker(url, str(tmp_path), queue, concurrency=2, env=worker_env)
    idle = start_worker(url, str(tmp_path), queue + "-idle", concurrency=1, env=worker_env)
    try:
        busy.wait_ready(fault_client, processes=2)
        idle.wait_ready(fault_client, processes=1)
        pids = sorted(busy.pids(fault_client))
        job = submit_job(None, "--chunk-frames", "64")  # 40 chunks
        for how, reason in REASONS.items():
            before = len(job.committed())
            wait_until(lambda b=before: len(job.committed()) >= b + 2, 60, "chunks flowing")
            refuse(fault_client, how, folder)
            try:
                wait_until(
                    lambda r=reason: r in full_log(busy) and r in full_log(idle),
                    30,
                    f"both workers logging {reason}",
                )
                time.sleep(REFUSAL_S)
                for w in (busy, idle):
                    assert w.proc.poll() is None, f"a worker exited under {how}:\n{w.log()}"
            finally:
                restore(fault_client, folder)
        state = job.wait(timeout=180)
        assert state["state"] == "done", state
        for w in (busy, idle):
            assert w.proc.poll() is None, w.log()
        assert sorted(busy.pids(fault_client)) == pids, "a pool process was replaced"
    finally:
        restore(fault_client, folder)
        busy.stop()
        idle.stop()
    assert int(state["frames_done"]) == N_FRAMES, state  # every frame counted once
    check_against_numpy(job.output, fault_data.data, fault_data.mask)
    # The reason, in one line each time: no traceback, no raw error of a refused write.
    for w in (busy, idle):
        log = full_log(w)
        assert "Traceback" not in log and "Unrecoverable" not in log, log[-4000:]
        raw = [
            line
            for line in log.splitlines()
            if any(s in line for s in ("maxmemory", "MISCONF", "read only replica"))
        ]
        assert all("Redis refused a write" in line for line in raw), raw


def test_a_refusal_longer_than_the_wait_loses_nothing(
    fault_redis, fault_client, fault_data, submit_job, queue, worker_env, tmp_path
):
    """With FRAMESTATS_REFUSED_WRITES_WAIT=1 and Redis out of memory for 6 s, tasks give
    up their deliveries (one line each) while the worker keeps taking messages it cannot
    record; once Redis takes writes the lost-message sweep queues those chunks again and
    the job completes, every frame counted once, output equal to numpy's."""
    env = {**worker_env, "FRAMESTATS_REFUSED_WRITES_WAIT": "1"}
    busy = start_worker(fault_redis.url(), str(tmp_path), queue, concurrency=2, env=env)
    try:
        busy.wait_ready(fault_client, processes=2)
        job = submit_job(None, "--chunk-frames", "64")
        wait_until(lambda: len(job.committed()) >= 2, 60, "chunks flowing")
        refuse(fault_client, "oom", fault_redis.folder)
        try:
            wait_until(lambda: "this delivery ends" in full_log(busy), 30, "a delivery given up")
            time.sleep(REFUSAL_S)
        finally:
            restore(fault_client, fault_redis.folder)
        state = job.wait(timeout=180)
        assert state["state"] == "done", state
        assert busy.proc.poll() is None, busy.log()
    finally:
        restore(fault_client, fault_redis.folder)
        busy.stop()
    assert int(state["frames_done"]) == N_FRAMES, state
    assert int(state.get("requeued", 0)) >= 1, state  # the sweep found the given-up chunks
    check_against_numpy(job.output, fault_data.data, fault_data.mask)
    log = full_log(busy)
    assert "Traceback" not in log, log[-4000:]
    ended = [line for line in log.splitlines() if "this delivery ends" in line]
    assert all("FRAMESTATS_REFUSED_WRITES_WAIT (OOM" in line for line in ended), ended
