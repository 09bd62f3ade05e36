"""Fault-injection helpers: jobs, killers, bit-for-bit comparison (the private
redis-server is ``tests.faults.private_redis``).

Every process these helpers start (workers) runs in a session of its own
and is stopped by its pid or process group, never by name.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import h5py
import numpy as np
import redis

from framestats import constants as C
from framestats import jobs
from framestats.chunkfile import chunk_index
from tests.support.jobfiles import chunk_file, chunk_meta
from tests.support.workers import WorkerProcess, run_producer, start_worker

#: The job every fault test runs: gzip frames, so a chunk takes long enough to be
#: killed in the middle; all six statistics over 32 regions.
N_FRAMES = 2560
HEIGHT, WIDTH = 256, 256
FILE_CHUNK = 8
TASK_FRAMES = 128
N_REGIONS = 32
STATS = "sum,mean,count,min,max,std"


def job_args(*extra: str) -> tuple[str, ...]:
    """The fault tests' job options (the reference run uses the same)."""
    return ("--stats", STATS, "--chunk-frames", str(TASK_FRAMES), *extra)


#: Attributes that differ between two runs of the same job by design (the NeXus root's
#: file_name and file_time: the output's name and end time).
RUN_SPECIFIC_ATTRS = frozenset(
    {"job_id", "start_time", "end_time", "workers", "file_name", "file_time"}
)
#: NeXus fields that hold the run's times; and its provenance (the root attributes as
#: JSON), compared without the run-specific ones (worker/output.py).
RUN_SPECIFIC_DATASETS = frozenset({"entry/start_time", "entry/end_time", "entry/process/date"})
PROVENANCE_NOTE = "entry/process/configuration/data"

#: Worker settings for fault tests: fast redelivery so the suite stays cheap. The
#: production bound (45 s + 5 s) is measured by test_production_redelivery_bound.
FAULT_ENV = {
    "FRAMESTATS_WINDOW": "4",  # 4 of the 20 chunks queued at once: top-ups happen under faults
    "FRAMESTATS_VISIBILITY_TIMEOUT": "8",
    "FRAMESTATS_RESTORE_INTERVAL": "1",
    "FRAMESTATS_FINALIZE_LOCK_TTL": "4",
    "FRAMESTATS_MAX_RETRIES": "1",
    "FRAMESTATS_RETRY_BACKOFF": "0.2",
}


@dataclass
class Output:
    """An output file's datasets (exact arrays) and root attributes."""

    datasets: dict[str, np.ndarray]
    attrs: dict[str, Any]


def read_output(path: str) -> Output:
    datasets: dict[str, np.ndarray] = {}

    def walk(group: h5py.Group, prefix: str) -> None:
        # Every name, hard links included (visititems names a linked dataset only once).
        for key, obj in group.items():
            if isinstance(obj, h5py.Group):
                walk(obj, f"{prefix}{key}/")
            else:
                datasets[prefix + key] = np.asarray(obj[()])  # strings too

    with h5py.File(path, "r") as f:
        walk(f, "")
        attrs = {k: f.attrs[k] for k in f.attrs}
    return Output(datasets, attrs)


def assert_identical(path: str, reference: Output) -> None:
    """Bit for bit: every dataset's dtype, shape and bytes; every attribute but run ids/times."""
    got = read_output(path)
    assert sorted(got.datasets) == sorted(reference.datasets)
    for name, ref in reference.datasets.items():
        arr = got.datasets[name]
        if name in RUN_SPECIFIC_DATASETS:
            continue
        if name == PROVENANCE_NOTE:
            mine, theirs = (
                {k: v for k, v in json.loads(a.item()).items() if k not in RUN_SPECIFIC_ATTRS}
                for a in (arr, ref)
            )
            assert mine == theirs, "the provenance differs from the fault-free run's"
            continue
        assert arr.dtype == ref.dtype and arr.shape == ref.shape, name
        assert arr.tobytes() == ref.tobytes(), f"{name} differs from the fault-free run"
    keys = set(reference.attrs) - RUN_SPECIFIC_ATTRS
    assert set(got.attrs) - RUN_SPECIFIC_ATTRS == keys
    for key in keys:
        assert str(got.attrs[key]) == str(reference.attrs[key]), key


