"""What `producer status`, `producer workers` and the metrics endpoint show, read from Redis.

Every view is a handful of pipelined round trips, whatever the number of jobs, so
`producer status` answers at once with hundreds of jobs. Nothing here imports numpy,
h5py or celery: the kombu Redis transport's layout is read directly (each queue is a
Redis list named after the queue, plus one list per priority step; messages a worker
has taken but not acknowledged sit in the ``unacked`` hash as ``[message, exchange,
routing_key]`` JSON).

Workers also write here (``record_chunk_latency``), so this module stays import-light.
"""

from __future__ import annotations

import bisect
import json
import os
import time
from collections import Counter
from collections.abc import Iterable
from typing import Any

from . import constants as C
from . import wire
from .chunkfile import chunk_index

#: Redis client (decode_responses=True); redis-py types every reply loosely.
Client = Any

#: States a job can be in (JobState values; spelled here so no numpy is imported).
STATES = ("queued", "running", "finalizing", "done", "failed", "cancelled")
FINISHED = ("done", "failed", "cancelled")

#: Upper bounds (s) of the chunk latency histogram buckets; +Inf is implied.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


def _f(value: Any, default: float = 0.0) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def _i(value: Any, default: int = 0) -> int:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return default


# --- jobs ----------------------------------------------------------------------------


def summarize_job(data: dict[str, str], chunks_done: int, now: float) -> dict[str, Any]:
    """One job's row: progress, rate (frames/s since it started) and ETA or duration.

    The rate counts only frames computed since the job (re)started: a resumed job's
    frames already committed (``frames_resumed``) are left out.
    """
    state = data.get("state", "unknown")
    frames_total = _i(data.get("n_frames"))
    frames_done = _i(data.get("frames_done"))
    processed = max(0, frames_done - _i(data.get("frames_resumed")))
    submitted = _f(data.get("submitted")) or None
    started = _f(data.get("started")) or None
    finished = _f(data.get("finished")) or None
    last_progress = _f(data.get("last_progress")) or None
    if state in FINISHED and finished:
        end = finished
    elif state == "finalizing" and last_progress:
        end = last_progress
    else:
        end = now
    elapsed = max(0.0, end - started) if started else None
    rate = processed / elapsed if elapsed and processed else 0.0
    eta = None
    if state in ("queued", "running") and rate > 0:
        eta = max(0.0, (frames_total - frames_done) / rate)
    duration = None
    if state in FINISHED and finished and submitted:
        duration = max(0.0, finished - submitted)
    return {
        "id": data.get("id", ""),
        "state": state,
        "reason": data.get("reason") or None,
        "input": data.get("input", ""),
        "output": data.get("output", ""),
        "queue": data.get("queue", ""),
        "chunks_total": _i(data.get("n_chunks")),
        "chunks_done": int(chunks_done),
        "chunks_failed": _i(data.get("chunks_failed")),
        "chunks_requeued": _i(data.get("requeued")),
        #: Chunks delivered more than once (counted when the job ended).
        "chunks_redelivered": _i(data.get("chunks_redelivered")),
        "frames_total": frames_total,
        "frames_done": frames_done,
        "bytes_done": _i(data.get("bytes_done")),
        "submitted": submitted,
        "started": started,
        "finished": finished,
        "last_progress": last_progress,
        "elapsed_s": elapsed,
        "frames_per_s": rate,
        "bytes_per_s": rate * _i(data.get("frame_bytes")),
        "eta_s": eta,
        "duration_s": duration,
    }


def job_detail(client: Client, job_id: str, worker_timeout: float) -> dict[str, Any] | None:
    """One job in detail: parameters, progress, rate, per-worker share, last errors."""
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(C.job_key(job_id))
    pipe.scard(C.job_key(job_id, C.JobPart.DONE))
    pipe.llen(C.job_key(job_id, C.JobPart.PENDING))
    pipe.hgetall(C.job_key(job_id, C.JobPart.WORKERS))
    pipe.lrange(C.job_key(job_id, C.JobPart.ERRORS), 0, 9)
    pipe.llen(C.job_key(job_id, C.JobPart.ERRORS))
    pipe.hlen(C.job_key(job_id, C.JobPart.ATTEMPTS))
    data, done, pending, shares, errors, n_errors, attempted = pipe.execute()
    if not data:
        return None
    now = time.time()
    row = summarize_job(data, done, now)
    total_frames = sum(_i(v) for v in shares.values()) or 1
    running_on = [
        {"worker": w["id"], "chunk": w["current"]}
        for w in workers(client, worker_timeout, now)
        if w["current"].startswith(f"{job_id}#")
    ]
    row.update(
        {
            "parameters": _parameters(data),
            "chunks_pending": int(pending),
            "chunks_started": int(attempted),
            "workers": sorted(
                (
                    {"worker": w, "frames": _i(n), "share": _i(n) / total_frames}
                    for w, n in shares.items()
                ),
                key=lambda r: -r["frames"],
            ),
            "running_on": running_on,
            "errors_total": int(n_errors),
            "errors": [_loads(e) for e in errors],
        }
    )
    return row


