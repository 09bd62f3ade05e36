"""End to end over many regions: ``producer submit --wait`` for a K sweep, one file.

Run as ``REDIS_URL=redis://127.0.0.1:6379/13 python -m bench.regions [--frames 2048]``.

One Bitshuffle-LZ4 uint16 stack (``bench.data``; 2048 frames of 512x512 = 1 GiB
uncompressed), warm in the page cache, and one ``worker`` node with ``--workers`` pool
processes (``bench.e2e``) kept warm. For K = 16, 100, 1,000 rings of a radial profile
(``bench.kernel.rings``) and K = 10,000 bins of 4x4 pixels, each repetition runs, in a
rotating order:

* ``producer submit --wait`` with ``--stats sum`` and with all six statistics;
* two plain baselines, sum only: a pool of ``--workers`` processes (no queue, no Redis)
  that read their share of the frames with h5py (HDF5 decodes Bitshuffle) and reduce
  each block with numpy ``bincount(labels, weights=frame)`` frame by frame, or with a
  ``scipy.sparse`` CSR one-hot (K x pixels) times the block;
* "no queue": the worker's own read + reduce code in a pool of ``--workers`` processes
  (``bench.baselines.NoQueue``), K = 16 sum and K = 1,000 all six: what the pipeline
  costs without the queue, the chunk files and the output file;
* for K = 1,000, each side of the goal "all six >= 1.0x a bincount pool" both cold and
  both warm: the command against the bincount pool as a user's script run from a fresh
  interpreter (``bench.pool_script``), and the job through the Python API
  (``framestats.submit(...).wait()`` in this warm interpreter) against the warm pool.

GB/s = uncompressed bytes / median wall time (the command from start to exit, output
file complete). The sums of every run are checked against the bincount baseline's.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import h5py
import numpy as np

from . import baselines, e2e, pool_script
from .data import DATASET, data_root, ensure_stack
from .kernel import onehot, pixel_bins, rings

STATS = "sum,mean,count,min,max,std"
#: Region counts of the sweep.
KS = (16, 100, 1000, 10000)
#: The baselines' reductions (sum only).
BASELINES = ("bincount", "CSR")
#: Frames per read in the baselines (as ``bench.baselines``' blocks).
BLOCK = pool_script.BLOCK
#: The checkout, from where ``python -m bench.pool_script`` runs.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: Per baseline process: labels path -> (flat labels, K, CSR one-hot), built once.
_PREPARED: dict[str, tuple[np.ndarray, int, Any]] = {}


def _prepared(labels_path: str) -> tuple[np.ndarray, int, Any]:
    if labels_path not in _PREPARED:
        labels = np.load(labels_path)
        _PREPARED[labels_path] = labels.ravel(), int(labels.max()), onehot(labels)
    return _PREPARED[labels_path]


def _baseline_share(
    method: str, path: str, labels_path: str, lo: int, hi: int
) -> tuple[int, np.ndarray]:
    """One baseline process's share: frames [lo, hi) read and summed by ``method``."""
    import hdf5plugin  # noqa: F401  (Bitshuffle-LZ4 for h5py)

    flat, k, matrix = _prepared(labels_path)
    if method == "bincount":
        return lo, pool_script.bincount_sums(path, DATASET, flat, k, lo, hi)
    out = np.empty((hi - lo, k))
    with h5py.File(path, "r") as f:
        dset = f[DATASET]
        for a in range(lo, hi, BLOCK):
            block = dset[a : min(a + BLOCK, hi)]
            out[a - lo : a - lo + len(block)] = (matrix @ block.reshape(len(block), -1).T).T
    return lo, out


def _warm(_: int) -> int:
    import hdf5plugin  # noqa: F401
    import scipy.sparse  # noqa: F401

    return os.getpid()