@dataclass
class Job:
    """A submitted job, watched through the private Redis."""

    client: redis.Redis
    job_id: str
    output: str
    queue: str

    @property
    def workdir(self) -> str:
        return self.output + C.WORKDIR_SUFFIX

    def data(self) -> dict[str, str]:
        return self.client.hgetall(C.job_key(self.job_id))

    def state(self) -> str | None:
        return self.client.hget(C.job_key(self.job_id), "state")

    def committed(self) -> set[int]:
        folder = os.path.join(self.workdir, C.CHUNKS_DIR)
        try:
            return {i for i in map(chunk_index, os.listdir(folder)) if i is not None}
        except FileNotFoundError:
            return set()

    def chunk_meta(self, index: int) -> dict[str, Any]:
        return chunk_meta(self.workdir, index)

    def deliveries(self) -> dict[int, int]:
        """Chunk index -> deliveries so far; once the job has ended (its attempts hash
        dropped), only the chunks delivered more than once (``jobs.redelivered``)."""
        raw = self.client.hgetall(C.job_key(self.job_id, C.JobPart.ATTEMPTS))
        if not raw and self.state() in ("done", "failed", "cancelled"):
            return jobs.redelivered(self.data())
        return {int(k): int(v) for k, v in raw.items()}

    def wait(
        self, states: tuple[str, ...] = ("done", "failed", "cancelled"), timeout: float = 90.0
    ) -> dict[str, str]:
        """Poll until the job reaches one of ``states``; returns its hash."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            data = self.data()
            if data.get("state") in states:
                return data
            time.sleep(0.05)
        raise TimeoutError(f"job {self.job_id} still {self.data()} after {timeout} s")


def submit(
    url: str,
    client: redis.Redis,
    data: str,
    mask: str,
    output: str,
    queue: str,
    *extra: str,
    env: dict[str, Any] | None = None,
) -> Job:
    """``producer submit`` without --wait; returns the job."""
    res = run_producer(
        url, "submit", data, "--mask", mask, "--output", output, "--queue", queue, *extra, env=env
    )
    assert res.returncode == 0, res.stderr
    return Job(client, res.stdout.strip().splitlines()[0], output, queue)


def running_chunks(client: redis.Redis, worker: WorkerProcess, job_id: str) -> dict[int, int]:
    """pid -> chunk index, for the pool processes of ``worker`` that run a chunk of the job."""
    out: dict[int, int] = {}
    for wid in client.zrange(C.WORKERS_INDEX, 0, -1):
        if not wid.startswith(worker.name + "@"):
            continue
        current = client.hget(C.worker_key(wid), "current") or ""
        if current.startswith(job_id + "#"):
            out[int(wid.rsplit(":", 1)[1])] = int(current.split("#", 1)[1])
    return out


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[-1].split()[0] == "Z"
    except OSError:
        return True


def owned_by(pid: int, worker: WorkerProcess) -> bool:
    """True when ``pid`` is alive and in the worker's process group (ours to kill)."""
    try:
        return os.getpgid(pid) == worker.proc.pid and not _zombie(pid)
    except ProcessLookupError:
        return False