def job_status(client: Client, target: str, worker_timeout: float) -> dict[str, Any]:
    """``job_detail`` of a job named by id or by its output path.

    A job Redis no longer knows but whose folder is in place is described from its
    manifest and committed chunks (state ``unknown``); otherwise JobNotFound.
    """
    from .errors import JobNotFound
    from .paths import workdir_for

    if not _looks_like_path(target):
        detail = job_detail(client, target, worker_timeout)
        if detail is None:
            raise JobNotFound(f"job {target} is not known to Redis")
        return detail
    manifest = os.path.join(workdir_for(target), C.MANIFEST_NAME)
    job_id = None
    if os.path.exists(manifest):
        try:
            with open(manifest, encoding="utf-8") as fh:
                job_id = json.load(fh)["job_id"]
        except (OSError, ValueError, KeyError):
            job_id = None
    if job_id is None:  # finished jobs have no folder: find the newest job writing there
        real = os.path.abspath(target)
        ids = client.zrevrange(C.JOBS_INDEX, 0, -1)
        pipe = client.pipeline(transaction=False)
        for i in ids:
            pipe.hget(C.job_key(i), "output")
        job_id = next((i for i, o in zip(ids, pipe.execute(), strict=True) if o == real), None)
    if job_id is None:
        raise JobNotFound(f"no job known for {target} (no job folder, none in Redis)")
    detail = job_detail(client, job_id, worker_timeout)
    if detail is None:
        return offline_detail(manifest)
    return detail


def _looks_like_path(target: str) -> bool:
    return target.endswith((".h5", ".hdf5", ".nxs")) or os.sep in target or os.path.exists(target)


def _parameters(data: dict[str, str]) -> dict[str, Any]:
    params: dict[str, Any] = {
        k: data.get(k)
        for k in ("input", "dataset", "output", "stats", "queue", "workdir", "manifest")
    }
    params["regions"] = _i(data.get("n_regions"))
    params["frame_bytes"] = _i(data.get("frame_bytes"))
    decoded = {k[len("decode:") :]: v for k, v in sorted(data.items()) if k.startswith("decode:")}
    if decoded:  # how each device's workers decode the chunks (device, host or hdf5)
        params["decode"] = ", ".join(f"{path} on {dev}" for dev, path in decoded.items())
    manifest = data.get("manifest")
    if manifest:
        try:  # the manifest may live on storage this host cannot see
            with open(manifest, encoding="utf-8") as fh:
                spec = json.load(fh)
        except (OSError, ValueError):
            spec = {}
        for k in ("chunk_frames", "frame_shape", "dtype", "mask_path", "inputs"):
            if k in spec:
                params[k] = spec[k]
    return params


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return {"reason": text}


def offline_detail(manifest: str) -> dict[str, Any]:
    """A job Redis does not know, from its manifest and committed chunk files."""
    with open(manifest, encoding="utf-8") as fh:
        spec = json.load(fh)
    chunks_dir = os.path.join(spec["workdir"], C.CHUNKS_DIR)
    try:
        names = os.listdir(chunks_dir)
    except FileNotFoundError:
        names = []
    done = {i for i in map(chunk_index, names) if i is not None}
    bounds = spec["boundaries"]
    return {
        "id": spec["job_id"],
        "state": "unknown",
        "reason": "not in Redis; 'producer resume' queues the chunks without a committed result",
        "output": spec["output"],
        "queue": spec["queue"],
        "chunks_total": len(bounds) - 1,
        "chunks_done": len(done),
        "chunks_failed": 0,
        "frames_total": spec["n_frames"],
        "frames_done": sum(bounds[i + 1] - bounds[i] for i in done if i < len(bounds) - 1),
        "manifest": manifest,
    }


