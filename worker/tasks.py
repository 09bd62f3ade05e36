"""Celery tasks: thin wiring of job state (Redis), reading + kernel (context), commit (results).

A chunk task is idempotent: if its result is already committed it only records that;
the commit is a rename, so a duplicate delivery never counts a chunk twice.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any

from celery import Task
from celery.signals import worker_process_init, worker_process_shutdown

from framestats import chunkfile, connection, jobs, monitor
from framestats import constants as C
from framestats.constants import TASK_FINALIZE, TASK_REDUCE
from framestats.errors import FramestatsError, PermanentChunkError, TransientChunkError, UserError
from framestats.messages import ChunkTask, JobState
from framestats.output import output_job_id
from framestats.settings import Settings
from framestats.wire import publish_chunks, publish_finalize

from . import finalize, refusals
from .app import app
from .context import JobCache, load_spec
from .heartbeat import Heartbeat
from .recovery import Sweeper

log = logging.getLogger("framestats.worker")


@dataclass
class Runtime:
    """What one worker process holds: settings, Redis client, job cache, heartbeat."""

    settings: Settings
    client: Any
    cache: JobCache
    heartbeat: Heartbeat
    device: str


_runtime: Runtime | None = None


def runtime(node: str | None = None) -> Runtime:
    """This process's runtime, built on first use (after the fork, so CUDA is safe)."""
    global _runtime
    if _runtime is None or _runtime.heartbeat.pid != os.getpid():
        settings = Settings.from_env()
        from .kernel import resolve_device

        device = resolve_device(settings.device)
        label = str(device)
        if device.type == "cuda":
            import torch

            props = torch.cuda.get_device_properties(device)
            label = f"{device} ({props.name}, {props.total_memory / 2**30:.0f} GiB)"
        else:
            import torch

            torch.set_num_threads(int(os.environ.get("FRAMESTATS_TORCH_THREADS", "1")))
        client = connection.connect(
            settings.redis_url, retry=refusals.retry(settings.refused_writes_wait)
        )
        hb = Heartbeat(
            client,
            node or os.environ.get("FRAMESTATS_NODE", "worker"),
            label,
            settings.worker_timeout,
            consumed_queues(),
        )
        _runtime = Runtime(
            settings, client, JobCache(settings.data_root, str(device)), hb, str(device)
        )
        hb.start(settings.heartbeat)
        Sweeper(
            client,
            hb.id,
            settings.restore_interval,
            lambda manifest, job_id: load_spec(manifest, job_id, settings.data_root),
        ).start()
    return _runtime


def consumed_queues() -> list[str]:
    """The queues this worker node consumes (``--queues``; the pool inherits the node's
    selection), or [] outside a worker."""
    try:
        return sorted((app.amqp.queues.consume_from or {}).keys())
    except AttributeError:
        return []


@worker_process_init.connect
def _init_process(**_: Any) -> None:
    runtime()


@worker_process_shutdown.connect
def _stop_process(**_: Any) -> None:
    if _runtime is not None:
        _runtime.heartbeat.stop()


