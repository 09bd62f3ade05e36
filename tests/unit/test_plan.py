"""Task sizing: large jobs get the largest tasks, small ones spread over the live workers."""

from __future__ import annotations

import dataclasses
import itertools
import time
import uuid

import h5py
import numpy as np
import pytest

from framestats import plan as plan_mod
from framestats.plan import MIN_TASK_BYTES, TASKS_PER_PROCESS, task_bytes_for
from framestats.settings import Settings
from framestats.submission import SubmitRequest, fit_to_workers, prepare

MIB = 1 << 20


def test_rule():
    big = 1 << 40
    assert task_bytes_for(big, 256 * MIB, 8) == 256 * MIB  # a 1 TiB job: the largest tasks
    # 2 GiB on 2 processes: 4 tasks of 512 would do, but the cap is 256.
    assert task_bytes_for(2048 * MIB, 256 * MIB, 2) == 256 * MIB
    # 2 GiB on 16 processes: 32 tasks of 64 MiB, two per process.
    assert task_bytes_for(2048 * MIB, 256 * MIB, 16) == 64 * MIB
    # Never below the floor, however many processes, nor above the cap.
    assert task_bytes_for(100 * MIB, 256 * MIB, 64) == MIN_TASK_BYTES
    assert task_bytes_for(10 * MIB, 8 * MIB, 64) == 8 * MIB
    # No live worker counts as one (a job queued before the workers start).
    assert task_bytes_for(100 * MIB, 256 * MIB, 0) == task_bytes_for(100 * MIB, 256 * MIB, 1)


@pytest.fixture
def stack(tmp_path, monkeypatch):
    """A 16 MiB stack (128 frames of 128 KiB, HDF5 chunks of 4 frames) and its mask; task
    cap 8 MiB, floor 1 MiB (the rule at a scale a test can afford)."""
    monkeypatch.setattr(plan_mod, "MIN_TASK_BYTES", 1 * MIB)
    path, mask = str(tmp_path / "s.h5"), str(tmp_path / "m.npy")
    with h5py.File(path, "w") as f:
        f.create_dataset("data", shape=(128, 256, 256), dtype="u2", chunks=(4, 256, 256))
    np.save(mask, np.ones((256, 256), bool))
    return path, mask, Settings(task_bytes=8 * MIB)


