"""Worker processes for ``python -m bench.gpu``: the worker's own code, one process each.

A CPU worker (one process, one thread, as ``worker`` runs one per core), CPU workers on
every core at once, and a GPU worker with device decoding on and off, each running
``JobContext.compute`` over a job's 256 MiB chunk tasks (no queue). In a dry run the GPU
worker's reader runs on the CPU with the ``lz4`` package in nvCOMP's place.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np

from framestats.messages import JobSpec, Segment

DSET = "/entry/data/data"


def annulus(h: int, w: int) -> np.ndarray:
    from producer.samples import ring_labels

    return ring_labels(h, w, 4) >= 2


def spec_for(path: str, frames: int, h: int, w: int, dtype: str, chunk_frames: int) -> JobSpec:
    bounds = tuple(range(0, frames, chunk_frames)) + (frames,)
    return JobSpec.for_reading((Segment(path, DSET, 0, frames),), (h, w), dtype, bounds)


def chunk_frames(h: int, w: int, itemsize: int) -> int:
    """Frames per chunk task: 256 MiB, as ``producer.plan`` makes them."""
    return max(1, (256 << 20) // (h * w * itemsize))


def _reader(spec: JobSpec, variant: str, dry: bool) -> Any:
    """The reader a worker of ``variant`` makes ("cpu", "gpu-device", "gpu-host")."""
    from worker.read import FrameReader

    if variant == "cpu":
        return FrameReader.for_device(spec, device="cpu")
    decode = "on" if variant == "gpu-device" else "off"
    if not dry:
        return FrameReader.for_device(spec, device="cuda", gpu_decode=decode)
    from worker.read.host_decode import default_threads
    from worker.read.lz4_host import HostLZ4

    # The GPU worker's reader, on the CPU: decode threads on every core, prefetch.
    lz4 = HostLZ4() if decode == "on" else None
    return FrameReader(
        spec,
        decode_threads=default_threads(),
        prefetch=True,
        device="cpu",
        gpu_decode=decode,
        block_decoder=lz4,
        unshuffle="torch",
    )


def _tensor_reduce(ctx: Any) -> str:
    """Where the reducer does not take device tensors yet, reduce them with its own
    on-device integer sums (what ``reduce`` runs for them); returns which one is used."""
    import torch

    reducer = ctx.reducer
    real = reducer.reduce
    probe = torch.zeros((1, *ctx.spec.frame_shape), dtype=torch.int32, device="cuda")
    try:
        real(probe)
        return "MaskedReducer.reduce"
    except (TypeError, RuntimeError, ValueError):
        pass
    impl = reducer._impl

    def reduce(block: Any) -> dict[str, np.ndarray]:
        if not isinstance(block, torch.Tensor):
            return real(block)  # type: ignore[no-any-return]
        kind = ("f" if block.is_floating_point() else "u", block.element_size())
        sums = impl._int_sums(block.reshape(block.shape[0], -1), kind)
        return {"sum": sums.double().cpu().numpy()}

    reducer.reduce = reduce
    return "the reducer's on-device sums (reduce() takes no tensors yet)"


def _worker_run(
    path: str, shape: tuple[int, int, int, str], variant: str, reps: int, dry: bool
) -> tuple[float, np.ndarray, str, str | None]:
    """One worker process over the job's chunks: median seconds, its sums, how it
    reduced device blocks, and its decode path."""
    import torch

    from worker.context import JobContext

    frames, h, w, dtype = shape
    gpu = variant != "cpu"
    if not gpu or dry:
        torch.set_num_threads(1)  # a CPU worker process runs one torch thread
    spec = spec_for(path, frames, h, w, dtype, chunk_frames(h, w, np.dtype(dtype).itemsize))
    reader = _reader(spec, variant, dry)
    compute = "cuda" if gpu and not dry else "cpu"
    ctx = JobContext(spec=spec, labels=annulus(h, w), reader=reader, device=compute)
    how = _tensor_reduce(ctx) if gpu and not dry else "MaskedReducer.reduce"
    sums = np.empty(frames)

    def once() -> None:
        for i in range(spec.n_chunks):
            a, b = spec.boundaries[i], spec.boundaries[i + 1]
            sums[a:b] = ctx.compute(a, b)["sum"][:, 0]

    once()  # warm: page cache, CUDA context, buffers, compiled loops
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        once()
        times.append(time.perf_counter() - t)
    path_used = reader.decode_path
    ctx.close()
    return statistics.median(times), sums, how, path_used


def _spawn() -> Any:
    import multiprocessing as mp

    return mp.get_context("spawn")  # CUDA is initialised in the child only


def workers(path: str, shape: tuple[int, int, int, str], reps: int, dry: bool) -> dict[str, Any]:
    """GB/s of one CPU worker, all cores' CPU workers at once, and the two GPU workers."""
    frames, h, w, dtype = shape
    nbytes = frames * h * w * np.dtype(dtype).itemsize
    out: dict[str, Any] = {}
    ref = None
    for name, variant in (("cpu_worker", "cpu"), ("e2e", "gpu-device"), ("e2e_host", "gpu-host")):
        with ProcessPoolExecutor(1, mp_context=_spawn()) as pool:
            seconds, sums, how, used = pool.submit(
                _worker_run, path, shape, variant, reps, dry
            ).result()
        ref = sums if ref is None else ref
        np.testing.assert_array_equal(sums, ref, err_msg=f"{name} disagrees with the CPU worker")
        out[f"{name}_gbps"] = nbytes / seconds / 1e9
        out[f"{name}_path"] = used
        if variant == "gpu-device":
            out["reduce_api"] = how
        print(f"  {name} ({used}): {out[f'{name}_gbps']:.2f} GB/s", file=sys.stderr, flush=True)
    # Every core a CPU worker process, all at once, each its share of the chunks.
    cores = os.cpu_count() or 1
    spec = spec_for(path, frames, h, w, dtype, chunk_frames(h, w, np.dtype(dtype).itemsize))
    n = spec.n_chunks
    if n < cores:  # smaller tasks, so that every process has one
        spec = spec_for(path, frames, h, w, dtype, max(1, -(-frames // cores)))
        n = spec.n_chunks
    shares = [(i * n // cores, (i + 1) * n // cores) for i in range(cores)]
    shares = [s for s in shares if s[1] > s[0]]
    best = float("inf")
    with ProcessPoolExecutor(len(shares), mp_context=_spawn()) as pool:
        for _ in range(max(1, reps)):
            start = time.time() + 3.0 + 0.2 * len(shares)
            jobs = [
                pool.submit(_all_cores_share, path, shape, s, spec.chunk_frames, dry, start)
                for s in shares
            ]
            got = [j.result() for j in jobs]
            best = min(best, max(g[1] for g in got) - min(g[0] for g in got))
    out["cpu_all_cores_gbps"] = nbytes / best / 1e9
    out["cpu_all_cores_processes"] = len(shares)
    print(
        f"  cpu workers on {len(shares)} cores: {out['cpu_all_cores_gbps']:.2f} GB/s",
        file=sys.stderr,
        flush=True,
    )
    return out


def _all_cores_share(
    path: str,
    shape: tuple[int, int, int, str],
    share: tuple[int, int],
    chunk_frames: int,
    dry: bool,
    start_at: float,
) -> tuple[float, float]:
    """One CPU worker process's share of an all-cores run: (start, end) wall times."""
    import torch

    from worker.context import JobContext

    frames, h, w, dtype = shape
    torch.set_num_threads(1)
    spec = spec_for(path, frames, h, w, dtype, chunk_frames)
    ctx = JobContext(
        spec=spec, labels=annulus(h, w), reader=_reader(spec, "cpu", dry), device="cpu"
    )
    lo, hi = share

    def once() -> None:
        for i in range(lo, hi):
            ctx.compute(spec.boundaries[i], spec.boundaries[i + 1])

    once()
    time.sleep(max(0.0, start_at - time.time()))
    t = time.time()
    once()
    end = time.time()
    ctx.close()
    return t, end
