"""The baselines the pipeline is measured against, each timed from a warm start.

- (b) ``NoQueue``: N plain processes (multiprocessing, spawn, started once), each
  opening the file itself and running the worker's own read + kernel code
  (``worker.context.JobContext``) over its contiguous share of the job's chunks: what
  the pipeline does, minus the queue and the bookkeeping.
- (c) ``dask_threaded``: ``da.from_array(dataset, chunks=(64, H, W))`` and the masked
  sum on the threaded scheduler; ``DaskDelayed``: one ``dask.delayed`` task per
  64-frame block that opens the file by path, on a warm process pool.
- (d) ``article``: the article's vectorized form, ``(x * mask).sum(dim=(1, 2))`` on
  float tensors of 64-frame blocks, in this process.

Every function returns the per-frame masked sums, so the runner can check that all
methods agree before it believes their timings.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import h5py
import hdf5plugin  # noqa: F401  (Bitshuffle-LZ4 for h5py)
import numpy as np

#: Frames per block for Dask and the article's form (the issue's chunks=(64, H, W)).
BLOCK = 64


def _init_process(threads: int, env: dict[str, str]) -> None:
    import torch

    os.environ.update(env)
    torch.set_num_threads(threads)


def _share(
    spec_json: dict[str, Any], labels: np.ndarray, lo: int, hi: int, device: str
) -> tuple[int, np.ndarray]:
    """One process's share: chunks [lo, hi) of the job, computed like a worker does."""
    from framestats.messages import JobSpec
    from worker.context import JobContext
    from worker.read import FrameReader

    spec = JobSpec.from_json(spec_json)
    reader = FrameReader.for_device(spec, device=device)
    ctx = JobContext(spec=spec, labels=labels, reader=reader, device=device)
    try:
        start, stop = spec.boundaries[lo], spec.boundaries[hi]
        sums = np.empty(stop - start)
        for i in range(lo, hi):
            a, b = spec.boundaries[i], spec.boundaries[i + 1]
            sums[a - start : b - start] = ctx.compute(a, b)["sum"][:, 0]
        return start, sums
    finally:
        ctx.close()


def _warm(_: int) -> int:
    import worker.context  # noqa: F401
    import worker.reduce  # noqa: F401  (torch, numba)

    return os.getpid()


class NoQueue:
    """(b): a warm spawn pool of N processes, one contiguous share of chunks each.

    ``env`` is set in each process (FRAMESTATS_PREFETCH, FRAMESTATS_DECODE_THREADS: the
    reader's choices, to measure them without the queue).
    """

    def __init__(self, processes: int, env: dict[str, str] | None = None) -> None:
        self.processes = processes
        self.pool = ProcessPoolExecutor(
            processes,
            mp_context=mp.get_context("spawn"),
            initializer=_init_process,
            initargs=(1, env or {}),
        )
        # Import torch and the worker in every process before anything is timed.
        pids: set[int] = set()
        while len(pids) < processes:
            pids |= set(self.pool.map(_warm, range(processes * 4)))

    def run(
        self, spec: Any, labels: np.ndarray, device: str = "cpu"
    ) -> tuple[np.ndarray, dict[str, float]]:
        """The job's sums, and the CPU seconds its processes used ({"cpu": s})."""
        from .e2e import cpu_seconds

        pids = list(self.pool._processes)  # type: ignore[attr-defined]
        cpu = cpu_seconds(pids)
        n = spec.n_chunks
        cuts = [round(i * n / self.processes) for i in range(self.processes + 1)]
        data = spec.to_json()
        futures = [
            self.pool.submit(_share, data, labels, cuts[i], cuts[i + 1], device)
            for i in range(self.processes)
            if cuts[i] < cuts[i + 1]
        ]
        out = np.empty(spec.n_frames)
        for f in futures:
            start, sums = f.result()
            out[start : start + sums.size] = sums
        return out, {"cpu": cpu_seconds(pids) - cpu}

    def close(self) -> None:
        self.pool.shutdown()


def dask_threaded(path: str, dataset: str, mask: np.ndarray, workers: int) -> np.ndarray:
    """(c) as the issue writes it: from_array over the open dataset, threaded scheduler."""
    import dask.array as da

    m = mask.astype(np.uint16)
    with h5py.File(path, "r") as f:
        dset = f[dataset]
        x = da.from_array(dset, chunks=(BLOCK, *dset.shape[1:]))
        # uint16 x {0, 1} cannot overflow; numpy sums uint16 in uint64 (exact).
        result = (x * m).sum(axis=(1, 2)).compute(scheduler="threads", num_workers=workers)
    return np.asarray(result, dtype=np.float64)


def _delayed_block(path: str, dataset: str, lo: int, hi: int, mask: np.ndarray) -> np.ndarray:
    with h5py.File(path, "r") as f:
        x = f[dataset][lo:hi]
    return (x * mask).sum(axis=(1, 2))


class DaskDelayed:
    """(c) alternative: dask.delayed per block opening the file by path, warm process pool."""

    def __init__(self, processes: int) -> None:
        self.processes = processes
        self.pool = ProcessPoolExecutor(processes, mp_context=mp.get_context("spawn"))
        list(self.pool.map(_warm_h5, range(processes * 4)))

    def run(self, path: str, dataset: str, mask: np.ndarray, frames: int) -> np.ndarray:
        import dask

        m = mask.astype(np.uint16)
        parts = [
            dask.delayed(_delayed_block)(path, dataset, lo, min(lo + BLOCK, frames), m)
            for lo in range(0, frames, BLOCK)
        ]
        with dask.config.set(pool=self.pool):
            results = dask.compute(*parts, scheduler="processes", num_workers=self.processes)
        return np.concatenate(results).astype(np.float64)

    def close(self) -> None:
        self.pool.shutdown()


def _warm_h5(_: int) -> int:
    import dask  # noqa: F401

    return os.getpid()


def article(path: str, dataset: str, mask: np.ndarray) -> np.ndarray:
    """(d): read blocks by slicing, ``(x * mask).sum(dim=(1, 2))`` on float tensors."""
    import torch

    m = torch.from_numpy(mask.astype(np.float32))
    out = []
    with h5py.File(path, "r") as f:
        dset = f[dataset]
        for lo in range(0, dset.shape[0], BLOCK):
            x = torch.from_numpy(dset[lo : lo + BLOCK].astype(np.float32))
            out.append((x * m).sum(dim=(1, 2)).double().numpy())
    return np.concatenate(out)


def timed(fn: Any, *args: Any) -> tuple[float, Any]:
    t = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - t, result