def kill_mid_chunk(
    client: redis.Redis,
    worker: WorkerProcess,
    job: Job,
    sig: int = signal.SIGKILL,
    timeout: float = 60.0,
    skip: Callable[[int], bool] = lambda _index: False,
) -> tuple[int, int]:
    """Send ``sig`` to a pool process while it computes a chunk; returns (pid, chunk index).

    "Mid-chunk" is checked: the chunk has started (heartbeat) and its result is not
    committed at the moment of the kill.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid, index in running_chunks(client, worker, job.job_id).items():
            if skip(index) or not owned_by(pid, worker):
                continue
            if os.path.exists(chunk_file(job.workdir, index)):
                continue
            os.kill(pid, sig)
            return pid, index
        time.sleep(0.01)
    raise TimeoutError(f"no chunk of job {job.job_id} seen running:\n{worker.log()}")


def full_log(worker: WorkerProcess) -> str:
    with open(worker.log_path, encoding="utf-8", errors="replace") as fh:
        return fh.read()


def wait_pid_gone(pid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # A killed child stays a zombie until its parent reaps it; that counts as gone.
        if _zombie(pid):
            return
        time.sleep(0.02)
    raise TimeoutError(f"process {pid} still alive")


@dataclass
class OutputWatch:
    """Checks, as often as it can, that the output path never holds a partial file."""

    path: str
    seen: int = 0
    problems: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _check(self) -> None:
        while not self._stop.is_set():
            if os.path.exists(self.path):
                try:
                    with h5py.File(self.path, "r") as f:
                        if "job_id" not in f.attrs or "results" not in f:
                            self.problems.append("output without job_id or /results")
                        else:
                            for name in f["results"]:
                                f["results"][name][()]
                    self.seen += 1
                except Exception as exc:  # anything unreadable is a partial file
                    self.problems.append(f"{type(exc).__name__}: {exc}")
            time.sleep(0.005)

    def __enter__(self) -> OutputWatch:
        self._thread = threading.Thread(target=self._check, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)


@contextlib.contextmanager
def workers(
    url: str, log_dir: str, queue: str, n: int = 1, concurrency: int = 2, **env: Any
) -> Iterator[list[WorkerProcess]]:
    """``n`` started and ready workers on ``queue``; stopped (then killed) on exit."""
    started: list[WorkerProcess] = []
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        for _ in range(n):
            started.append(start_worker(url, log_dir, queue, concurrency=concurrency, env=env))
        for w in started:
            w.wait_ready(client, processes=concurrency)
        yield started
    finally:
        for w in started:
            w.stop(timeout=20)
        client.close()


def start_ready(
    url: str, log_dir: str, queue: str, concurrency: int = 2, **env: Any
) -> WorkerProcess:
    """One more worker, ready (for tests that start workers mid-job)."""
    w = start_worker(url, log_dir, queue, concurrency=concurrency, env=env)
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        w.wait_ready(client, processes=concurrency)
    finally:
        client.close()
    return w


def kill_whole_worker(
    client: redis.Redis, worker: WorkerProcess, job: Job, timeout: float = 60.0
) -> tuple[dict[int, int], float]:
    """kill -9 the worker's whole process group while it computes chunks of the job.

    Returns the chunks it held uncommitted (index -> deliveries so far) and the time
    of the kill (time.monotonic()).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = {
            index
            for pid, index in running_chunks(client, worker, job.job_id).items()
            if owned_by(pid, worker) and not os.path.exists(chunk_file(job.workdir, index))
        }
        if running:
            worker.kill()
            killed_at = time.monotonic()
            lost = {i for i in running if not os.path.exists(chunk_file(job.workdir, i))}
            seen = job.deliveries()
            return {i: seen.get(i, 0) for i in lost}, killed_at
        time.sleep(0.01)
    raise TimeoutError(f"no chunk of job {job.job_id} seen running:\n{worker.log()}")


def wait_rerun(job: Job, lost: dict[int, int], timeout: float) -> dict[int, float]:
    """When (time.monotonic()) each lost chunk was delivered again."""
    assert lost, "the kill lost no chunk"
    deadline = time.monotonic() + timeout
    seen: dict[int, float] = {}
    while time.monotonic() < deadline and len(seen) < len(lost):
        now = time.monotonic()
        deliveries = job.deliveries()
        for index, before in lost.items():
            if index not in seen and deliveries.get(index, 0) > before:
                seen[index] = now
        time.sleep(0.05)
    missing = set(lost) - set(seen)
    assert not missing, f"chunks {sorted(missing)} not delivered again within {timeout} s"
    return seen


def find_mid_chunk(
    client: redis.Redis, worker: WorkerProcess, job: Job, timeout: float = 60.0
) -> tuple[int, int]:
    """(pid, chunk index) of a pool process computing an uncommitted chunk of the job."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid, index in running_chunks(client, worker, job.job_id).items():
            if owned_by(pid, worker) and not os.path.exists(chunk_file(job.workdir, index)):
                return pid, index
        time.sleep(0.01)
    raise TimeoutError(f"no chunk of job {job.job_id} seen running:\n{worker.log()}")


def pool_pids(client: redis.Redis, worker: WorkerProcess) -> list[int]:
    """Live pool processes of the worker (from their heartbeats)."""
    return [pid for pid in worker.pids(client) if owned_by(pid, worker)]


def emulate_death_after_take(client: redis.Redis, job_id: str, index: int) -> list[int]:
    """Leave Redis as a process that finished chunk ``index``, took the next pending chunk
    for the queue window and died before publishing it would have left it."""
    taken = jobs.take_successor(client, job_id, index)
    assert taken is not None
    return taken
