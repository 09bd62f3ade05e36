"""``python -m bench.status [--jobs 10000]``: ``producer status`` on a long-lived deployment.

A private ``redis-server`` (free port, no persistence, stopped by pid) is filled with
``--jobs`` ended jobs written by the real ``jobs.create`` / ``finish_chunk`` /
``finish`` (90 % done, 7 % failed with an error, 3 % cancelled; 20 chunks each) and a
few running ones, as many months of use leave them within ``FRAMESTATS_JOB_TTL``. Then
the real CLI is timed, end to end in a fresh process as a user runs it (median of
``--reps``): ``producer status``, ``status --json``, ``status JOB``, ``producer
--version`` (the interpreter and CLI start-up alone) and, in process, the
``monitor.overview`` that ``status`` calls. The target is ``status`` under 0.5 s.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

from framestats import connection, jobs, monitor
from framestats.messages import JobSpec, JobState, Segment

TARGET_S = 0.5
N_CHUNKS = 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis(folder: str) -> tuple[subprocess.Popen[bytes], str]:
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("redis-server is not installed")
    port = free_port()
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", folder],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    client = connection.connect(url)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            return proc, url
        except Exception:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise
            time.sleep(0.05)


def spec(i: int, now: float) -> JobSpec:
    n = N_CHUNKS * 100
    return JobSpec(
        job_id=f"{i:016x}",
        segments=(Segment(f"/data/scan_{i:05d}_master.h5", "/entry/data/data", 0, n),),
        frame_shape=(2162, 2068), dtype="<u4", n_frames=n, n_regions=64,
        stats=("sum", "mean"), boundaries=tuple(range(0, n + 1, 100)),
        output=f"/data/scan_{i:05d}.reduced.h5", workdir=f"/data/scan_{i:05d}.reduced.h5.parts",
        mask_path="/data/mask.npy", mask_sha256="0" * 64, queue="framestats",
        chunk_frames=100, created=now - 86400 * 6 + i, version="bench",
    )  # fmt: skip


def fill(client: object, n_jobs: int, running: int = 3) -> str:
    """Write ``n_jobs`` ended jobs and ``running`` running ones; returns one ended id."""
    now = time.time()
    for i in range(n_jobs + running):
        s = spec(i, now)
        jobs.create(client, s, range(N_CHUNKS))
        jobs.pop_pending(client, s.job_id, N_CHUNKS)
        ended = i < n_jobs
        for c in range(N_CHUNKS if ended else N_CHUNKS // 2):
            jobs.finish_chunk(client, s.job_id, c, 100, 100 * s.frame_bytes, f"w{i % 8}@h:1")
        if not ended:
            continue
        if i % 100 < 7:
            jobs.record_error(client, s.job_id, 3, (300, 400), "cannot read frames: I/O error")
            jobs.finish(client, s.job_id, JobState.FAILED, "chunk 3: I/O error")
        elif i % 100 < 10:
            jobs.finish(client, s.job_id, JobState.CANCELLED, "cancelled by user")
        else:
            jobs.finish(client, s.job_id, JobState.DONE)
    return f"{0:016x}"


def cli_seconds(url: str, *args: str) -> float:
    env = {**os.environ, "REDIS_URL": url}
    t0 = time.perf_counter()
    res = subprocess.run(
        [sys.executable, "-m", "producer", *args], env=env, capture_output=True, text=True
    )
    seconds = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"producer {' '.join(args)} failed: {res.stderr}")
    return seconds


def median(fn: Callable[[], float], reps: int) -> tuple[float, float]:
    fn()  # warm the page cache and Redis
    times = [fn() for _ in range(reps)]
    return statistics.median(times), max(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args(argv)
    folder = tempfile.mkdtemp(prefix="bench-status-")
    proc, url = start_redis(folder)
    try:
        client = connection.connect(url)
        t0 = time.perf_counter()
        one = fill(client, args.jobs)
        filled = time.perf_counter() - t0
        keys = client.dbsize()
        memory = client.info("memory")["used_memory"]
        print(
            f"{args.jobs} ended jobs (+3 running): {keys} keys, {memory / 2**20:.1f} MiB "
            f"in Redis, written in {filled:.1f} s"
        )
        rows = [
            ("producer --version (start-up only)", median(lambda: cli_seconds(url, "--version"), args.reps)),
            ("producer status", median(lambda: cli_seconds(url, "status"), args.reps)),
            ("producer status --json", median(lambda: cli_seconds(url, "status", "--json"), args.reps)),
            ("producer status JOB", median(lambda: cli_seconds(url, "status", one), args.reps)),
        ]  # fmt: skip

        def overview() -> float:
            t = time.perf_counter()
            monitor.overview(client, 30.0)
            return time.perf_counter() - t

        rows.append(("monitor.overview (in process)", median(overview, args.reps)))
        print(f"{'what':<40} {'median s':>9} {'max s':>7}")
        for name, (med, worst) in rows:
            print(f"{name:<40} {med:>9.3f} {worst:>7.3f}")
        status = rows[1][1][0]
        verdict = "met" if status < TARGET_S else "NOT met"
        print(f"target: producer status < {TARGET_S} s with {args.jobs} jobs: {verdict}")
        return 0 if status < TARGET_S else 1
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