def fail_job(rt: Runtime, task: ChunkTask, reason: str) -> None:
    text = f"chunk {task.index} (frames {task.start}-{task.stop}): {reason}"
    log.error("job %s failed: %s", task.job_id, text)
    jobs.record_error(rt.client, task.job_id, task.index, (task.start, task.stop), reason)
    jobs.finish(rt.client, task.job_id, JobState.FAILED, text)
    rt.cache.drop(task.job_id)
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
    label = f"{task.job_id}#{task.index}"
    runner = (C.worker_key(rt.heartbeat.id), label)  # names the chunk it will run
    state, deliveries = jobs.begin_chunk(
        rt.client, task.job_id, task.index, runner, rt.settings.max_deliveries
    )
    if state is None:
        log.warning("job %s is unknown to Redis; dropping chunk %d", task.job_id, task.index)
        return "unknown-job"
    if state.finished:
        return f"skipped ({state.value})"
    if deliveries > rt.settings.max_deliveries:
        fail_job(
            rt,
            task,
            f"delivered {deliveries - 1} times without finishing (it may crash its worker)",
        )
        return "failed"
    rt.heartbeat.note(current=label)  # as the script wrote it: later beats keep it
    began = time.perf_counter()
    try:
        ctx = rt.cache.get(task)
        frames = task.stop - task.start
        if not chunkfile.is_committed(ctx.spec.workdir, task.index):
            values = ctx.compute(task.start, task.stop)
            meta = {"worker": rt.heartbeat.id, "device": rt.heartbeat.device}
            chunkfile.write_chunk(
                ctx.spec.workdir,
                chunkfile.ChunkResult(task.index, task.start, task.stop, values, meta),
            )
    except (PermanentChunkError, UserError) as exc:
        fail_job(rt, task, str(exc))
        return "failed"
    except (TransientChunkError, OSError) as exc:
        retries = self.request.retries
        jobs.record_error(rt.client, task.job_id, task.index, (task.start, task.stop), str(exc))
        rt.cache.drop(task.job_id)  # reopen files on the next try
        if retries < rt.settings.max_retries:
            rt.heartbeat.beat(current="")
            raise self.retry(exc=exc, countdown=rt.settings.retry_backoff * 2**retries) from exc
        fail_job(rt, task, f"{exc} (after {retries + 1} tries)")
        return "failed"
    except FramestatsError as exc:
        fail_job(rt, task, str(exc))
        return "failed"
    except Exception as exc:  # a bug or unexpected data must fail the job, not loop forever
        log.exception("chunk %s#%d crashed", task.job_id, task.index)
        fail_job(rt, task, f"{type(exc).__name__}: {exc}")
        return "failed"
    seconds = time.perf_counter() - began
    spec = ctx.spec
    nbytes = frames * spec.frame_bytes
    rt.heartbeat.count_chunk(frames, nbytes, seconds)

    def also(pipe: Any) -> None:  # the heartbeat and the latency metric ride along
        rt.heartbeat.queue_beat(pipe, current="")
        monitor.record_chunk_latency(pipe, seconds)

    # Commit, and top the window up: one finished chunk releases one pending chunk, once;
    # a delivery after a crash between taking and publishing it publishes the same one
    # (an empty take needs no mark: a redelivery takes nothing again).
    done, successor = jobs.finish_chunk(
        rt.client, task.job_id, task.index, frames, nbytes, rt.heartbeat.id, also=also
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
    try:
        spec = load_spec(str(payload.get("manifest", "")), job_id, rt.settings.data_root)
    except (PermanentChunkError, UserError) as exc:
        log.error("finalize of job %s refused: %s", job_id, exc)
        return "refused"
    state = jobs.state(rt.client, job_id)
    if state is None or state in (JobState.DONE, JobState.FAILED, JobState.CANCELLED):
        return f"skipped ({state.value if state else 'unknown job'})"
    if output_job_id(spec.output) == job_id:
        # A finalizer died after the rename: the output is whole, only bookkeeping is left.
        jobs.finish(rt.client, job_id, JobState.DONE, notify=False)
        finalize.cleanup(spec)
        jobs.notify_finished(rt.client, job_id, JobState.DONE)  # --wait sees a clean folder
        return "done"
    if len(chunkfile.committed(spec.workdir)) < spec.n_chunks:
        return "incomplete"
    token = uuid.uuid4().hex
    if not jobs.acquire_finalize(rt.client, job_id, token, rt.settings.finalize_lock_ttl):
        # Someone holds the lock; if it died, the lock expires and this retry takes over.
        raise self.retry(countdown=5)
    try:
        jobs.set_state(rt.client, job_id, JobState.FINALIZING)
        rt.cache.drop(job_id)
        try:
            finalize.finalize(spec)
        except OSError as exc:
            jobs.finish(
                rt.client, job_id, JobState.FAILED, f"cannot write output {spec.output}: {exc}"
            )
            return "failed"
        jobs.finish(rt.client, job_id, JobState.DONE, notify=False)
        finalize.cleanup(spec)
        jobs.notify_finished(rt.client, job_id, JobState.DONE)  # --wait sees a clean folder
        return "done"
    finally:
        jobs.release_finalize(rt.client, job_id, token)
