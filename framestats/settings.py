"""One typed configuration object; the environment is read here and nowhere else."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .constants import DEFAULT_REDIS_URL
from .redaction import redact_url

__all__ = ["Settings", "parse_duration", "redact_url"]

_DURATION = re.compile(r"\s*(?P<n>\d+(?:\.\d*)?|\.\d+)\s*(?P<unit>[smhdw]?)\s*", re.I)
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """Seconds in ``90``, ``90s``, ``30m``, ``12h``, ``7d`` or ``2w``; ValueError otherwise."""
    m = _DURATION.fullmatch(text)
    if m is None:
        raise ValueError(f"not a duration: {text!r} (examples: 90s, 30m, 12h, 7d)")
    return float(m["n"]) * _UNIT_SECONDS[m["unit"].lower()]


def _number(env: Mapping[str, str], name: str, default: float, kind: type = float) -> Any:
    """``kind(env[name])``, or ``default`` when unset; one clear error for a bad value."""
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return kind(raw)
    except ValueError as exc:
        noun = "an integer" if kind is int else "a number"
        raise ValueError(f"{name} must be {noun}, got {raw!r}") from exc


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    return int(_number(env, name, default, int))


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    return float(_number(env, name, default, float))


def _duration(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return round(parse_duration(raw))
    except ValueError as exc:
        raise ValueError(
            f"{name} must be a duration (seconds, or 12h, 7d...), got {raw!r}"
        ) from exc


def _threads(env: Mapping[str, str], name: str) -> int | None:
    """A thread count, None for "auto" (or unset)."""
    raw = (env.get(name) or "").strip().lower()
    return None if raw in ("", "auto") else _int(env, name, 0)


def _switch(env: Mapping[str, str], name: str) -> bool | None:
    """True/False from 1/on/yes/true and 0/off/no/false; None for "auto" (or unset)."""
    raw = (env.get(name) or "").strip().lower()
    if raw in ("", "auto"):
        return None
    if raw in ("1", "on", "yes", "true"):
        return True
    if raw in ("0", "off", "no", "false"):
        return False
    raise ValueError(f"{name} must be auto, on or off, got {env.get(name)!r}")


@dataclass(frozen=True)
class Settings:
    """Every tunable of the system, with its default.

    Environment variables (all optional): ``REDIS_URL``, ``DATA_ROOT`` (colon-separated
    folders workers may read and write), ``FRAMESTATS_WINDOW``, ``FRAMESTATS_TASK_MIB``,
    ``FRAMESTATS_VISIBILITY_TIMEOUT``, ``FRAMESTATS_MAX_DELIVERIES``,
    ``FRAMESTATS_MAX_RETRIES``, ``FRAMESTATS_RETRY_BACKOFF``, ``FRAMESTATS_HEARTBEAT``,
    ``FRAMESTATS_WORKER_TIMEOUT``, ``FRAMESTATS_FINALIZE_LOCK_TTL``, ``FRAMESTATS_DEVICE``,
    ``FRAMESTATS_PREFETCH_MULTIPLIER``, ``FRAMESTATS_MAX_REGIONS``,
    ``FRAMESTATS_MAX_OUTPUT_GIB``, ``FRAMESTATS_JOB_TTL``, ``FRAMESTATS_REFUSED_WRITES_WAIT``,
    ``FRAMESTATS_TORCH_THREADS``, ``FRAMESTATS_GPU_DECODE``, ``FRAMESTATS_DECODE_THREADS``,
    ``FRAMESTATS_PREFETCH``.
    """

    #: Broker and job-state store; may carry a password (redis://:pw@host/0, rediss://).
    redis_url: str = DEFAULT_REDIS_URL
    #: Folders workers may open; empty means unrestricted (the worker warns at start).
    data_root: tuple[str, ...] = ()
    #: Chunk tasks kept queued per job; workers top the window up as chunks finish.
    window: int = 64
    #: Largest uncompressed bytes per chunk task when --chunk-frames is not given (a
    #: small job gets smaller tasks, so every live worker process has some:
    #: ``framestats.plan.task_bytes_for``).
    task_bytes: int = 256 * 1024 * 1024
    #: Seconds before Redis hands an unacknowledged message to another worker.
    visibility_timeout: int = 45
    #: How often (s) workers sweep for unacknowledged messages to restore.
    restore_interval: float = 5.0
    #: Deliveries of one chunk (crash-loop guard) before the job fails naming it.
    max_deliveries: int = 5
    #: Retries of a chunk after a transient error, with exponential backoff.
    max_retries: int = 3
    #: First retry delay in seconds (doubles each retry).
    retry_backoff: float = 1.0
    #: Seconds between worker heartbeats.
    heartbeat: float = 5.0
    #: A worker with no heartbeat for this long leaves `producer workers`.
    worker_timeout: float = 30.0
    #: Seconds a finalize lock outlives a finalizer that died holding it.
    finalize_lock_ttl: int = 120
    #: Device for the kernel: auto, cpu, cuda, cuda:N.
    device: str = "auto"
    #: Messages a worker node reserves per pool process (Celery's prefetch multiplier).
    #: 1: a node never holds a chunk another node could start sooner, and a node that
    #: dies holds only what it runs. 2: the next chunk is already in hand when a process
    #: finishes one (a shorter hand-over, at the price of both).
    prefetch_multiplier: int = 1
    #: Most regions (the largest mask label) a job may have: each is a column of every
    #: statistic. A stray label (one pixel labelled 2e9) would otherwise size the outputs.
    max_regions: int = 65_535
    #: Largest estimated output (frames x regions x statistics x 8 bytes, plus the largest
    #: task's result) a submit accepts; ``FRAMESTATS_MAX_OUTPUT_GIB`` in GiB.
    max_output_bytes: int = 256 * 2**30
    #: Seconds a finished, failed or cancelled job keeps its Redis keys (``producer prune``
    #: drops them sooner); 0 keeps them until pruned.
    job_ttl: int = 7 * 86400
    #: Seconds a worker waits, in place, for a Redis that refuses writes (OOM, MISCONF,
    #: READONLY) before it ends the chunk's delivery (the chunk runs again later).
    refused_writes_wait: float = 60.0
    #: Threads of torch's CPU operations in each worker process (one process per core).
    torch_threads: int = 1
    #: GPU workers decode Bitshuffle-LZ4 chunks on the device (nvCOMP): auto (where
    #: nvCOMP loads), on (a GPU worker without it fails the job's chunks), off.
    gpu_decode: str = "auto"
    #: Threads decoding compressed chunks in each worker process; 0: HDF5's filters
    #: decode; None: one per core the process may use on a GPU worker, one on a CPU worker.
    decode_threads: int | None = None
    #: Read the next block while the current one is reduced (None: on GPU workers only).
    prefetch: bool | None = None

    def __post_init__(self) -> None:
        if self.gpu_decode not in ("auto", "on", "off"):
            raise ValueError(
                f"FRAMESTATS_GPU_DECODE must be auto, on or off, got {self.gpu_decode!r}"
            )
        if self.prefetch_multiplier < 1:  # Celery reads 0 as "no limit"
            raise ValueError(
                f"FRAMESTATS_PREFETCH_MULTIPLIER must be at least 1, got {self.prefetch_multiplier}"
            )
        if not 1 <= self.max_regions <= 2**31 - 1:  # labels are stored as int32
            raise ValueError(
                f"FRAMESTATS_MAX_REGIONS must be between 1 and {2**31 - 1}, got {self.max_regions}"
            )
        if self.max_output_bytes <= 0:
            raise ValueError("FRAMESTATS_MAX_OUTPUT_GIB must be positive")
        if self.job_ttl < 0:
            raise ValueError(f"FRAMESTATS_JOB_TTL must not be negative, got {self.job_ttl}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Settings from ``env`` (default ``os.environ``), then explicit overrides."""
        env = os.environ if env is None else env
        roots = tuple(p for p in env.get("DATA_ROOT", "").split(":") if p)
        values: dict[str, object] = dict(
            redis_url=env.get("REDIS_URL") or DEFAULT_REDIS_URL,
            data_root=roots,
            window=_int(env, "FRAMESTATS_WINDOW", cls.window),
            task_bytes=_int(env, "FRAMESTATS_TASK_MIB", cls.task_bytes >> 20) << 20,
            visibility_timeout=_int(env, "FRAMESTATS_VISIBILITY_TIMEOUT", cls.visibility_timeout),
            restore_interval=_float(env, "FRAMESTATS_RESTORE_INTERVAL", cls.restore_interval),
            max_deliveries=_int(env, "FRAMESTATS_MAX_DELIVERIES", cls.max_deliveries),
            max_retries=_int(env, "FRAMESTATS_MAX_RETRIES", cls.max_retries),
            retry_backoff=_float(env, "FRAMESTATS_RETRY_BACKOFF", cls.retry_backoff),
            heartbeat=_float(env, "FRAMESTATS_HEARTBEAT", cls.heartbeat),
            worker_timeout=_float(env, "FRAMESTATS_WORKER_TIMEOUT", cls.worker_timeout),
            finalize_lock_ttl=_int(env, "FRAMESTATS_FINALIZE_LOCK_TTL", cls.finalize_lock_ttl),
            device=env.get("FRAMESTATS_DEVICE") or cls.device,
            prefetch_multiplier=_int(
                env, "FRAMESTATS_PREFETCH_MULTIPLIER", cls.prefetch_multiplier
            ),
            max_regions=_int(env, "FRAMESTATS_MAX_REGIONS", cls.max_regions),
            max_output_bytes=round(
                _float(env, "FRAMESTATS_MAX_OUTPUT_GIB", cls.max_output_bytes / 2**30) * 2**30
            ),
            job_ttl=_duration(env, "FRAMESTATS_JOB_TTL", cls.job_ttl),
            refused_writes_wait=_float(
                env, "FRAMESTATS_REFUSED_WRITES_WAIT", cls.refused_writes_wait
            ),
            torch_threads=_int(env, "FRAMESTATS_TORCH_THREADS", cls.torch_threads),
            gpu_decode=(env.get("FRAMESTATS_GPU_DECODE") or cls.gpu_decode).strip().lower(),
            decode_threads=_threads(env, "FRAMESTATS_DECODE_THREADS"),
            prefetch=_switch(env, "FRAMESTATS_PREFETCH"),
        )
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]

    @property
    def redis_url_redacted(self) -> str:
        """The broker URL without its password."""
        return redact_url(self.redis_url)
