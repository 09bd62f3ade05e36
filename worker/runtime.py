"""What one worker process holds: settings, Redis client, job cache, heartbeat, sweep.

Built in each pool process after the fork (CUDA is safe to touch then), from the
settings and the node's name and device that ``launch.run_node`` sets before the node
starts.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from celery.signals import worker_process_init, worker_process_shutdown

from framestats import connection
from framestats.jobdir import load_job
from framestats.settings import Settings

from . import refusals
from .app import app
from .context import JobCache
from .heartbeat import Heartbeat
from .recovery import Sweeper

log = logging.getLogger("framestats.worker")

#: Set by ``launch.run_node`` before the node forks its pool: (node name, device).
NODE: dict[str, str] = {}


@dataclass
class Runtime:
    settings: Settings
    client: Any
    cache: JobCache
    heartbeat: Heartbeat
    device: str


_runtime: Runtime | None = None


def _device_label(settings: Settings) -> tuple[str, str]:
    """(device, label for heartbeats and outputs) of this process."""
    import torch

    from .reduce import resolve_device

    device = resolve_device(NODE.get("device") or settings.device)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return str(device), f"{device} ({props.name}, {props.total_memory / 2**30:.0f} GiB)"
    torch.set_num_threads(settings.torch_threads)
    return str(device), str(device)


def runtime(node: str | None = None) -> Runtime:
    """This process's runtime, built on first use."""
    global _runtime
    if _runtime is None or _runtime.heartbeat.pid != os.getpid():
        settings = Settings.from_env()
        device, label = _device_label(settings)
        client = connection.connect(
            settings.redis_url, retry=refusals.retry(settings.refused_writes_wait)
        )
        hb = Heartbeat(
            client,
            node or NODE.get("name", "worker"),
            label,
            settings.worker_timeout,
            consumed_queues(),
        )
        _runtime = Runtime(settings, client, JobCache(settings, device), hb, device)
        hb.start(settings.heartbeat)

        def spec_of(manifest: str, job_id: str) -> Any:
            spec, folder = load_job(manifest, job_id, settings.data_root)
            folder.close()
            return spec

        Sweeper(client, hb.id, settings.restore_interval, spec_of).start()
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
