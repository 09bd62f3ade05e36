"""The lost-message sweep, against a real Redis: what it queues again, and what it leaves.

Jobs are written to Redis as ``producer submit`` writes them; a lost message is a
message taken off its queue by hand (as a worker that died right after BRPOP took it),
a message a worker holds is one moved to kombu's ``unacked`` hash (as kombu moves it).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest

from framestats import constants as C
from framestats import jobs, wire
from framestats.constants import TASK_FINALIZE, TASK_REDUCE
from framestats.messages import JobSpec, Segment
from tests.unit.read.support import spec_for
from worker.recovery import Sweeper, sweep

pytestmark = pytest.mark.integration

T0 = 1_000_000.0
INTERVAL = 1.0  # stall after 2 s without progress, requeue 2 s after first found nowhere


@pytest.fixture
def client(redis_client) -> Iterator:
    redis_client.delete(C.ACTIVE_JOBS, C.SWEEP_LOCK)  # only this test's jobs are swept
    yield redis_client
    for job_id in redis_client.smembers(C.ACTIVE_JOBS):
        jobs.delete(redis_client, job_id)
    redis_client.delete(C.ACTIVE_JOBS, C.SWEEP_LOCK)


def make_job(client, n_chunks: int = 6, window: int = 4, queue: str | None = None) -> JobSpec:
    """A job as submit leaves it: hash, pending list, first window queued; times at T0."""
    spec = spec_for([Segment("/data/in.h5", "/entry/data/data", 0, 6 * n_chunks)], (4, 4), "u2")
    spec = JobSpec(
        **{
            **spec.__dict__,
            "job_id": uuid.uuid4().hex[:16],
            "queue": queue or f"q-rec-{uuid.uuid4().hex[:8]}",
            "boundaries": tuple(range(0, 6 * n_chunks + 1, 6)),
        }
    )
    jobs.create(client, spec, range(window, n_chunks))
    wire.publish_chunks(client, spec, range(window))
    client.hset(C.job_key(spec.job_id), mapping={"submitted": T0, "created": T0})
    return spec


def running(client, spec: JobSpec, last: float = T0) -> None:
    client.hset(C.job_key(spec.job_id), mapping={"state": "running", "last_progress": last})


def take(client, spec: JobSpec, index: int, to_unacked: bool = False) -> None:
    """Take chunk ``index``'s message off the queue (into the unacked hash, or lost)."""
    for raw in client.lrange(spec.queue, 0, -1):
        got = wire.read_task(raw)
        if got and got[0] == TASK_REDUCE and got[1] == spec.chunk(index).to_json():
            client.lrem(spec.queue, 1, raw)
            if to_unacked:
                tag = uuid.uuid4().hex
                client.hset("unacked", tag, json.dumps([json.loads(raw), "", spec.queue]))
                client.zadd("unacked_index", {tag: T0})
            return
    raise AssertionError(f"no message for chunk {index}")


def queued(client, spec: JobSpec) -> list[tuple[str, int | None]]:
    out = []
    for raw in client.lrange(spec.queue, 0, -1):
        task, payload = wire.read_task(raw) or ("?", {})
        assert payload["job_id"] == spec.job_id
        out.append((task, payload.get("index")))
    return sorted(out, key=str)


def run(client, spec: JobSpec, now: float):
    return sweep(client, lambda manifest, job_id: spec, INTERVAL, now=now)


@pytest.fixture(autouse=True)
def _clean_unacked(redis_client):
    yield
    redis_client.delete("unacked", "unacked_index")


def test_a_lost_chunk_is_queued_again_once(client):
    spec = make_job(client)
    running(client, spec)
    take(client, spec, 1, to_unacked=True)  # a worker holds it: not lost
    take(client, spec, 2)  # lost
    client.sadd(C.job_key(spec.job_id, C.JobPart.DONE), 0)
    take(client, spec, 0)  # done and acknowledged
    assert run(client, spec, T0 + 1) == []  # not stalled yet: nothing looked at
    assert client.hgetall(C.job_key(spec.job_id, C.JobPart.MISSING)) == {}
    assert run(client, spec, T0 + 2) == []  # stalled: chunk 2 noted, not yet queued
    assert client.hkeys(C.job_key(spec.job_id, C.JobPart.MISSING)) == ["2"]
    assert run(client, spec, T0 + 3) == []
    got = run(client, spec, T0 + 4)
    assert [(r.job_id, r.chunks, r.finalize) for r in got] == [(spec.job_id, (2,), False)]
    assert queued(client, spec) == [(TASK_REDUCE, 2), (TASK_REDUCE, 3)]
    assert client.hget(C.job_key(spec.job_id), "requeued") == "1"
    assert client.hgetall(C.job_key(spec.job_id, C.JobPart.MISSING)) == {}
    assert run(client, spec, T0 + 10) == []  # it has a message again
    assert len(queued(client, spec)) == 2
    # pending chunks are never queued by the sweep: only the successor rule releases them
    assert client.lrange(C.job_key(spec.job_id, C.JobPart.PENDING), 0, -1) == ["4", "5"]


