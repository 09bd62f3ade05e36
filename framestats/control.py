"""Resuming and cancelling jobs from their durable record (manifest + committed chunks)."""

from __future__ import annotations

import os
import time
from typing import Any

from . import chunkfile, connection, jobs
from . import constants as C
from .constants import MANIFEST_NAME
from .errors import FramestatsError, JobNotFound, JobStateError
from .jobdir import load_job
from .messages import JobSpec, JobState
from .output import output_job_id
from .paths import workdir_for
from .settings import Settings


def find_manifest(target: str, client: Any) -> str:
    """The manifest of a job named by id or by its output path."""
    if target.endswith((".h5", ".hdf5", ".nxs")) or os.sep in target or os.path.exists(target):
        manifest = os.path.join(workdir_for(target), MANIFEST_NAME)
        if os.path.exists(manifest):
            return manifest
        if output_job_id(target):
            raise JobNotFound(f"job for {target} is already complete (output in place)")
        raise JobNotFound(f"no unfinished job for output {target} (no {manifest})")
    data = jobs.get(client, target)
    if not data:
        raise JobNotFound(f"job {target} is not known to Redis; pass its output path instead")
    return data["manifest"]


#: States in which a job still runs (a resume would send its chunks a second time).
LIVE = (JobState.QUEUED, JobState.RUNNING, JobState.FINALIZING)


def resume(target: str, settings: Settings) -> tuple[JobSpec, int]:
    """Queue again the chunks with no committed result; returns the spec and chunks queued.

    Refused for a job that still runs: its chunks are queued or running already.
    """
    from .submission import enqueue

    client = connection.connect(settings.redis_url)
    connection.ping(client, settings.redis_url_redacted)
    manifest = find_manifest(target, client)
    spec, folder = load_job(manifest, None)
    with folder:
        if output_job_id(spec.output) == spec.job_id:
            raise JobNotFound(f"job {spec.job_id} is already complete: {spec.output}")
        state = jobs.state(client, spec.job_id)
        if state in LIVE:
            raise JobStateError(
                f"job {spec.job_id} is {state.value}; nothing to resume "
                f"(follow it with 'producer watch {spec.job_id}')"
            )
        done = chunkfile.committed(folder, spec)
    missing = [i for i in range(spec.n_chunks) if i not in done]
    enqueue(spec, settings, client, missing, sorted(done))
    if not missing:
        from .wire import publish_finalize

        publish_finalize(client, spec.job_id, spec.manifest_path, spec.queue)
    return spec, len(missing)


def cancel(job_id: str, settings: Settings) -> bool:
    """Mark a job cancelled; queued chunks are skipped, running ones finish, no output is
    published. False if it had already finished; JobStateError while its output is being
    renamed into place (too late)."""
    client = connection.connect(settings.redis_url)
    connection.ping(client, settings.redis_url_redacted)
    if not jobs.get(client, job_id):
        raise JobNotFound(f"job {job_id} is not known to Redis")
    if jobs.finish(client, job_id, JobState.CANCELLED, "cancelled by user"):
        return True
    state = jobs.state(client, job_id)
    if state is not None and not state.finished:
        raise JobStateError(f"job {job_id} is publishing its output; too late to cancel")
    return False


def owner_of(workdir: str) -> str | None:
    """The id of the job whose folder ``workdir`` is (None: no readable manifest)."""
    try:
        spec, folder = load_job(os.path.join(workdir, MANIFEST_NAME), None)
    except (FramestatsError, OSError):
        return None
    folder.close()
    return spec.job_id


def stop(client: Any, job_id: str, reason: str, wait: float) -> None:
    """End a live job before its folder is replaced: cancel it, then wait (up to ``wait``
    seconds) until no worker runs one of its chunks or its finalize step.

    A chunk still running after that commits into the folder it opened, which is no
    longer the job folder: nothing of it reaches the new job.
    """
    from . import monitor

    if not jobs.finish(client, job_id, JobState.CANCELLED, reason):
        state = jobs.state(client, job_id)
        if state is not None and not state.finished:  # publishing: let it finish
            _wait_until(lambda: bool((jobs.state(client, job_id) or JobState.DONE).finished), wait)
    mine = f"{job_id}#"

    def quiet() -> bool:
        running = any(w["current"].startswith(mine) for w in monitor.workers(client, 3600.0))
        return not running and not client.exists(C.job_key(job_id, C.JobPart.FINALIZE_LOCK))

    _wait_until(quiet, wait)


def _wait_until(done: Any, timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return True