# --- queues --------------------------------------------------------------------------


def queue_depths(
    client: Client, queues: Iterable[str], unacked: Iterable[str] | None = None
) -> dict[str, dict[str, int]]:
    """{queue: {"waiting": n, "reserved": m}} for ``queues`` and every queue with reserved messages."""
    if unacked is None:
        unacked = client.hvals(wire.UNACKED_KEY)
    reserved = wire.reserved_by_queue(unacked)
    names = sorted(set(queues) | set(reserved))
    pipe = client.pipeline(transaction=False)
    for q in names:
        for key in wire.queue_keys(q):
            pipe.llen(key)
    lens = pipe.execute()
    n = len(wire.PRIORITY_STEPS)
    return {
        q: {"waiting": int(sum(lens[i * n : (i + 1) * n])), "reserved": reserved.get(q, 0)}
        for i, q in enumerate(names)
    }


# --- workers -------------------------------------------------------------------------


def summarize_worker(data: dict[str, str], now: float) -> dict[str, Any]:
    busy = _f(data.get("busy_seconds"))
    frames = _i(data.get("frames_done"))
    nbytes = _i(data.get("bytes_done"))
    started = _f(data.get("started")) or None
    last = _f(data.get("last_seen")) or None
    return {
        "id": data.get("id", ""),
        "name": data.get("node", ""),
        "host": data.get("host", ""),
        "pid": _i(data.get("pid")),
        "device": data.get("device", ""),
        "queues": C.worker_queues(data.get("queues")),
        "current": data.get("current", ""),
        "chunks_done": _i(data.get("chunks_done")),
        "frames_done": frames,
        "bytes_done": nbytes,
        "busy_seconds": busy,
        "frames_per_s": frames / busy if busy > 0 else 0.0,
        "bytes_per_s": nbytes / busy if busy > 0 else 0.0,
        "utilization": busy / (now - started) if started and now > started else 0.0,
        "started": started,
        "last_seen": last,
        "heartbeat_age_s": max(0.0, now - last) if last else None,
    }


def workers(client: Client, timeout: float, now: float | None = None) -> list[dict[str, Any]]:
    """Worker processes that beat within ``timeout`` seconds (their hash has not expired)."""
    now = time.time() if now is None else now
    ids = client.zrangebyscore(C.WORKERS_INDEX, now - timeout, "+inf")
    return _worker_rows(client, ids, now, timeout)


def _worker_rows(
    client: Client, ids: list[str], now: float, timeout: float
) -> list[dict[str, Any]]:
    pipe = client.pipeline(transaction=False)
    for worker_id in ids:
        pipe.hgetall(C.worker_key(worker_id))
    # Members of workers killed without deregistering: their hash expired long ago.
    pipe.zremrangebyscore(C.WORKERS_INDEX, "-inf", now - max(3 * timeout, 300.0))
    rows = [summarize_worker(d, now) for d in pipe.execute()[:-1] if d]
    return sorted(rows, key=lambda r: (r["name"], r["pid"]))


# --- overview ------------------------------------------------------------------------


#: Lua: jobs by state (flat state, count pairs), the ids whose job hash is gone, and the
#: queues of unfinished jobs (of every job when ARGV[2] is "1"). Reads only.
_CENSUS = """
local counts, gone, queues = {}, {}, {}
for _, id in ipairs(redis.call('zrange', KEYS[1], 0, -1)) do
  local row = redis.call('hmget', ARGV[1] .. id, 'state', 'queue')
  local state, queue = row[1], row[2]
  if not state then
    gone[#gone + 1] = id
  else
    counts[state] = (counts[state] or 0) + 1
    if queue and (ARGV[2] == '1'
        or (state ~= 'done' and state ~= 'failed' and state ~= 'cancelled')) then
      queues[queue] = true
    end
  end
end
local flat, names = {}, {}
for state, n in pairs(counts) do flat[#flat + 1] = state; flat[#flat + 1] = n end
for queue in pairs(queues) do names[#names + 1] = queue end
return {flat, gone, names}
"""


