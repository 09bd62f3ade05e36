"""The queue's cost per chunk, alone: a job of one-frame chunks whose compute is nothing.

    python -m bench.overhead            # --chunks 2000 --processes 1 --reps 3

A 64x64 uint16 stack is submitted with ``--chunk-frames 1`` to a warm worker node, so
each task's time is Celery's hand-over, the Redis round trips, the fsynced commit and
the successor's publication. Prints per chunk: wall milliseconds per pool process, and
CPU milliseconds of the node's parent process and of its pool processes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import h5py
import numpy as np

from framestats import connection, jobs

from . import e2e


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.overhead", description=__doc__)
    ap.add_argument("--chunks", type=int, default=2000)
    ap.add_argument("--processes", type=int, default=1)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    args = ap.parse_args(argv)
    n, url = args.chunks, args.redis_url
    with tempfile.TemporaryDirectory(prefix="fs-overhead-") as folder:
        path, mask = os.path.join(folder, "frames.h5"), os.path.join(folder, "mask.npy")
        rng = np.random.default_rng(0)
        with h5py.File(path, "w") as f:
            f.create_dataset("/entry/data/data", data=rng.integers(0, 100, (n, 64, 64), np.uint16))
        np.save(mask, np.ones((64, 64), bool))
        workers = e2e.start_workers(url, args.processes, folder)
        client = connection.connect(url)
        rows: list[tuple[float, float, float]] = []
        try:
            workers.wait_ready(client)
            for rep in range(args.reps + 1):  # the first is a warm-up
                parent, *children = workers.pids()
                cpu0 = e2e.cpu_seconds([parent]), e2e.cpu_seconds(children)
                argv_ = ["submit", path, "--mask", mask, "--output", path + ".out.h5"]
                argv_ += ["--chunk-frames", "1", "--queue", workers.queue, "--wait", "--overwrite"]
                _, stdout = e2e.producer(url, *argv_)
                job = jobs.get(client, stdout.split()[0]) or {}
                jobs.delete(client, job["id"])
                seconds = float(job["finished"]) - float(job["submitted"])
                cpu = e2e.cpu_seconds([parent]) - cpu0[0], e2e.cpu_seconds(children) - cpu0[1]
                row = (seconds * args.processes / n, cpu[0] / n, cpu[1] / n)
                if rep:
                    rows.append(row)
                    print(
                        f"rep {rep}: {row[0] * 1e3:.2f} ms per chunk per process; CPU per chunk: "
                        f"parent {row[1] * 1e3:.2f} ms, pool {row[2] * 1e3:.2f} ms",
                        flush=True,
                    )
                time.sleep(0.2)
        finally:
            workers.stop(client)
            client.close()
    med = [statistics.median(r[i] for r in rows) * 1e3 for i in range(3)]
    print(
        f"median of {len(rows)}: {med[0]:.2f} ms per chunk per process "
        f"({n} one-frame chunks, {args.processes} pool process(es)); "
        f"CPU per chunk: parent {med[1]:.2f} ms, pool {med[2]:.2f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
