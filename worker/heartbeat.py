"""Worker heartbeats in Redis, so `producer workers` needs no broadcast round trip.

Each pool process owns one hash (``fs:worker:<node>:<pid>``) that expires when it stops
beating, and a member in the workers index scored by its last beat.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Sequence
from typing import Any

import redis

from framestats import constants as C

from .periodic import Periodic


class Heartbeat:
    """One worker process's record: identity, device, counters, current chunk."""

    def __init__(
        self, client: Any, node: str, device: str, timeout: float, queues: Sequence[str] = ()
    ) -> None:
        self.client = client
        self.node = node
        self.pid = os.getpid()
        self.id = f"{node}:{self.pid}"
        self.host = socket.gethostname()
        self.device = device
        self.timeout = timeout
        self._lock = threading.Lock()
        self._periodic: Periodic | None = None
        self.fields: dict[str, Any] = {
            "id": self.id,
            "node": node,
            "host": self.host,
            "pid": self.pid,
            "device": device,
            #: Queues this process takes chunks from ("": not known, counted for every queue).
            "queues": ",".join(queues),
            "started": time.time(),
            "chunks_done": 0,
            "frames_done": 0,
            "bytes_done": 0,
            "busy_seconds": 0.0,
            "current": "",
        }

    def beat(self, **changes: Any) -> None:
        """Write the record now (its own round trip); a broker blip is skipped."""
        try:
            pipe = self.client.pipeline(transaction=False)
            self.queue_beat(pipe, **changes)
            pipe.execute()
        except redis.RedisError:
            pass  # a broker blip must not kill the worker; the next beat retries

    def queue_beat(self, pipe: Any, **changes: Any) -> None:
        """Add the record's write to ``pipe`` (a chunk's own round trip carries it)."""
        with self._lock:
            self.fields.update(changes)
            self.fields["last_seen"] = time.time()
            fields = dict(self.fields)
        key = C.worker_key(self.id)
        pipe.hset(key, mapping={k: str(v) for k, v in fields.items()})
        pipe.expire(key, max(1, int(self.timeout)))
        pipe.zadd(C.WORKERS_INDEX, {self.id: fields["last_seen"]})

    def note(self, **changes: Any) -> None:
        """Change the record here only (Redis already has it; the next beat writes it)."""
        with self._lock:
            self.fields.update(changes)

    def count_chunk(self, frames: int, nbytes: int, seconds: float) -> None:
        """Add a finished chunk to the counters (written with the next beat)."""
        with self._lock:
            self.fields["chunks_done"] += 1
            self.fields["frames_done"] += frames
            self.fields["bytes_done"] += nbytes
            self.fields["busy_seconds"] += seconds

    def start(self, interval: float) -> None:
        """Beat now, then every ``interval`` seconds."""
        self.beat()
        self._periodic = Periodic("heartbeat", interval, self.beat).start()

    def stop(self) -> None:
        if self._periodic is not None:
            self._periodic.stop()
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.delete(C.worker_key(self.id))
            pipe.zrem(C.WORKERS_INDEX, self.id)
            pipe.execute()
        except redis.RedisError:
            pass
