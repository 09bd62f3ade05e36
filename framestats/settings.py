"""One typed configuration object; the environment is read here and nowhere else."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .constants import DEFAULT_REDIS_URL

_PASSWORD_IN_URL = re.compile(r"^(?P<scheme>[a-z+]+://)(?P<user>[^:@/]*):(?P<password>[^@/]*)@")


def redact_url(url: str) -> str:
    """The URL with any password replaced by '***', for logs, status output and provenance."""
    return _PASSWORD_IN_URL.sub(lambda m: f"{m['scheme']}{m['user']}:***@", url)


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
    ``FRAMESTATS_PREFETCH_MULTIPLIER``, ``FRAMESTATS_GPU_DECODE``.
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
