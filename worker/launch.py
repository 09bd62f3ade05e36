"""Starting Celery worker nodes: one per GPU (each pinned), or one with a process per core.

CUDA is never touched in a process that forks: GPUs are counted in a short-lived
subprocess, pinned nodes are separate processes started with CUDA_VISIBLE_DEVICES, and
each node's pool child (not its parent) is the first to use the device.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence

log = logging.getLogger("framestats.worker")


def usable_cores() -> int:
    """The cores this process may run on (its affinity: a Slurm job's or a container's
    share of the machine, not all of its cores)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def count_gpus() -> int:
    """Visible CUDA devices, counted without initialising CUDA in this process."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) == "":
        return 0
    if shutil.which("nvidia-smi") is None and not os.path.exists("/dev/nvidiactl"):
        return 0
    try:
        out = subprocess.run(
            [sys.executable, "-c", "import torch; print(torch.cuda.device_count())"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return int(out.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, ValueError, IndexError):
        return 0


def node_name(base: str | None, suffix: str = "") -> str:
    """A Celery node name unique per host (and per GPU when ``suffix`` is given)."""
    name = base or os.environ.get("WORKER_NAME") or "framestats"
    if "@" not in name:
        name = f"{name}@{socket.gethostname()}"
    if suffix:
        local, host = name.split("@", 1)
        name = f"{local}-{suffix}@{host}"
    return name


def celery_argv(concurrency: int, queues: Sequence[str], name: str, loglevel: str) -> list[str]:
    return [
        "worker",
        "--pool=prefork",
        f"--concurrency={concurrency}",
        f"--queues={','.join(queues)}",
        f"--hostname={name}",
        f"--loglevel={loglevel}",
        "--task-events",
        "--without-gossip",
        "--without-mingle",
    ]


def run_node(concurrency: int, queues: Sequence[str], name: str, loglevel: str, device: str) -> int:
    """Run one Celery worker node in this process until warm shutdown."""
    from . import runtime
    from .app import app
    from .broker import check_safe

    runtime.NODE.update(name=name, device=device)  # the pool's processes inherit it

    check_safe(app)
    app.worker_main(argv=celery_argv(concurrency, queues, name, loglevel))
    return 0


def supervise(commands: list[tuple[list[str], dict[str, str]]]) -> int:
    """Run one child per command; forward SIGTERM/SIGINT; restart children that die."""
    children: list[subprocess.Popen[bytes] | None] = [None] * len(commands)
    stopping = False

    def start(i: int) -> None:
        argv, env = commands[i]
        children[i] = subprocess.Popen(argv, env={**os.environ, **env})

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child is not None and child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for i in range(len(commands)):
        start(i)
    while True:
        alive = False
        for i, child in enumerate(children):
            if child is None:
                continue
            code = child.poll()
            if code is None:
                alive = True
            elif not stopping:
                log.warning("worker node %d exited with %s; restarting", i, code)
                time.sleep(2)
                start(i)
                alive = True
        if not alive:
            return 0
        time.sleep(0.5)