class BaselinePool:
    """A warm spawn pool of N processes, one contiguous share of the frames each."""

    def __init__(self, processes: int) -> None:
        self.processes = processes
        self.pool = ProcessPoolExecutor(processes, mp_context=mp.get_context("spawn"))
        pids: set[int] = set()
        while len(pids) < processes:
            pids |= set(self.pool.map(_warm, range(processes * 4)))

    def pids(self) -> list[int]:
        return list(self.pool._processes)  # type: ignore[attr-defined]

    def run(self, method: str, path: str, labels_path: str, frames: int) -> np.ndarray:
        cuts = [round(i * frames / self.processes) for i in range(self.processes + 1)]
        futures = [
            self.pool.submit(_baseline_share, method, path, labels_path, cuts[i], cuts[i + 1])
            for i in range(self.processes)
        ]
        parts = dict(f.result() for f in futures)
        return np.concatenate([parts[c] for c in cuts[:-1]])

    def close(self) -> None:
        self.pool.shutdown()


def submit(
    redis_url: str,
    workers: e2e.Workers,
    path: str,
    mask: str,
    stats: str,
    output: str,
    job_seconds: list[float],
    api: bool = False,
) -> np.ndarray:
    """``producer submit --wait`` once (``api``: ``framestats.submit(...).wait()`` in this
    warm interpreter, as from a notebook); returns the per-frame sums (frames, K), and
    appends to ``job_seconds`` the time from the job's creation in Redis to its end
    (without the command's start-up, checks and exit)."""
    import framestats
    from framestats import connection, jobs

    if api:
        job = framestats.submit(
            path,
            mask,
            output=output,
            stats=stats,
            queue=workers.queue,
            overwrite=True,
            redis_url=redis_url,
        )
        job.wait()
        job_id = job.id
    else:
        args = ("submit", path, "--mask", mask, "--output", output, "--stats", stats)
        run = e2e.producer(redis_url, *args, "--queue", workers.queue, "--wait", "--overwrite")
        job_id = run[1].split()[0]
    client = connection.connect(redis_url)
    try:
        record = jobs.get(client, job_id) or {}
        job_seconds.append(float(record["finished"]) - float(record["created"]))
        jobs.delete(client, job_id)  # leave the database as it was
    finally:
        client.close()
    with h5py.File(output, "r") as f:
        return np.asarray(f["results/sum"][...])


def script(path: str, mask: str, out: str, processes: int) -> np.ndarray:
    """``bench.pool_script`` once, from a fresh interpreter: the sums it wrote."""
    argv = [sys.executable, "-m", "bench.pool_script", path, mask, out]
    argv += ["--processes", str(processes), "--dataset", DATASET]
    subprocess.run(argv, env=e2e._env(""), cwd=_ROOT, check=True)
    return np.load(out)


