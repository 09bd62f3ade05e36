"""(a): the project end to end, through its real CLI and real ``worker`` processes.

Workers are started once (``python -m worker --device cpu --concurrency N --queues Q``)
and kept warm across repetitions; every run is ``producer submit ... --wait`` on a
fresh queue-free job, timed from the command's start to its exit (output complete).
Also here: the producer's own costs (``--help``, ``status``, planning and publishing
10^5 chunks).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any

import h5py
import numpy as np

from framestats import constants as C

#: Environment of every benchmark process: unbuffered logs, the caller's Redis.
BASE_ENV = {"PYTHONUNBUFFERED": "1"}


def _env(redis_url: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    # Bytecode is cached as in any installed copy (a sandbox may switch that off).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, **BASE_ENV, "REDIS_URL": redis_url, **(extra or {})}


@dataclass
class Workers:
    """One ``worker`` node with ``processes`` pool processes on queue ``queue``."""

    proc: subprocess.Popen[bytes]
    name: str
    queue: str
    processes: int
    log_path: str

    def pids(self) -> list[int]:
        """The node's process and its pool processes (for CPU accounting)."""
        return [self.proc.pid, *children(self.proc.pid)]

    def alive_pids(self, client: Any) -> list[int]:
        ids = client.zrange(C.WORKERS_INDEX, 0, -1)
        return [int(i.rsplit(":", 1)[1]) for i in ids if i.startswith(self.name + "@")]

    def wait_ready(self, client: Any, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"worker exited with {self.proc.returncode}; see {self.log_path}"
                )
            if len(self.alive_pids(client)) >= self.processes:
                return
            time.sleep(0.1)
        raise TimeoutError(f"worker {self.name} not ready after {timeout} s; see {self.log_path}")

    def stop(self, client: Any | None = None) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        if client is not None:  # forget this node's heartbeats (the index is shared)
            for worker_id in client.zrange(C.WORKERS_INDEX, 0, -1):
                if worker_id.startswith(self.name + "@"):
                    client.zrem(C.WORKERS_INDEX, worker_id)
                    client.delete(C.worker_key(worker_id))


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as fh:
            return [int(x) for x in fh.read().split()]
    except OSError:
        return []


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds used so far by ``pids`` (Linux /proc; 0 elsewhere).

    Unlike wall time this does not grow when other people's jobs share the cores, so
    (a)'s CPU minus (b)'s is the queue's own cost even on a busy machine.
    """
    ticks = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return ticks / os.sysconf("SC_CLK_TCK")


def start_workers(
    redis_url: str, processes: int, log_dir: str, env: dict[str, str] | None = None
) -> Workers:
    name = f"bench{uuid.uuid4().hex[:6]}"
    queue = f"bench-{name}"
    log_path = os.path.join(log_dir, f"{name}.log")
    argv = [sys.executable, "-m", "worker", "--device", "cpu", "--concurrency", str(processes)]
    argv += ["--queues", queue, "--name", name, "--loglevel", "warning"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            argv,
            env=_env(redis_url, env),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Workers(proc, name, queue, processes, log_path)


def producer(redis_url: str, *args: str, timeout: float = 600) -> tuple[float, str]:
    """Run ``producer ARGS``; returns (wall seconds, stdout). Raises on a non-zero exit."""
    t = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "producer", *args],
        env=_env(redis_url),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    seconds = time.perf_counter() - t
    if out.returncode != 0:
        raise RuntimeError(
            f"producer {' '.join(args)} exited {out.returncode}: {out.stderr[-2000:]}"
        )
    return seconds, out.stdout


def submit_wait(
    redis_url: str, workers: Workers, path: str, mask: str, output: str
) -> tuple[np.ndarray, dict[str, float]]:
    """(a) once: the sums, and seconds: ``wall`` (the command, start to exit) and ``job``
    (from the job's creation in Redis to its end: without the CLI's start-up and checks).
    """
    from framestats import connection, jobs

    args: tuple[str, ...] = ("submit", path, "--mask", mask, "--output", output)
    args += ("--stats", "sum", "--queue", workers.queue, "--wait", "--overwrite")
    pids = workers.pids()
    cpu = cpu_seconds(pids)
    seconds, stdout = producer(redis_url, *args)
    cpu = cpu_seconds(pids) - cpu
    client = connection.connect(redis_url)
    try:
        job_id = stdout.split()[0]
        job = jobs.get(client, job_id) or {}
        jobs.delete(client, job_id)  # leave the database as it was
    finally:
        client.close()
    with h5py.File(output, "r") as f:
        sums = f["results/sum"][:, 0]
    times = {
        "wall": seconds,
        "job": float(job["finished"]) - float(job["submitted"]),
        "cpu": cpu,
    }
    return sums, times


def cli_seconds(redis_url: str, *args: str) -> float:
    return producer(redis_url, *args)[0]


def plan_publish(redis_url: str, frames: int, folder: str) -> dict[str, float]:
    """Seconds to plan and publish a job of ``frames`` one-frame chunks (no worker runs it).

    The input is a tiny-frame (4x4) contiguous dataset, so what is timed is the
    producer's per-chunk work: the plan, the manifest, the pending list in Redis and the
    first window of Celery messages. Measured in this process (``prepare``, write,
    ``enqueue``) and as the whole ``producer submit`` command.
    """
    from framestats import connection
    from framestats.settings import Settings
    from framestats.submission import (
        SubmitRequest,
        enqueue,
        prepare,
        replace_workdir,
        write_workdir,
    )

    path = os.path.join(folder, f"tiny-{frames}.h5")
    mask = os.path.join(folder, "tiny-mask.npy")
    if not os.path.exists(path):
        with h5py.File(path + ".tmp", "w") as f:
            f.create_dataset("/entry/data/data", data=np.ones((frames, 4, 4), np.uint16))
        os.replace(path + ".tmp", path)
    np.save(mask, np.ones((4, 4), bool))
    settings = Settings.from_env({"REDIS_URL": redis_url})
    client = connection.connect(redis_url)
    out: dict[str, float] = {}
    queue = f"bench-plan-{uuid.uuid4().hex[:6]}"
    output = os.path.join(folder, "tiny.reduced.h5")
    request = SubmitRequest(
        inputs=(path,), mask=mask, output=output, chunk_frames=1, queue=queue, overwrite=True
    )
    t0 = time.perf_counter()
    prepared = prepare(request, settings)
    t1 = time.perf_counter()
    replace_workdir(client, settings, prepared.spec)
    write_workdir(prepared.spec, prepared.labels)
    t2 = time.perf_counter()
    enqueue(prepared.spec, settings, client, range(prepared.spec.n_chunks))
    t3 = time.perf_counter()
    out.update(chunks=prepared.spec.n_chunks, prepare=t1 - t0, write=t2 - t1, enqueue=t3 - t2)
    out["in_process"] = t3 - t0
    _forget(client, prepared.spec.job_id, queue)
    seconds, stdout = producer(
        redis_url,
        "submit",
        path,
        "--mask",
        mask,
        "--output",
        output,
        "--chunk-frames",
        "1",
        "--queue",
        queue,
        "--overwrite",
    )
    out["cli"] = seconds
    _forget(client, stdout.split()[0], queue)
    return out


def _forget(client: Any, job_id: str, queue: str) -> None:
    """Remove a job that no worker will run, and its queued messages."""
    from framestats import jobs

    jobs.delete(client, job_id)
    client.delete(queue)
