"""Starting and stopping real ``worker`` processes for tests (importable helpers)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import redis

from framestats import constants as C

#: Fast timings so fault tests stay cheap; production defaults live in framestats.settings.
FAST_ENV = {
    "FRAMESTATS_HEARTBEAT": "1",
    "FRAMESTATS_WORKER_TIMEOUT": "6",
    "FRAMESTATS_RETRY_BACKOFF": "0.2",
    "FRAMESTATS_FINALIZE_LOCK_TTL": "10",
    "PYTHONUNBUFFERED": "1",
}


@dataclass
class WorkerProcess:
    """One ``worker`` command running in its own process group."""

    proc: subprocess.Popen[bytes]
    name: str
    queue: str
    log_path: str
    env: dict[str, str] = field(repr=False, default_factory=dict)

    def pids(self, client: redis.Redis) -> list[int]:
        """Pool process pids that have sent a heartbeat."""
        ids = client.zrange(C.WORKERS_INDEX, 0, -1)
        return [int(i.rsplit(":", 1)[1]) for i in ids if i.startswith(self.name + "@")]

    def wait_ready(self, client: redis.Redis, processes: int = 1, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.log()}")
            if len(self.pids(client)) >= processes:
                return
            time.sleep(0.2)
        raise TimeoutError(f"worker {self.name} not ready after {timeout} s:\n{self.log()}")

    def log(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as fh:
                return fh.read()[-5000:]
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> int | None:
        """Warm shutdown (SIGTERM), then kill the group if it does not exit in time."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def kill(self) -> None:
        """kill -9 the whole worker: parent and pool children."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)


#: Keys live workers set and drop on their own schedule: the sweep's lock, and kombu's
#: lock around restoring unacknowledged messages.
TRANSIENT_KEYS = {C.SWEEP_LOCK, "unacked_mutex"}


def stored_keys(client: Any) -> set[str]:
    """Every key in the database but ``TRANSIENT_KEYS``: what a refused command must
    leave exactly as it found it."""
    return {k.decode() if isinstance(k, bytes) else k for k in client.keys("*")} - TRANSIENT_KEYS


def start_worker(
    redis_url: str,
    log_dir: str,
    queue: str | None = None,
    concurrency: int = 1,
    name: str | None = None,
    env: dict[str, Any] | None = None,
) -> WorkerProcess:
    """Start ``python -m worker`` on CPU; call ``wait_ready`` before relying on it."""
    name = name or f"t{uuid.uuid4().hex[:8]}"
    queue = queue or f"q-{name}"
    full_env = {
        **os.environ,
        **FAST_ENV,
        "REDIS_URL": redis_url,
        **{k: str(v) for k, v in (env or {}).items()},
    }
    log_path = os.path.join(log_dir, f"worker-{name}.log")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "worker",
                "--device",
                "cpu",
                "--concurrency",
                str(concurrency),
                "--queues",
                queue,
                "--name",
                name,
                "--loglevel",
                "info",
            ],
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return WorkerProcess(proc=proc, name=name, queue=queue, log_path=log_path, env=full_env)


def run_producer(
    redis_url: str, *args: str, env: dict[str, Any] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run the real ``producer`` CLI in a subprocess."""
    full_env = {
        **os.environ,
        **FAST_ENV,
        "REDIS_URL": redis_url,
        **{k: str(v) for k, v in (env or {}).items()},
    }
    return subprocess.run(
        [sys.executable, "-m", "producer", *args],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
