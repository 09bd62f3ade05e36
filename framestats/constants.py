"""Names shared by the producer and the workers: Redis keys, queues, task names, defaults.

Every Redis key the project writes starts with ``KEY_PREFIX``; nothing else in the
code base spells a key by hand.
"""

from __future__ import annotations

from enum import StrEnum

#: Statistics a job can ask for, in the order they are written to the output.
STATS: tuple[str, ...] = ("sum", "mean", "count", "min", "max", "std")
#: Statistics computed when ``--stats`` is not given.
DEFAULT_STATS: tuple[str, ...] = ("sum", "mean")
#: Dataset path of the NeXus / Dectris Eiger convention, preferred when present.
NEXUS_DATASET = "/entry/data/data"
#: Queue that chunk tasks go to unless ``--queue`` names another.
DEFAULT_QUEUE = "framestats"
#: Redis URL used when ``REDIS_URL`` is unset.
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"

#: Celery task names (stable: they travel inside messages).
TASK_REDUCE = "framestats.reduce_chunk"
TASK_FINALIZE = "framestats.finalize_job"

#: Prefix of every Redis key of this project.
KEY_PREFIX = "fs:"
#: Sorted set of job ids scored by submit time.
JOBS_INDEX = KEY_PREFIX + "jobs"
#: Set of the ids of jobs not yet finished (what the workers' lost-message sweep looks at).
ACTIVE_JOBS = KEY_PREFIX + "jobs:active"
#: Held (SET NX PX) by the worker process that runs this round of the lost-message sweep.
SWEEP_LOCK = KEY_PREFIX + "sweep"
#: Sorted set of worker ids scored by last heartbeat time.
WORKERS_INDEX = KEY_PREFIX + "workers"
#: Hash of totals over all jobs (frames, bytes, chunks committed; chunk errors), for metrics.
METRICS_KEY = KEY_PREFIX + "metrics"
#: Hash of the chunk latency histogram: bucket upper bound -> count, plus sum and count.
LATENCY_KEY = KEY_PREFIX + "metrics:latency"

#: Name of the folder beside the output that holds a job's manifest and committed chunks.
WORKDIR_SUFFIX = ".parts"
#: File names inside the job folder.
MANIFEST_NAME = "manifest.json"
MASK_NAME = "mask.npy"
#: Masks passed as arrays (the Python API), kept in the job folder as they were given:
#: ``mask-regions.npy``, ``mask-exclude-1.npy``, ...
ARRAY_MASK_NAME = "mask-{role}.npy"
CHUNKS_DIR = "chunks"


class JobPart(StrEnum):
    """The keys of one job besides its hash: ``job_key(job_id, JobPart.DONE)``."""

    #: Set of chunk indices whose result is committed.
    DONE = "done"
    #: List of chunk indices not yet published (the window is topped up from it).
    PENDING = "pending"
    #: Hash chunk index -> deliveries seen, to stop a chunk that kills its worker.
    ATTEMPTS = "attempts"
    #: List of recent chunk errors (JSON), newest first.
    ERRORS = "errors"
    #: Hash worker id -> frames computed for this job (per-worker share).
    WORKERS = "workers"
    #: Lock held by the one process that writes the job's output.
    FINALIZE_LOCK = "finalize-lock"
    #: List the job's final state is pushed to, so that ``--wait`` wakes at once.
    EVENTS = "events"
    #: Hash chunk index -> the pending chunk its completion released ('+' once published).
    SUCCESSORS = "successors"
    #: Hash chunk index (or "finalize") -> when the sweep first found no message for it.
    MISSING = "missing"


def job_key(job_id: str, part: JobPart | None = None) -> str:
    """The hash with the job's parameters, state and counters, or one of its other keys."""
    return f"{KEY_PREFIX}job:{job_id}" + (f":{part.value}" if part else "")


def job_keys(job_id: str) -> list[str]:
    """Every key that belongs to one job."""
    return [job_key(job_id), *(job_key(job_id, part) for part in JobPart)]


def worker_key(worker_id: str) -> str:
    """Hash with one worker process's heartbeat and counters (expires when it stops)."""
    return f"{KEY_PREFIX}worker:{worker_id}"


def worker_queues(field: str | None) -> list[str]:
    """The queues a heartbeat's ``queues`` field names (comma-separated; empty: not said)."""
    return [q for q in (field or "").split(",") if q]


def takes_from(queues: list[str], queue: str) -> bool:
    """Whether a worker taking from ``queues`` takes from ``queue``; one that does not say
    (an older worker) counts for every queue."""
    return not queues or queue in queues
