"""Chunks, and finalize tasks, whose message is nowhere are queued again.

A job's chunk is always somewhere in Redis: done (the done set), pending (not yet let
into the queue window), or a message, either in the queue's list or in kombu's
``unacked`` hash (taken by a worker, not yet acknowledged; kombu hands those out again
after the visibility timeout when the worker died). Except for a moment: between Redis
handing a message to a worker (BRPOP) and kombu recording it as unacknowledged, the
message is only in that worker's socket and memory (likewise between a finished chunk
taking its successor off the pending list and publishing it). A worker killed then
loses the message and nothing would run that chunk again: the job would wait forever,
one chunk short. Prefetching widens the moment (a worker keeps a BRPOP open while its
processes compute, so every message published meanwhile passes through it), and kombu
5.7 keeps a BRPOP reply unread while the worker has no room for it.

The sweep closes that gap. Once per ``FRAMESTATS_RESTORE_INTERVAL`` across all workers
(whichever process takes ``SWEEP_LOCK``), it looks at every unfinished job that has
made no progress for ``STALL`` intervals. When its queue holds fewer messages (in the
list and in workers' hands) than its jobs have chunks out, it reads in one transaction
where each chunk is, and remembers the chunks that are nowhere. One still nowhere ``GRACE``
intervals later is queued again; so is the finalize task of a job whose chunks are all
done when no finalize message exists. A chunk queued again that was only slow runs
twice, which costs time only: a result is committed once.

A job still waiting for its first chunk is looked at only when nothing on its queue has
progressed for as long (it is waiting its turn, and its messages are many to read).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from framestats import constants as C
from framestats import monitor, retention, wire
from framestats.messages import JobSpec

from .periodic import Periodic

log = logging.getLogger(__name__)

#: A job is looked at after this many restore intervals without progress...
STALL = 2.0
#: ...and a chunk found nowhere is queued again when it is still nowhere this much later.
GRACE = 2.0
#: The least of either, in seconds, however short the restore interval.
MIN_SECONDS = 2.0

FINALIZE = "finalize"

_FIELDS = ("state", "queue", "n_chunks", "manifest", "last_progress", "started", "submitted")


@dataclass(frozen=True)
class Requeued:
    """What one sweep queued again for one job."""

    job_id: str
    chunks: tuple[int, ...]
    finalize: bool


@dataclass(frozen=True)
class _Job:
    job_id: str
    state: str
    queue: str
    n_chunks: int
    manifest: str
    last: float


def _active(client: Any) -> list[_Job]:
    """Unfinished jobs; finished or forgotten ids leave the active set."""
    ids = sorted(client.smembers(C.ACTIVE_JOBS))
    if not ids:
        return []
    pipe = client.pipeline(transaction=False)
    for job_id in ids:
        pipe.hmget(C.job_key(job_id), list(_FIELDS))
    out, gone = [], []
    for job_id, row in zip(ids, pipe.execute(), strict=True):
        state, queue, n_chunks, manifest, *times = row
        if not state or state in monitor.FINISHED or not queue or not n_chunks:
            gone.append(job_id)
            continue
        last = max((float(t) for t in times if t), default=0.0)
        out.append(_Job(job_id, state, queue, int(n_chunks), manifest or "", last))
    if gone:
        client.srem(C.ACTIVE_JOBS, *gone)
    return out


def _stalled(active: list[_Job], now: float, stall: float) -> list[_Job]:
    queue_last: dict[str, float] = {}
    for job in active:
        queue_last[job.queue] = max(queue_last.get(job.queue, 0.0), job.last)
    return [
        job
        for job in active
        if now - (queue_last[job.queue] if job.state == "queued" else job.last) >= stall
    ]


def _short_queues(client: Any, active: list[_Job], queues: set[str]) -> set[str]:
    """The queues among ``queues`` with fewer messages than their jobs' chunks need.

    Counting is cheap (a few integers per job); reading every message is not (a queue
    shared by many jobs holds a window of each), so messages are read only for a queue
    that comes up short. Surplus messages (copies, a cancelled job's leftovers) can hide
    a loss for as long as they wait; it is found once they are consumed.
    """
    if not queues:
        return set()
    on = [job for job in active if job.queue in queues]
    pipe = client.pipeline(transaction=True)
    for job in on:
        pipe.scard(C.job_key(job.job_id, C.JobPart.DONE))
        pipe.llen(C.job_key(job.job_id, C.JobPart.PENDING))
    names = sorted(queues)
    for queue in names:
        for key in wire.queue_keys(queue):
            pipe.llen(key)
    pipe.hvals(wire.UNACKED_KEY)
    replies = pipe.execute()
    need: dict[str, int] = dict.fromkeys(names, 0)
    for k, job in enumerate(on):
        done, pending = int(replies[2 * k]), int(replies[2 * k + 1])
        need[job.queue] += max(0, job.n_chunks - done - pending) + _finalize_due(job, done)
    held = wire.reserved_by_queue(replies[-1])
    steps = len(wire.PRIORITY_STEPS)
    lens = replies[2 * len(on) : -1]
    have = {q: sum(lens[i * steps : (i + 1) * steps]) + held.get(q, 0) for i, q in enumerate(names)}
    return {q for q in names if have[q] < need[q]}


def _where(messages: Iterable[str]) -> dict[str, set[str]]:
    """job id -> chunk indices (as text) and FINALIZE that have a message among ``messages``."""
    out: dict[str, set[str]] = {}
    for raw in messages:
        got = wire.read_task(raw)
        if got is None:
            continue
        task, payload = got
        job_id = str(payload.get("job_id", ""))
        if task == C.TASK_REDUCE and "index" in payload:
            out.setdefault(job_id, set()).add(str(payload["index"]))
        elif task == C.TASK_FINALIZE:
            out.setdefault(job_id, set()).add(FINALIZE)
    return out


def _finalize_due(job: _Job, done: int) -> bool:
    """All chunks done and the job not finished: its finalize task must exist."""
    return done >= job.n_chunks and job.state in ("running", "finalizing")


def _nowhere(job: _Job, done: set[str], pending: Iterable[str], present: set[str]) -> set[str]:
    lost = {str(i) for i in range(job.n_chunks)} - done - set(pending) - present
    if _finalize_due(job, len(done)) and FINALIZE not in present:
        lost.add(FINALIZE)
    return lost


def sweep(
    client: Any,
    load_spec: Callable[[str, str], JobSpec],
    interval: float,
    now: float | None = None,
) -> list[Requeued]:
    """One round over the unfinished jobs; returns what it queued again."""
    now = time.time() if now is None else now
    stall = max(MIN_SECONDS, STALL * interval)
    grace = max(MIN_SECONDS, GRACE * interval)
    active = _active(client)
    jobs_ = _stalled(active, now, stall)
    short = _short_queues(client, active, {job.queue for job in jobs_})
    whole = [C.job_key(job.job_id, C.JobPart.MISSING) for job in jobs_ if job.queue not in short]
    if whole:  # every chunk there has a message: nothing is nowhere
        client.delete(*whole)
    jobs_ = [job for job in jobs_ if job.queue in short]
    if not jobs_:
        return []
    queues = sorted(short)
    # One snapshot: nothing moves between the done sets, the queues and the unacked hash.
    pipe = client.pipeline(transaction=True)
    for job in jobs_:
        pipe.smembers(C.job_key(job.job_id, C.JobPart.DONE))
        pipe.lrange(C.job_key(job.job_id, C.JobPart.PENDING), 0, -1)
        pipe.hgetall(C.job_key(job.job_id, C.JobPart.MISSING))
    for queue in queues:
        for key in wire.queue_keys(queue):
            pipe.lrange(key, 0, -1)
    pipe.hvals(wire.UNACKED_KEY)
    replies = pipe.execute()
    n = 3 * len(jobs_)
    present = _where(raw for reply in replies[n:] for raw in reply)
    out = []
    for k, job in enumerate(jobs_):
        done, pending, seen = replies[3 * k : 3 * k + 3]
        lost = _nowhere(job, set(done), pending, present.get(job.job_id, set()))
        due = sorted(x for x in lost if x in seen and now - float(seen[x]) >= grace)
        _remember(client, job.job_id, lost, seen, now, grace)
        if not due:
            continue
        chunks = tuple(int(x) for x in due if x != FINALIZE)
        try:
            spec = load_spec(job.manifest, job.job_id) if chunks else None
        except Exception as exc:  # an unreadable manifest: the chunk fails when it runs anyway
            log.error("job %s: cannot queue chunks %s again: %s", job.job_id, chunks, exc)
            continue
        pipe = client.pipeline(transaction=True)
        if spec is not None:
            wire.publish_chunks(pipe, spec, chunks)
        if FINALIZE in due:
            wire.publish_finalize(pipe, job.job_id, job.manifest, job.queue)
        pipe.hincrby(C.job_key(job.job_id), "requeued", len(due))
        pipe.hdel(C.job_key(job.job_id, C.JobPart.MISSING), *due)
        pipe.execute()
        log.warning(
            "job %s: no message anywhere for %s after %.0f s (lost with a worker); queued again",
            job.job_id,
            ", ".join(("chunk " + x if x != FINALIZE else x) for x in due),
            grace,
        )
        out.append(Requeued(job.job_id, chunks, FINALIZE in due))
    return out


def _remember(
    client: Any, job_id: str, lost: set[str], seen: dict[str, str], now: float, grace: float
) -> None:
    """Note when each lost item was first found nowhere; forget those found again."""
    key = C.job_key(job_id, C.JobPart.MISSING)
    pipe = client.pipeline(transaction=False)
    new = {x: now for x in lost if x not in seen}
    if new:
        pipe.hset(key, mapping=new)
    found = [x for x in seen if x not in lost]
    if found:
        pipe.hdel(key, *found)
    if lost:
        pipe.expire(key, int(3 * grace) + 1)  # a job that moves on forgets stale entries
    if new or found or lost:
        pipe.execute()


class Sweeper:
    """Runs ``sweep`` every interval; one process of the cluster per interval."""

    def __init__(self, client: Any, owner: str, interval: float, load_spec: Any) -> None:
        self.client = client
        self.owner = owner
        self.interval = interval
        self.load_spec = load_spec
        self._periodic = Periodic("lost-message sweep", interval, self._round)
        self._trimmed = -float("inf")

    def once(self) -> list[Requeued]:
        ms = max(1, int(self.interval * 1000))
        if not self.client.set(C.SWEEP_LOCK, self.owner, nx=True, px=ms):
            return []
        if time.monotonic() - self._trimmed >= retention.TRIM_INTERVAL:
            self._trimmed = time.monotonic()  # expired jobs leave the index without a prune
            retention.trim_index(self.client)
        return sweep(self.client, self.load_spec, self.interval)

    def _round(self) -> None:
        self.once()

    def start(self) -> None:
        self._periodic.start()

    def stop(self) -> None:
        self._periodic.stop()