def _cpu_self_and_children() -> float:
    """CPU seconds of this process and its ended children (a command or a script run)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    ended = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + ended.ru_utime + ended.ru_stime


def main(argv: list[str] | None = None) -> int:
    from framestats import connection
    from framestats.settings import Settings

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=2048, help="uint16 512x512 frames")
    ap.add_argument("--size", type=int, default=512, help="frame height and width")
    ap.add_argument("--workers", type=int, default=2, help="worker (and baseline) processes")
    ap.add_argument("--reps", type=int, default=3, help="repetitions (medians reported)")
    ap.add_argument("--data", help="folder for the generated stack (default: bench.data's)")
    args = ap.parse_args(argv)
    redis_url = os.environ.get("REDIS_URL") or Settings.redis_url

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    stack = ensure_stack(args.frames, args.size, args.size, forms=("bslz4",), root=args.data)
    path = stack.path("bslz4")
    scratch = tempfile.mkdtemp(prefix="bench-regions-", dir=args.data or data_root())
    masks: dict[int, str] = {}
    for k in KS:
        labels = pixel_bins(size=args.size) if k == 10000 else rings(k, size=args.size)
        masks[k] = os.path.join(scratch, f"labels-{k}.npy")
        np.save(masks[k], labels)
    with open(path, "rb") as fh:  # warm the page cache
        while fh.read(1 << 24):
            pass
    load_start = os.getloadavg()
    client = connection.connect(redis_url)
    log(f"starting {args.workers} worker processes and the baseline pools")
    workers = e2e.start_workers(redis_url, args.workers, scratch)
    pool = BaselinePool(args.workers)
    noqueue = baselines.NoQueue(args.workers)
    job_seconds: dict[str, list[float]] = {}

    def case(name: str, k: int, stats: str) -> Callable[[], np.ndarray]:
        output = os.path.join(scratch, f"{k}.h5")
        seconds = job_seconds.setdefault(name, [])
        return lambda: submit(redis_url, workers, path, masks[k], stats, output, seconds)

    def no_queue(k: int, stats: str) -> Callable[[], np.ndarray]:
        from framestats.submission import SubmitRequest, prepare

        request = SubmitRequest(
            inputs=(path,),
            mask=masks[k],
            output=os.path.join(scratch, f"nq-{k}.h5"),
            stats=tuple(stats.split(",")),
        )
        spec = prepare(request, Settings.from_env({"REDIS_URL": redis_url})).spec
        labels = np.load(masks[k])
        return lambda: noqueue.run(spec, labels)[0]

    def baseline(method: str, k: int) -> Callable[[], np.ndarray]:
        return lambda: pool.run(method, path, masks[k], args.frames)

    def api(k: int, stats: str) -> Callable[[], np.ndarray]:
        output = os.path.join(scratch, f"api-{k}.h5")
        seconds = job_seconds.setdefault(f"API, K={k} all six", [])
        return lambda: submit(redis_url, workers, path, masks[k], stats, output, seconds, api=True)

    def cold(k: int) -> Callable[[], np.ndarray]:
        out = os.path.join(scratch, f"script-{k}.npy")
        return lambda: script(path, masks[k], out, args.workers)

    runners: dict[str, Callable[[], np.ndarray]] = {}
    for k in KS:
        runners[f"K={k} sum"] = case(f"K={k} sum", k, "sum")
        runners[f"K={k} all six"] = case(f"K={k} all six", k, STATS)
        for method in BASELINES:
            runners[f"{method} pool, K={k} sum"] = baseline(method, k)
    runners["API, K=1000 all six"] = api(1000, STATS)
    runners["bincount script, K=1000 sum"] = cold(1000)
    runners["no queue, K=16 sum"] = no_queue(16, "sum")
    runners["no queue, K=1000 all six"] = no_queue(1000, STATS)
    times: dict[str, list[float]] = {name: [] for name in runners}
    cpu: dict[str, list[float]] = {name: [] for name in runners}
    sums: dict[str, np.ndarray] = {}
    try:
        workers.wait_ready(client)
        order = list(runners)
        for rep in range(args.reps + 1):  # the first round warms up (not counted)
            for name in order[rep % len(order) :] + order[: rep % len(order)]:
                if " pool, " in name:
                    pids = pool.pids()
                elif name.startswith("no queue"):
                    pids = list(noqueue.pool._processes)  # type: ignore[attr-defined]
                elif " script, " in name:
                    pids = []  # a child of this process: counted once it ended
                else:
                    pids = workers.pids()
                c0 = e2e.cpu_seconds(pids) + _cpu_self_and_children()
                t0 = time.perf_counter()
                sums[name] = runners[name]()
                if rep:
                    times[name].append(time.perf_counter() - t0)
                    cpu[name].append(e2e.cpu_seconds(pids) + _cpu_self_and_children() - c0)
            log(f"round {rep} done")
    finally:
        workers.stop(client)
        pool.close()
        noqueue.close()
        client.close()
        shutil.rmtree(scratch, ignore_errors=True)  # outputs (1 GB at K = 10,000) and masks
    load_end = os.getloadavg()
    # Every sum equals bincount's: uint16 values summed in float64 are exact below 2**53.
    for k in KS:
        reference = sums[f"bincount pool, K={k} sum"]
        for name in (f"K={k} sum", f"K={k} all six", f"CSR pool, K={k} sum"):
            np.testing.assert_array_equal(sums[name], reference, err_msg=name)
    for name in ("API, K=1000 all six", "bincount script, K=1000 sum"):
        np.testing.assert_array_equal(sums[name], sums["bincount pool, K=1000 sum"], err_msg=name)
    no_queue_sums = sums["no queue, K=1000 all six"]  # region 1 only (NoQueue's result)
    np.testing.assert_array_equal(
        no_queue_sums, sums["bincount pool, K=1000 sum"][:, 0], err_msg="no queue"
    )
    gbps = {n: stack.nbytes / 1e9 / statistics.median(t) for n, t in times.items()}
    # CPU seconds of the worker (or pool) processes, this process and the command or
    # script it ran: unlike wall time, not inflated by other people's jobs on a shared
    # machine (the worker node's CPU includes its bookkeeping).
    per_cpu = {n: stack.nbytes / 1e9 / statistics.median(c) for n, c in cpu.items()}
    # From the job's creation: the pipeline without the command's start-up and exit
    # (a warm pool has neither), for the runs of ``producer submit`` and the API.
    from_job = {n: stack.nbytes / 1e9 / statistics.median(t[1:]) for n, t in job_seconds.items()}
    command = " ".join(["python -m bench.regions", *(argv if argv is not None else sys.argv[1:])])
    print(f"# {command}")
    print(
        f"# {args.frames} uint16 frames of {args.size}x{args.size} "
        f"({stack.nbytes / 2**30:.2f} GiB uncompressed, Bitshuffle-LZ4 "
        f"{os.path.getsize(path) / 2**20:.0f} MiB), {args.workers} worker processes, "
        f"medians of {args.reps}; load average {load_start[0]:.1f} at the start, "
        f"{load_end[0]:.1f} at the end ({os.cpu_count()} cores)"
    )
    print("\nGB/s (wall; in brackets: from the job's creation; GB per CPU second)\n")
    print("| K | sum | all six | bincount pool (sum) | CSR pool (sum) |")
    print("|---|---|---|---|---|")

    def cell(name: str) -> str:
        inner = f"{from_job[name]:.2f}; " if name in from_job else ""
        return f"{gbps[name]:.2f} ({inner}{per_cpu[name]:.2f})"

    for k in KS:
        names = (f"K={k} sum", f"K={k} all six", *(f"{m} pool, K={k} sum" for m in BASELINES))
        print(f"| {k:,} | " + " | ".join(cell(n) for n in names) + " |")
    for name in (
        "API, K=1000 all six",
        "bincount script, K=1000 sum",
        "no queue, K=16 sum",
        "no queue, K=1000 all six",
    ):
        print(f"\n{name}: {cell(name)}", end="")
    print("\n\n| goal | ratio (wall) | ratio (from the job's creation) | ratio (CPU seconds) |")
    print("|---|---|---|---|")
    goal, pool_sum, api_goal = "K=1000 all six", "bincount pool, K=1000 sum", "API, K=1000 all six"
    for label, mine, other in (
        ("K=1000 all six / K=16 sum, >= 0.5", goal, "K=16 sum"),
        ("K=1000 all six / bincount pool (sum), >= 1.0", goal, pool_sum),
        ("the same, both cold: command / bincount script", goal, "bincount script, K=1000 sum"),
        ("the same, both warm: Python API / bincount pool", api_goal, pool_sum),
    ):
        wall = gbps[mine] / gbps[other]
        # A script's time includes its start-up: no ratio without the command's.
        job = (
            "-" if "script" in other else f"{from_job[mine] / from_job.get(other, gbps[other]):.2f}"
        )
        by_cpu = per_cpu[mine] / per_cpu[other]
        print(f"| {label} | {wall:.2f} | {job} | {by_cpu:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
