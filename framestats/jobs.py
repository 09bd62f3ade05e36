"""Job state in Redis: the job hash, its chunk sets and counters.

Redis holds state and counters, never bulk results; everything here can be rebuilt
from the job folder (manifest + committed chunks) by ``resume``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from typing import Any

from . import constants as C
from . import scripts
from .messages import JobSpec, JobState
from .settings import Settings

#: A redis-py client (``framestats.connection.connect``: str replies).
Client = Any

#: Publishing the pending list in slices keeps each Redis command small.
_PUSH_BATCH = 10_000
#: Seconds a finished job's wake-up event waits for a follower.
_EVENTS_TTL = 3600
#: Seconds a finished job keeps its keys when its hash does not say (``ttl`` field,
#: FRAMESTATS_JOB_TTL at submit).
DEFAULT_TTL = Settings.job_ttl


def live_processes(
    client: Client, worker_timeout: float, now: float | None = None, queue: str | None = None
) -> int:
    """Worker processes whose heartbeat is younger than ``worker_timeout`` seconds; with
    ``queue``, only those taking chunks from it (and those that do not say which they take).
    """
    now = time.time() if now is None else now
    if queue is None:
        return int(client.zcount(C.WORKERS_INDEX, now - worker_timeout, "+inf"))
    ids = client.zrangebyscore(C.WORKERS_INDEX, now - worker_timeout, "+inf")
    if not ids:
        return 0
    pipe = client.pipeline(transaction=False)
    for worker_id in ids:
        pipe.hmget(C.worker_key(worker_id), "id", "queues")
    count = 0
    for found, queues in pipe.execute():
        if found is not None and C.takes_from(C.worker_queues(queues), queue):
            count += 1
    return count


def create(
    client: Client,
    spec: JobSpec,
    pending: Iterable[int],
    done: Iterable[int] = (),
    ttl: int | None = None,
) -> None:
    """Write the job hash, its done set and its pending list (replacing any old state).

    ``ttl``: seconds the job's keys are kept once it has finished (FRAMESTATS_JOB_TTL;
    0: until pruned), recorded in the hash for ``finish``.
    """
    now = time.time()
    done = list(done)
    fields: dict[str, Any] = {
        "id": spec.job_id,
        "state": JobState.QUEUED.value,
        "input": spec.segments[0].path
        + (
            f" (+{len({s.path for s in spec.segments}) - 1} files)"
            if len({s.path for s in spec.segments}) > 1
            else ""
        ),
        "dataset": spec.segments[0].dataset,
        "output": spec.output,
        "workdir": spec.workdir,
        "manifest": spec.manifest_path,
        "queue": spec.queue,
        "stats": ",".join(spec.stats),
        "n_chunks": spec.n_chunks,
        "n_frames": spec.n_frames,
        "frame_bytes": spec.frame_bytes,
        "n_regions": spec.n_regions,
        "created": spec.created,
        "submitted": now,
        "frames_done": 0,
        "bytes_done": 0,
        "chunks_failed": 0,
    }
    if ttl is not None:
        fields["ttl"] = int(ttl)
    if done:
        frames = sum(spec.boundaries[i + 1] - spec.boundaries[i] for i in done)
        fields["frames_done"] = frames
        fields["bytes_done"] = frames * spec.frame_bytes
        fields["frames_resumed"] = frames  # not counted in the job's rate
    pipe = client.pipeline(transaction=True)
    pipe.delete(*C.job_keys(spec.job_id))
    pipe.hset(C.job_key(spec.job_id), mapping=fields)
    pipe.zadd(C.JOBS_INDEX, {spec.job_id: spec.created})
    pipe.sadd(C.ACTIVE_JOBS, spec.job_id)
    for i in range(0, len(done), _PUSH_BATCH):
        pipe.sadd(C.job_key(spec.job_id, C.JobPart.DONE), *done[i : i + _PUSH_BATCH])
    pipe.execute()
    push_pending(client, spec.job_id, pending)


def push_pending(client: Client, job_id: str, indices: Iterable[int]) -> None:
    items = list(indices)
    pipe = client.pipeline(transaction=False)
    for i in range(0, len(items), _PUSH_BATCH):
        pipe.rpush(C.job_key(job_id, C.JobPart.PENDING), *items[i : i + _PUSH_BATCH])
    pipe.execute()


def pop_pending(client: Client, job_id: str, count: int = 1) -> list[int]:
    """Take up to ``count`` chunk indices off the pending list."""
    got = client.lpop(C.job_key(job_id, C.JobPart.PENDING), count)
    return [int(x) for x in got] if got else []


#: More commands for the same round trip (a heartbeat, a metric); gets the pipeline.
Also = Callable[[Any], None] | None


def take_successor(client: Client, job_id: str, index: int) -> list[int] | None:
    """The pending chunk that finished chunk ``index`` releases into the queue window.

    Taken off the pending list once per finished chunk and remembered, so a delivery of
    chunk ``index`` after its process died between taking and publishing gets the same
    chunk again: nothing pending is lost. ``[]`` when nothing is pending; None when the
    successor was already published (``successor_published``).
    """
    keys = [C.job_key(job_id, C.JobPart.PENDING), C.job_key(job_id, C.JobPart.SUCCESSORS)]
    got = scripts.run(client, "take_successor", keys, [str(index)])
    return _successor(got)


def _successor(got: str | None) -> list[int] | None:
    if got is None:
        return None
    return [int(got)] if got else []


def successor_published(client: Client, job_id: str, index: int, successor: list[int]) -> None:
    """Mark chunk ``index``'s successor as queued (``client`` may be the publishing MULTI).

    Not once the job has finished: its successors hash is gone and must stay so.
    """
    keys = (C.job_key(job_id), C.job_key(job_id, C.JobPart.SUCCESSORS))
    scripts.run(
        client, "mark_published", list(keys), [str(index), "+" + ",".join(map(str, successor))]
    )


def get(client: Client, job_id: str) -> dict[str, str] | None:
    data = client.hgetall(C.job_key(job_id))
    return data or None


def state(client: Client, job_id: str) -> JobState | None:
    raw = client.hget(C.job_key(job_id), "state")
    return JobState(raw) if raw else None


def chunks_done(client: Client, job_id: str) -> int:
    return int(client.scard(C.job_key(job_id, C.JobPart.DONE)))


def begin_chunk(
    client: Client,
    job_id: str,
    index: int,
    runner: tuple[str, str] | None = None,
    max_deliveries: int = 0,
) -> tuple[JobState | None, int]:
    """Count one delivery of chunk ``index`` (atomically, only for a known job).

    Returns the job state (None when Redis does not know the job) and the deliveries
    so far; the first chunk to start moves the job from queued to running. ``runner``
    (the worker's heartbeat key, its label for the chunk) gets the label as its current
    chunk in the same script, only when the chunk will run: the job is running and this
    is delivery ``max_deliveries`` or earlier.
    """
    keys = [C.job_key(job_id), C.job_key(job_id, C.JobPart.ATTEMPTS)]
    args: list[Any] = [str(index), time.time()]
    if runner is not None:
        keys.append(runner[0])
        args += [max_deliveries, runner[1]]
    raw, attempts = scripts.run(client, "begin_chunk", keys, args)
    return (JobState(raw) if raw else None), int(attempts)


def finish_chunk(
    client: Client,
    job_id: str,
    index: int,
    frames: int,
    nbytes: int,
    worker: str,
    also: Also = None,
    note: tuple[str, str] | None = None,
) -> tuple[int, list[int] | None]:
    """Record chunk ``index`` as committed and take its successor, in one script.

    Returns the chunks done so far (-1: Redis does not know the job) and the successor
    as ``take_successor`` gives it (None as well when the job is no longer queued or
    running). One script, so a kill cannot separate the done set from the counters, a
    duplicate delivery counts nothing, a job Redis forgot is not half re-created
    (resume rebuilds it from the job folder), and a delivery after a crash between
    this and the successor's publication gets the same successor again. ``also`` adds
    commands to the same round trip; ``note`` (field, value) is set in the job's hash.
    """
    keys = [
        C.job_key(job_id),
        C.job_key(job_id, C.JobPart.DONE),
        C.job_key(job_id, C.JobPart.WORKERS),
        C.METRICS_KEY,
        C.job_key(job_id, C.JobPart.PENDING),
        C.job_key(job_id, C.JobPart.SUCCESSORS),
    ]
    pipe = client.pipeline(transaction=False)
    args: list[Any] = [index, frames, nbytes, worker, time.time(), *(note or ())]
    scripts.run(pipe, "finish_chunk", keys, args)
    if also is not None:
        also(pipe)
    done, got = pipe.execute()[0]
    return int(done), _successor(got)


def record_error(
    client: Client, job_id: str, index: int | str, frames: tuple[int, int], reason: str
) -> None:
    entry = json.dumps(
        {"chunk": index, "frames": list(frames), "reason": reason, "time": time.time()}
    )
    keys = (C.job_key(job_id), C.job_key(job_id, C.JobPart.ERRORS), C.METRICS_KEY)
    scripts.run(client, "record_error", list(keys), [entry])


def errors(client: Client, job_id: str, limit: int = 10) -> list[dict[str, Any]]:
    return [json.loads(e) for e in client.lrange(C.job_key(job_id, C.JobPart.ERRORS), 0, limit - 1)]


def finish(
    client: Client,
    job_id: str,
    new_state: JobState,
    reason: str | None = None,
    notify: bool = True,
) -> bool:
    """Move an unfinished job to a final state; False when it had already finished.

    ``notify`` wakes ``--wait`` followers at once; a caller with work left to do first
    (the finalizer's cleanup) passes False and calls ``notify_finished`` after it.
    The job's per-chunk hashes are dropped (the chunks delivered more than once are noted
    in its hash: ``redelivered``) and its other keys expire after its ``ttl``
    (``expire_finished``).
    """
    key = C.job_key(job_id)
    from redis import WatchError

    with client.pipeline(transaction=True) as pipe:
        while True:
            try:
                pipe.watch(key)
                raw, ttl, publishing = pipe.hmget(key, ["state", "ttl", "publishing"])
                if raw and JobState(raw).finished and JobState(raw) is not new_state:
                    pipe.unwatch()
                    return False
                if publishing and new_state is JobState.CANCELLED:
                    pipe.unwatch()  # the output is being renamed into place: too late
                    return False
                again = scripts.run(
                    pipe, "redelivered", [C.job_key(job_id, C.JobPart.ATTEMPTS)], []
                )
                pipe.multi()
                fields: dict[str, Any] = {"state": new_state.value, "finished": time.time()}
                if again:  # what the dropped attempts hash showed worth keeping
                    fields.update(_redelivered(again))
                if reason:
                    fields["reason"] = reason
                if new_state is JobState.FAILED:
                    pipe.hincrby(key, "chunks_failed", 1)
                pipe.hset(key, mapping=fields)
                expire_finished(pipe, job_id, _ttl(ttl))
                if notify:
                    _notify(pipe, job_id, new_state)
                pipe.srem(C.ACTIVE_JOBS, job_id)
                pipe.execute()
                return True
            except WatchError:
                continue


#: Most chunks listed in a finished job's ``redelivered`` field (the most delivered).
_REDELIVERED_MAX = 100


def _redelivered(flat: list[str]) -> dict[str, Any]:
    """Job hash fields: how many chunks ran more than once, and the most delivered."""
    counts = sorted(
        ((int(flat[i]), int(flat[i + 1])) for i in range(0, len(flat), 2)),
        key=lambda kv: (-kv[1], kv[0]),
    )
    return {
        "chunks_redelivered": len(counts),
        "redelivered": json.dumps(dict(counts[:_REDELIVERED_MAX])),
    }


def redelivered(data: dict[str, str]) -> dict[int, int]:
    """Chunk index -> deliveries, of a finished job's chunks delivered more than once."""
    try:
        return {int(k): int(v) for k, v in json.loads(data.get("redelivered") or "{}").items()}
    except (ValueError, AttributeError):
        return {}


def _ttl(field: str | None) -> int:
    try:
        return int(field) if field is not None else DEFAULT_TTL
    except ValueError:
        return DEFAULT_TTL


def chunk_keys(job_id: str) -> list[str]:
    """The keys that track single chunks while a job runs, dropped as soon as it ends."""
    return [
        C.job_key(job_id, C.JobPart.PENDING),
        C.job_key(job_id, C.JobPart.ATTEMPTS),
        C.job_key(job_id, C.JobPart.SUCCESSORS),
        C.job_key(job_id, C.JobPart.MISSING),
    ]


def expire_finished(pipe: Any, job_id: str, ttl: int) -> None:
    """Drop a finished job's per-chunk keys; its others expire in ``ttl`` s (0: kept)."""
    pipe.delete(*chunk_keys(job_id))
    if ttl > 0:
        dropped = set(chunk_keys(job_id))
        lock, events = (
            C.job_key(job_id, C.JobPart.FINALIZE_LOCK),
            C.job_key(job_id, C.JobPart.EVENTS),
        )
        for name in C.job_keys(job_id):
            if name not in dropped and name not in (lock, events):  # these expire on their own
                pipe.expire(name, ttl)


def _notify(pipe: Any, job_id: str, new_state: JobState) -> None:
    keys = (C.job_key(job_id), C.job_key(job_id, C.JobPart.EVENTS))
    scripts.run(pipe, "notify", list(keys), [new_state.value, _EVENTS_TTL * 1000])


def notify_finished(client: Client, job_id: str, new_state: JobState) -> None:
    """Wake ``--wait`` followers of a job that ``finish`` ended with ``notify=False``."""
    pipe = client.pipeline(transaction=False)
    _notify(pipe, job_id, new_state)
    pipe.execute()


def wait_finished(client: Client, job_id: str, timeout: float) -> None:
    """Sleep up to ``timeout`` seconds, waking as soon as ``finish`` is called for the job."""
    client.blpop([C.job_key(job_id, C.JobPart.EVENTS)], timeout=timeout)


def count_finalize(client: Client, job_id: str) -> int:
    """Count one attempt at the job's finalize step; returns the attempts so far."""
    return int(client.hincrby(C.job_key(job_id), "finalize_deliveries", 1))


def begin_finalize(client: Client, job_id: str) -> JobState | None:
    """Move the job to finalizing unless it ended meanwhile; returns its state after."""
    raw = scripts.run(client, "begin_finalize", [C.job_key(job_id)], [])
    return JobState(raw) if raw else None


def acquire_finalize(client: Client, job_id: str, token: str, ttl: float) -> bool:
    """Take the job's finalize lock for ``ttl`` seconds, unless another process holds it."""
    return bool(
        client.set(C.job_key(job_id, C.JobPart.FINALIZE_LOCK), token, nx=True, px=int(ttl * 1000))
    )


def renew_finalize(client: Client, job_id: str, token: str, ttl: float) -> bool:
    """Extend the finalize lock by ``ttl`` seconds; False when it is no longer the caller's."""
    key = C.job_key(job_id, C.JobPart.FINALIZE_LOCK)
    return bool(scripts.run(client, "renew_lock", [key], [token, int(ttl * 1000)]))


def release_finalize(client: Client, job_id: str, token: str) -> None:
    """Free the finalize lock if it is still the caller's."""
    scripts.run(client, "release_lock", [C.job_key(job_id, C.JobPart.FINALIZE_LOCK)], [token])


def retry_finalize(client: Client, job_id: str) -> None:
    """After a failed finalize attempt: a cancel applies again until the next attempt."""
    client.hdel(C.job_key(job_id), "publishing")


def may_publish(client: Client, job_id: str, token: str) -> bool:
    """The finalizer's last check before renaming the output into place: True while it
    still holds the lock and the job is still finalizing (marked "publishing" then, and
    a cancel no longer applies). A finalizer paused past its lock, or a job cancelled
    meanwhile, gets False and must publish nothing."""
    keys = [C.job_key(job_id, C.JobPart.FINALIZE_LOCK), C.job_key(job_id)]
    return bool(scripts.run(client, "publish_gate", keys, [token]))


def delete(client: Client, job_id: str) -> None:
    pipe = client.pipeline(transaction=True)
    pipe.delete(*C.job_keys(job_id))
    pipe.zrem(C.JOBS_INDEX, job_id)
    pipe.srem(C.ACTIVE_JOBS, job_id)
    pipe.execute()


def recent(client: Client, limit: int = 50) -> list[dict[str, str]]:
    """The newest ``limit`` jobs' hashes, newest first, with chunks_done added."""
    ids = client.zrevrange(C.JOBS_INDEX, 0, limit - 1)
    pipe = client.pipeline(transaction=False)
    for job_id in ids:
        pipe.hgetall(C.job_key(job_id))
        pipe.scard(C.job_key(job_id, C.JobPart.DONE))
    raw = pipe.execute()
    out = []
    for i in range(0, len(raw), 2):
        if raw[i]:
            data = dict(raw[i])
            data["chunks_done"] = str(raw[i + 1])
            out.append(data)
    return out
