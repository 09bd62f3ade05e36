"""Running the ``producer`` command line in tests and reading what it says."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from typing import Any

from framestats import constants as C
from framestats.chunkfile import chunk_index
from tests.support.workers import WorkerProcess, run_producer


def ok(res: subprocess.CompletedProcess[str], *logs: WorkerProcess) -> str:
    assert res.returncode == 0, res.stdout + res.stderr + "".join(w.log() for w in logs)
    return res.stdout


def as_json(redis_url: str, *args: str) -> Any:
    return json.loads(ok(run_producer(redis_url, *args, "--json")))


def submit(redis_url: str, data: str, mask: str, out: str, queue: str, *extra: str, **env: Any):
    res = run_producer(
        redis_url,
        "submit",
        data,
        "--mask",
        mask,
        "--output",
        out,
        "--queue",
        queue,
        *extra,
        env=env,
    )
    return ok(res).strip().splitlines()[0]


def drained(depth: dict[str, int]) -> bool:
    """No message of the queue waits or is reserved."""
    return depth["waiting"] == 0 and depth["reserved"] == 0


def running(client: Any, job_id: str) -> bool:
    """Whether a live worker process runs a chunk of the job (its heartbeat says so)."""
    from framestats import monitor

    return any(w["current"].startswith(f"{job_id}#") for w in monitor.workers(client, 60.0))


def committed_files(out: str) -> set[str]:
    folder = os.path.join(out + C.WORKDIR_SUFFIX, C.CHUNKS_DIR)
    return (
        {n for n in os.listdir(folder) if chunk_index(n) is not None}
        if os.path.isdir(folder)
        else set()
    )


def worker_rows(redis_url: str, worker: WorkerProcess) -> list[dict[str, Any]]:
    rows = as_json(redis_url, "workers")["workers"]
    return [w for w in rows if w["name"].startswith(worker.name + "@")]


def new_queue() -> str:
    return f"q-mon-{uuid.uuid4().hex[:8]}"