@pytest.mark.parametrize("processes", [1, 3, 8, 64])
def test_fitted_plans_cover_the_frames_on_hdf5_chunks(stack, processes):
    path, mask, settings = stack
    prepared = prepare(SubmitRequest(inputs=(path,), mask=mask), settings)
    assert prepared.spec.chunk_frames == 64  # 8 MiB of 128 KiB frames: planned without Redis
    fitted = fit_to_workers(prepared, settings, processes)
    spec = fitted.spec
    frame_bytes = 256 * 256 * 2
    size = max(min(8 * MIB, -(-16 * MIB // (TASKS_PER_PROCESS * processes))), 1 * MIB)
    assert spec.chunk_frames == size // frame_bytes // 4 * 4
    assert spec.boundaries[0] == 0 and spec.boundaries[-1] == 128
    assert all(b % 4 == 0 for b in spec.boundaries)
    sizes = [b - a for a, b in itertools.pairwise(spec.boundaries)]
    assert sizes[:-1] == [spec.chunk_frames] * (len(sizes) - 1) and sizes[-1] <= spec.chunk_frames
    assert fitted.plan.boundaries == spec.boundaries and spec.n_chunks == fitted.plan.n_chunks
    if processes <= 8:  # the floor (8 frames) is not reached: two tasks per process at least
        assert spec.n_chunks >= min(TASKS_PER_PROCESS * processes, 128 // 4)
    # Everything else is the prepared job's.
    same = {f.name for f in dataclasses.fields(spec)} - {"boundaries", "chunk_frames"}
    assert all(getattr(spec, n) == getattr(prepared.spec, n) for n in same)


def test_explicit_chunk_frames_stay(tmp_path):
    path, mask = str(tmp_path / "s.h5"), str(tmp_path / "m.npy")
    with h5py.File(path, "w") as f:
        f.create_dataset("data", shape=(64, 64, 64), dtype="u2")
    np.save(mask, np.ones((64, 64), bool))
    settings = Settings()
    prepared = prepare(SubmitRequest(inputs=(path,), mask=mask, chunk_frames=16), settings)
    assert fit_to_workers(prepared, settings, 32, chunk_frames=16) is prepared
    assert prepared.spec.boundaries == (0, 16, 32, 48, 64)


def test_live_processes_are_those_with_a_recent_heartbeat(redis_client):
    """What ``submit`` sizes tasks for: members of the workers index beaten within the timeout."""
    from framestats import constants as C
    from framestats import jobs

    now = 1_000_000.0  # far in the past: no real worker's beat is this old
    fresh = {f"test-plan:{i}": now - 1 for i in range(3)}
    stale = {"test-plan:old": now - 100}
    before = jobs.live_processes(redis_client, 30, now=now)
    redis_client.zadd(C.WORKERS_INDEX, {**fresh, **stale})
    try:
        assert jobs.live_processes(redis_client, 30, now=now) - before == 3
        assert jobs.live_processes(redis_client, 300, now=now) - before == 4
    finally:
        redis_client.zrem(C.WORKERS_INDEX, *fresh, *stale)


def test_live_processes_on_a_queue_are_those_taking_from_it(redis_client):
    """A job's tasks are sized for the workers of its queue: a worker that says which
    queues it takes counts for those only, one that does not say counts for every queue,
    and an index member whose record expired counts for none."""
    from framestats import constants as C
    from framestats import jobs

    now = 1_000_000.0
    tag = uuid.uuid4().hex[:8]
    gpu, cpu = f"gpu-{tag}", f"cpu-{tag}"
    records = {
        f"test-plan-{tag}:1": gpu,
        f"test-plan-{tag}:2": f"{cpu},{gpu}",
        f"test-plan-{tag}:3": cpu,
        f"test-plan-{tag}:4": "",  # an older worker: queues not recorded
        f"test-plan-{tag}:5": None,  # its record expired
    }

    def counts() -> tuple[int, int, int]:
        return (
            jobs.live_processes(redis_client, 30, now=now, queue=gpu),
            jobs.live_processes(redis_client, 30, now=now, queue=cpu),
            jobs.live_processes(redis_client, 30, now=now, queue=f"none-{tag}"),
        )

    before = counts()  # real workers that record no queues count everywhere
    redis_client.zadd(C.WORKERS_INDEX, dict.fromkeys(records, now - 1))
    for worker_id, queues in records.items():
        if queues is not None:
            redis_client.hset(C.worker_key(worker_id), mapping={"id": worker_id, "queues": queues})
    try:
        after = counts()
        assert tuple(a - b for a, b in zip(after, before, strict=True)) == (3, 3, 1)
    finally:
        redis_client.zrem(C.WORKERS_INDEX, *records)
        redis_client.delete(*(C.worker_key(w) for w in records))


@pytest.mark.parametrize("processes", [None, 1, 5])
def test_inspect_plans_what_submit_queues(stack, processes):
    from framestats.inspection import inspect_file

    path, mask, settings = stack
    queued = fit_to_workers(
        prepare(SubmitRequest(inputs=(path,), mask=mask), settings), settings, processes or 1
    ).spec
    planned = inspect_file(path, None, None, settings, processes)["plan"]
    assert (
        planned["chunks"] == queued.n_chunks and planned["frames_per_task"] == queued.chunk_frames
    )
    assert planned["live_processes"] == processes


def test_inspect_names_the_workers_it_planned_for(tmp_path, redis_url, redis_client):
    from click.testing import CliRunner

    from framestats import constants as C
    from framestats import jobs
    from producer.cli import cli

    path = str(tmp_path / "s.h5")
    with h5py.File(path, "w") as f:
        f.create_dataset("data", shape=(8, 32, 32), dtype="u2")
    timeout = Settings.from_env().worker_timeout
    default = C.DEFAULT_QUEUE
    before = jobs.live_processes(redis_client, timeout, queue=default)
    res = CliRunner().invoke(cli, ["inspect", path], env={"REDIS_URL": redis_url})
    after = jobs.live_processes(redis_client, timeout, queue=default)  # a beat may age out
    assert res.exit_code == 0, res.output

    def says(live: int, on: str = "") -> str:
        if live == 0:
            return f"no worker is running{on}: tasks sized for one process"
        return f"tasks sized for {live} live worker process{'es' if live > 1 else ''}{on},"

    on = f" on queue {default}"
    assert says(before, on) in res.output or says(after, on) in res.output, res.output
    # Two live workers take from another queue: a submit there sizes for them.
    queue = f"inspect-{uuid.uuid4().hex[:8]}"
    fake = [f"test-inspect-{queue}:{i}" for i in range(2)]
    redis_client.zadd(C.WORKERS_INDEX, dict.fromkeys(fake, time.time()))
    for worker_id in fake:
        redis_client.hset(C.worker_key(worker_id), mapping={"id": worker_id, "queues": queue})
    try:
        res = CliRunner().invoke(
            cli, ["inspect", path, "--queue", queue], env={"REDIS_URL": redis_url}
        )
        assert says(2, f" on queue {queue}") in res.output, res.output
        res = CliRunner().invoke(
            cli, ["inspect", path, "--queue", f"{queue}-x"], env={"REDIS_URL": redis_url}
        )
        assert says(0, f" on queue {queue}-x") in res.output, res.output
    finally:
        redis_client.zrem(C.WORKERS_INDEX, *fake)
        redis_client.delete(*(C.worker_key(w) for w in fake))
    res = CliRunner().invoke(cli, ["inspect", path], env={"REDIS_URL": "redis://127.0.0.1:1/0"})
    assert res.exit_code == 0, res.output
    assert "Redis did not answer: tasks sized for one worker process" in res.output
    assert "1 chunks of 8 frames" in res.output