def test_a_message_found_again_is_forgotten(client):
    spec = make_job(client)
    running(client, spec)
    raw = client.lindex(spec.queue, -1)  # chunk 0, next to be taken
    take(client, spec, 0)
    assert run(client, spec, T0 + 2) == []
    assert client.hkeys(C.job_key(spec.job_id, C.JobPart.MISSING)) == ["0"]
    client.rpush(spec.queue, raw)  # it was only in transit
    assert run(client, spec, T0 + 5) == []
    assert client.hgetall(C.job_key(spec.job_id, C.JobPart.MISSING)) == {}
    assert queued(client, spec) == [(TASK_REDUCE, i) for i in range(4)]


def test_a_job_making_progress_is_not_looked_at(client):
    spec = make_job(client)
    take(client, spec, 3)
    for t in range(0, 20, 1):
        running(client, spec, last=T0 + t)  # progress every second
        assert run(client, spec, T0 + t + 1) == []
    assert client.hgetall(C.job_key(spec.job_id, C.JobPart.MISSING)) == {}


def test_the_finalize_task_of_a_finished_job_is_queued_again(client):
    spec = make_job(client, n_chunks=4, window=4)
    running(client, spec)
    for i in range(4):
        take(client, spec, i)
        client.sadd(C.job_key(spec.job_id, C.JobPart.DONE), i)
    run(client, spec, T0 + 2)
    got = run(client, spec, T0 + 4)
    assert [(r.chunks, r.finalize) for r in got] == [((), True)]
    [raw] = client.lrange(spec.queue, 0, -1)
    assert wire.read_task(raw) == (
        TASK_FINALIZE,
        {"job_id": spec.job_id, "manifest": spec.manifest_path},
    )
    # one held by a worker (the finalizer running) is not lost
    take_finalize = client.rpop(spec.queue)
    client.hset("unacked", "tag-f", json.dumps([json.loads(take_finalize), "", spec.queue]))
    assert run(client, spec, T0 + 10) == [] and run(client, spec, T0 + 20) == []
    assert client.llen(spec.queue) == 0


def test_a_queued_job_waits_for_its_queue_to_go_quiet(client):
    busy = make_job(client)
    waiting = make_job(client, queue=busy.queue)
    take(client, waiting, 0)  # lost before the job ever started
    for t in range(0, 10):
        running(client, busy, last=T0 + t)  # the queue's other job moves on
        assert run(client, waiting, T0 + t + 1) == []
    assert client.hgetall(C.job_key(waiting.job_id, C.JobPart.MISSING)) == {}
    run(client, waiting, T0 + 11)
    got = run(client, waiting, T0 + 13)
    assert [(r.job_id, r.chunks) for r in got] == [(waiting.job_id, (0,))]


def test_finished_and_forgotten_jobs_leave_the_active_set(client):
    done, forgotten, live = make_job(client), make_job(client), make_job(client)
    jobs.finish(client, done.job_id, jobs.JobState.DONE)
    assert done.job_id not in client.smembers(C.ACTIVE_JOBS)
    client.sadd(C.ACTIVE_JOBS, done.job_id)  # as if the finish had not removed it
    client.delete(C.job_key(forgotten.job_id))
    run(client, live, T0 + 1)
    assert client.smembers(C.ACTIVE_JOBS) == {live.job_id}


def test_one_sweep_per_interval_across_processes(client):
    spec = make_job(client)
    running(client, spec, last=0.0)
    take(client, spec, 2)
    first = Sweeper(client, "a", 30.0, lambda m, j: spec)
    second = Sweeper(client, "b", 30.0, lambda m, j: spec)
    first.once()
    assert client.get(C.SWEEP_LOCK) == "a"
    assert client.hkeys(C.job_key(spec.job_id, C.JobPart.MISSING)) == ["2"]
    client.delete(C.job_key(spec.job_id, C.JobPart.MISSING))
    second.once()  # within a's interval: does nothing
    assert client.hgetall(C.job_key(spec.job_id, C.JobPart.MISSING)) == {}


def test_messages_are_read_only_when_a_queue_comes_up_short(client, monkeypatch):
    """A stalled job behind a long shared queue costs a few counts per round, not a read
    of every message; a loss makes the queue short and the messages are read then."""
    from worker import recovery

    reads: list[int] = []
    where = recovery._where

    def counting(messages):
        got = list(messages)
        reads.append(len(got))
        return where(got)

    monkeypatch.setattr(recovery, "_where", counting)
    stuck = make_job(client)
    running(client, stuck)
    take(client, stuck, 0, to_unacked=True)
    for _ in range(20):  # other jobs' windows ahead of it on the same queue
        make_job(client, queue=stuck.queue)
    for t in (2, 4, 6):
        assert run(client, stuck, T0 + t) == []
    assert reads == []
    take(client, stuck, 1)  # now one message is gone
    run(client, stuck, T0 + 8)
    got = run(client, stuck, T0 + 10)
    assert [(r.job_id, r.chunks) for r in got] == [(stuck.job_id, (1,))]
    assert len(reads) == 2 and reads[0] == 21 * 4 - 2 + 1  # the list, and one unacked
