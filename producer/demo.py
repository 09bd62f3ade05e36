"""The built-in demo: sample data, a worker if none runs, one real job, a short summary."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import click

from framestats import connection, jobs
from framestats import constants as C
from framestats.progress import follow
from framestats.settings import Settings
from framestats.submission import SubmitRequest, submit


def start_worker(settings: Settings, queue: str, log_path: str) -> subprocess.Popen[bytes]:
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "worker",
                "--queues",
                queue,
                "--name",
                "demo",
                "--loglevel",
                "warning",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def run_demo(folder: str, frames: int, settings: Settings) -> int:
    import h5py
    import numpy as np

    from .samples import make_demo

    data, mask = make_demo(folder, n=frames)
    output = os.path.join(folder, "demo.reduced.h5")
    client = connection.connect(settings.redis_url)
    connection.ping(client, settings.redis_url_redacted)
    started: subprocess.Popen[bytes] | None = None
    queue = C.DEFAULT_QUEUE
    if jobs.live_processes(client, settings.worker_timeout, queue=queue) == 0:
        queue = f"demo-{os.getpid()}"
        log_path = os.path.join(folder, "demo-worker.log")
        click.echo(f"no worker running: starting one (log: {log_path})", err=True)
        started = start_worker(settings, queue, log_path)
    try:
        t0 = time.monotonic()
        prepared = submit(
            SubmitRequest(
                inputs=(data,),
                mask=mask,
                output=output,
                stats=("sum", "mean", "count", "min", "max", "std"),
                queue=queue,
                overwrite=True,
                chunk_frames=50,
            ),
            settings,
        )
        spec = prepared.spec
        click.echo(
            f"job {spec.job_id}: {spec.n_frames} frames of {spec.frame_shape} in "
            f"{spec.n_chunks} chunks, {spec.n_regions} ring regions",
            err=True,
        )
        final = follow(client, spec.job_id)
        seconds = time.monotonic() - t0
        if final["state"] != "done":
            click.echo(f"error: demo job {final['state']}: {final.get('reason', '')}", err=True)
            return 1
        with h5py.File(output, "r") as f:
            mean = f["results/mean"][()]
            counts = f["results/pixel_count"][()]
        click.echo(f"output: {output}")
        click.echo(
            f"  /results/<stat>: {mean.shape[0]} frames x {mean.shape[1]} regions "
            f"({seconds:.1f} s including worker start)"
        )
        click.echo("  region  pixels  mean over frames")
        for k in range(mean.shape[1]):
            click.echo(f"  {k + 1:>6}  {counts[k]:>6}  {np.nanmean(mean[:, k]):.4f}")
        return 0
    finally:
        if started is not None:
            started.send_signal(signal.SIGTERM)
            try:
                started.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(started.pid, signal.SIGKILL)
