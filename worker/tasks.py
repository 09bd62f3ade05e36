"""Celery tasks: thin wiring of job state (Redis), reading and reduction (context), commit.

A chunk task is idempotent: a chunk whose result is committed is only recorded, and the
commit is a rename, so a duplicate delivery never counts a chunk twice. Every delivery,
of a chunk or of the finalize step, is counted; one delivered more than
``FRAMESTATS_MAX_DELIVERIES`` times fails the job naming it.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from celery import Task

from framestats import chunkfile, jobs, monitor
from framestats import constants as C
from framestats.constants import TASK_FINALIZE, TASK_REDUCE
from framestats.errors import FramestatsError, PermanentChunkError, TransientChunkError, UserError
from framestats.jobdir import JobFolder, load_job
from framestats.messages import ChunkTask, JobSpec, JobState
from framestats.output import output_job_id
from framestats.wire import publish_chunks, publish_finalize

from . import finalize, refusals
from .app import app
from .runtime import Runtime, runtime

log = logging.getLogger("framestats.worker")

#: How errors and heartbeats name a job's finalize step.
FINALIZE = "finalize"


def fail_job(
    rt: Runtime, job_id: str, index: int | str, frames: tuple[int, int], reason: str
) -> None:
    """Fail the job naming the chunk (or the finalize step) and the reason."""
    where = f"chunk {index} (frames {frames[0]}-{frames[1]})" if index != FINALIZE else index
    text = f"{where}: {reason}"
    log.error("job %s failed: %s", job_id, text)
    jobs.record_error(rt.client, job_id, index, frames, reason)
    jobs.finish(rt.client, job_id, JobState.FAILED, text)
    rt.cache.drop(job_id)
    rt.heartbeat.beat(current="")


@app.task(name=TASK_REDUCE, bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=None)
@refusals.ends_delivery  # Redis refusing writes for long: one log line, the chunk runs again
def reduce_chunk(self: Task, payload: dict[str, Any]) -> str:
    try:
        task = ChunkTask.from_json(payload)
    except ValueError as exc:
        log.error("dropping malformed message: %s", exc)
        return "malformed"
    rt = runtime(self.request.hostname)
    frames = (task.start, task.stop)
    runner = (C.worker_key(rt.heartbeat.id), f"{task.job_id}#{task.index}")
    state, deliveries = jobs.begin_chunk(
        rt.client, task.job_id, task.index, runner, rt.settings.max_deliveries
    )
    if state is None:
        log.warning("job %s is unknown to Redis; dropping chunk %d", task.job_id, task.index)
        return "unknown-job"
    if state.finished:
        return f"skipped ({state.value})"
    if deliveries > rt.settings.max_deliveries:
        reason = f"delivered {deliveries - 1} times without finishing (it may crash its worker)"
        fail_job(rt, task.job_id, task.index, frames, reason)
        return "failed"
    rt.heartbeat.note(current=runner[1])  # as the script wrote it: later beats keep it
    began = time.perf_counter()
    try:
        ctx = rt.cache.get(task)
        spec = ctx.spec
        if not spec.planned(task):
            log.error(
                "job %s: refusing chunk %s %s: not in its plan", task.job_id, task.index, frames
            )
            rt.heartbeat.beat(current="")
            return "refused"
        folder = ctx.folder
        assert folder is not None  # the cache opens every job's folder
        if not chunkfile.is_committed(folder, spec, task.index):
            chunkfile.write_chunk(folder, spec, ctx.result(task.index, rt.heartbeat))
    except (PermanentChunkError, UserError) as exc:
        fail_job(rt, task.job_id, task.index, frames, str(exc))
        return "failed"
    except (TransientChunkError, OSError) as exc:
        retries = self.request.retries
        jobs.record_error(rt.client, task.job_id, task.index, frames, str(exc))
        rt.cache.drop(task.job_id)  # reopen files on the next try
        if retries < rt.settings.max_retries:
            rt.heartbeat.beat(current="")
            raise self.retry(exc=exc, countdown=rt.settings.retry_backoff * 2**retries) from exc
        fail_job(rt, task.job_id, task.index, frames, f"{exc} (after {retries + 1} tries)")
        return "failed"
    except FramestatsError as exc:
        fail_job(rt, task.job_id, task.index, frames, str(exc))
        return "failed"
    except Exception as exc:  # a bug or unexpected data must fail the job, not loop forever
        log.exception("chunk %s#%d crashed", task.job_id, task.index)
        fail_job(rt, task.job_id, task.index, frames, f"{type(exc).__name__}: {exc}")
        return "failed"
    seconds = time.perf_counter() - began
    n = task.stop - task.start
    nbytes = n * spec.frame_bytes
    rt.heartbeat.count_chunk(n, nbytes, seconds)

    def also(pipe: Any) -> None:  # the heartbeat and the latency metric ride along
        rt.heartbeat.queue_beat(pipe, current="")
        monitor.record_chunk_latency(pipe, seconds)

    # Commit, and top the window up: one finished chunk releases one pending chunk, once;
    # a delivery after a crash between taking and publishing it publishes the same one.
    done, successor = jobs.finish_chunk(
        rt.client,
        task.job_id,
        task.index,
        n,
        nbytes,
        rt.heartbeat.id,
        also=also,
        note=(f"decode:{rt.heartbeat.device}", ctx.decode_path),  # for producer status
    )
    if done < 0:  # Redis forgot the job meanwhile: the commit file stays for resume
        return "unknown-job"
    if successor:
        pipe = rt.client.pipeline(transaction=True)  # queued and marked so, or neither
        publish_chunks(pipe, spec, successor)
        jobs.successor_published(pipe, task.job_id, task.index, successor)
        pipe.execute()
    if done >= spec.n_chunks:
        publish_finalize(rt.client, spec.job_id, spec.manifest_path, spec.queue)
    return "done"


@app.task(
    name=TASK_FINALIZE, bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=None
)
@refusals.ends_delivery
def finalize_job(self: Task, payload: dict[str, Any]) -> str:
    rt = runtime(self.request.hostname)
    job_id = str(payload.get("job_id", ""))
    state = jobs.state(rt.client, job_id)
    if state is None or state.finished:
        return f"skipped ({state.value if state else 'unknown job'})"
    try:
        spec, folder = load_job(str(payload.get("manifest", "")), job_id, rt.settings.data_root)
    except (FramestatsError, OSError) as exc:
        log.error("finalize of job %s refused: %s", job_id, exc)
        return "refused"
    try:
        return _finalize(self, rt, spec, folder)
    finally:
        folder.close()


def _finalize(self: Task, rt: Runtime, spec: JobSpec, folder: JobFolder) -> str:
    job_id = spec.job_id
    if output_job_id(spec.output) == job_id:
        # A finalizer died after the rename: the output is whole, only bookkeeping is left.
        _done(rt, spec, folder)
        return "done"
    if len(chunkfile.committed(folder)) < spec.n_chunks:
        return "incomplete"
    token = f"{rt.heartbeat.id}:{uuid.uuid4().hex}"
    ttl = rt.settings.finalize_lock_ttl
    if not jobs.acquire_finalize(rt.client, job_id, token, ttl):
        # Another finalizer holds the lock; if it died, the lock expires and a retry takes
        # over. Waiting is not a delivery: only attempts count.
        raise self.retry(countdown=5)
    written = None
    try:
        deliveries = jobs.count_finalize(rt.client, job_id)
        if deliveries > rt.settings.max_deliveries:
            last = jobs.errors(rt.client, job_id, 1)
            why = f" (last error: {last[0]['reason']})" if last else ""
            reason = f"delivered {deliveries - 1} times without finishing{why}"
            fail_job(rt, job_id, FINALIZE, (0, spec.n_frames), reason)
            return "failed"
        if jobs.begin_finalize(rt.client, job_id) is not JobState.FINALIZING:
            return "skipped (ended meanwhile)"
        rt.heartbeat.beat(current=f"{job_id}#{FINALIZE}")
        with finalize.LockKeeper(rt.client, job_id, token, ttl):
            written = finalize.write(
                spec, folder, lambda i: rt.cache.get(spec.chunk(i)).result(i, rt.heartbeat)
            )
            if not jobs.may_publish(rt.client, job_id, token):
                log.warning("job %s: output not published (cancelled, or lock lost)", job_id)
                return "fenced"
            finalize.publish(spec, folder, written, rt.settings.data_root)
            written = None
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, OSError):
            reason = f"cannot write output {spec.output}: {exc}"
        log.exception("job %s: finalize failed", job_id)
        jobs.record_error(rt.client, job_id, FINALIZE, (0, spec.n_frames), reason)
        jobs.retry_finalize(rt.client, job_id)
        raise self.retry(countdown=rt.settings.retry_backoff) from exc
    finally:
        if written is not None:
            folder.unlink(written.tmp)
        jobs.release_finalize(rt.client, job_id, token)
        rt.heartbeat.beat(current="")
    _done(rt, spec, folder)
    return "done"


def _done(rt: Runtime, spec: JobSpec, folder: JobFolder) -> None:
    rt.cache.drop(spec.job_id)
    jobs.finish(rt.client, spec.job_id, JobState.DONE, notify=False)
    finalize.cleanup(spec, folder)
    jobs.notify_finished(rt.client, spec.job_id, JobState.DONE)  # --wait sees a clean folder