def overview(
    client: Client,
    worker_timeout: float,
    limit: int | None = 25,
    queues: Iterable[str] = (),
    all_queues: bool = False,
) -> dict[str, Any]:
    """Recent jobs (``limit``; None: all), jobs by state, queue depths and live workers.

    Queue depths cover the default queue, ``queues``, the queues of unfinished and
    listed jobs (of every job with ``all_queues``) and any queue with reserved messages.

    Three round trips to Redis whatever the number of jobs: the jobs are counted by a
    script inside Redis (``_CENSUS``), not by one reply per job (10^4 ended jobs: 0.15 s
    of replies for Python to parse; bench/status.py).
    """
    now = time.time()
    pipe = client.pipeline(transaction=False)
    pipe.eval(_CENSUS, 1, C.JOBS_INDEX, C.job_key(""), "1" if all_queues else "0")
    if limit is None or limit > 0:
        pipe.zrevrange(C.JOBS_INDEX, 0, -1 if limit is None else limit - 1)
    pipe.zrangebyscore(C.WORKERS_INDEX, now - worker_timeout, "+inf")
    pipe.hvals(wire.UNACKED_KEY)
    replies = pipe.execute()
    (counts, gone, job_queues), worker_ids, unacked = replies[0], replies[-2], replies[-1]
    recent = replies[1] if len(replies) == 4 else []

    pipe = client.pipeline(transaction=False)
    for job_id in recent:
        pipe.hgetall(C.job_key(job_id))
        pipe.scard(C.job_key(job_id, C.JobPart.DONE))
    for worker_id in worker_ids:
        pipe.hgetall(C.worker_key(worker_id))
    raw = pipe.execute()

    by_state: Counter[str] = Counter(
        {str(counts[i]): int(counts[i + 1]) for i in range(0, len(counts), 2)}
    )
    active_queues = {C.DEFAULT_QUEUE, *queues, *job_queues}
    if gone:  # their keys expired (FRAMESTATS_JOB_TTL) or were pruned
        from .connection import redis_error
        from .retention import forget_ids

        try:
            forget_ids(client, gone)
        except redis_error():  # a Redis refusing writes (OOM, MISCONF) still answers status
            pass
    rows = []
    pos = 0
    for _ in recent:
        data, done = raw[pos], raw[pos + 1]
        pos += 2
        if data:
            rows.append(summarize_job(data, done, now))
            if data.get("queue"):
                active_queues.add(data["queue"])
    worker_rows = sorted(
        (summarize_worker(d, now) for d in raw[pos:] if d), key=lambda r: (r["name"], r["pid"])
    )
    for w in worker_rows:
        active_queues.update(w["queues"])
    depths = queue_depths(client, active_queues, unacked)
    for q, d in depths.items():
        d["workers"] = sum(1 for w in worker_rows if C.takes_from(w["queues"], q))
    return {
        "time": now,
        "jobs": rows,
        "jobs_total": sum(by_state.values()),
        "jobs_by_state": {s: by_state.get(s, 0) for s in STATES},
        "queues": depths,
        "workers_online": len(worker_rows),
        "workers": worker_rows,
    }


# --- counters written by workers -----------------------------------------------------


def record_chunk_latency(pipe: Any, seconds: float) -> None:
    """Add one chunk's wall time to the latency histogram, in the caller's pipeline."""
    i = bisect.bisect_left(LATENCY_BUCKETS, seconds)
    bucket = f"{LATENCY_BUCKETS[i]:g}" if i < len(LATENCY_BUCKETS) else "+Inf"
    pipe.hincrby(C.LATENCY_KEY, bucket, 1)
    pipe.hincrbyfloat(C.LATENCY_KEY, "sum", seconds)
    pipe.hincrby(C.LATENCY_KEY, "count", 1)


def latency_histogram(raw: dict[str, str]) -> tuple[list[tuple[str, float]], float, int]:
    """Cumulative (upper bound, count) buckets ending with +Inf, the sum and the count."""
    buckets = sorted(
        ((float(k), _i(v)) for k, v in raw.items() if k not in ("sum", "count")),
        key=lambda kv: kv[0],
    )
    out: list[tuple[str, float]] = []
    total = 0
    for bound, n in buckets:
        total += n
        if bound != float("inf"):
            out.append((f"{bound:g}", float(total)))
    out.append(("+Inf", float(total)))
    return out, _f(raw.get("sum")), _i(raw.get("count"), total)
