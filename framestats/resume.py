"""Resuming and cancelling jobs from their durable record (manifest + committed chunks)."""

from __future__ import annotations

import os
from typing import Any

from . import chunkfile, connection, jobs
from .constants import MANIFEST_NAME
from .errors import JobNotFound
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


def resume(target: str, settings: Settings) -> tuple[JobSpec, int]:
    """Queue again the chunks with no committed result; returns the spec and chunks queued."""
    from .submit import enqueue

    client = connection.connect(settings.redis_url)
    connection.ping(client, settings.redis_url_redacted)
    manifest = find_manifest(target, client)
    spec = JobSpec.load(manifest)
    if output_job_id(spec.output) == spec.job_id:
        raise JobNotFound(f"job {spec.job_id} is already complete: {spec.output}")
    done = chunkfile.committed(spec.workdir)
    missing = [i for i in range(spec.n_chunks) if i not in done]
    enqueue(spec, settings, client, missing, sorted(done))
    if not missing:
        from .wire import publish_finalize

        publish_finalize(client, spec.job_id, spec.manifest_path, spec.queue)
    return spec, len(missing)


def cancel(job_id: str, settings: Settings) -> bool:
    """Mark a job cancelled; queued chunks are skipped, running ones finish. False if already finished."""
    client = connection.connect(settings.redis_url)
    connection.ping(client, settings.redis_url_redacted)
    if not jobs.get(client, job_id):
        raise JobNotFound(f"job {job_id} is not known to Redis")
    return jobs.finish(client, job_id, JobState.CANCELLED, "cancelled by user")
