"""``python -m bench.gpu``: is a GPU worker fed and fast? One table, ~1-2 minutes on a CUDA host.

Measures, on a Bitshuffle-LZ4 stack it generates in /tmp (512x512 uint16, (1, H, W)
chunks, masked sum of one annulus region):

1. kernel: the reducer's on-device reduction of frames already on the GPU, GB/s of
   uint16 input, against a device-to-device copy of the same bytes (goal >= 0.7x):
   the fused Triton kernel (``worker.fused``) where Triton is there and passed its
   self-check, else the GEMM path; also the GEMM path alone (convert to float32 in
   global memory + one-hot GEMM) for comparison;
2. host to device: ``MaskedReducer.reduce`` of frames the reader put in the reducer's
   pinned host buffer (``MaskedReducer.host_buffer``, the worker's path on CUDA: 32 MiB
   blocks, two buffers alternating, sent without a host copy), against a plain
   pinned-to-device copy (goal >= 0.7x); also, for comparison, ``reduce`` of frames in
   ordinary (pageable) memory, which it stages through a pinned buffer;
3. end to end: one GPU worker process reading the file and reducing it (the worker's
   own code, ``JobContext.compute`` over the job's chunks, with decode threads and
   prefetch as the worker picks them for CUDA), against one CPU worker process
   (goal >= 3x); also the GPU worker with HDF5 decoding (no parallel decode) and
   without prefetch, to show what feeding it from several cores buys.

Writes bench/RESULTS-gpu.md. ``--quick`` (the default) keeps the whole run short;
``--full`` uses a 2 GiB stack and more repetitions.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import h5py
import hdf5plugin
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # runnable as a script from a bare checkout

from bench.host import cpu_model  # noqa: E402
from producer.messages import JobSpec, Segment  # noqa: E402
from producer.samples import detector_frames  # noqa: E402

DSET = "/entry/data/data"
RESULTS = os.path.join(HERE, "RESULTS-gpu.md")
#: "cuda", or "cpu" for --dry-run (checks this script on a machine without a GPU).
DEVICE = "cuda"


def sync() -> None:
    import torch

    if DEVICE == "cuda":
        torch.cuda.synchronize()


def _frames(args: tuple[int, int, int]) -> np.ndarray:
    n, size, seed = args
    return detector_frames(n, size, size, np.uint16, seed=seed)


def make_stack(path: str, frames: int, unique: int, size: int) -> None:
    """``frames`` frames cycling through ``unique`` distinct ones, Bitshuffle-LZ4, (1, H, W)."""
    if os.path.exists(path):
        return
    pieces = [(min(64, unique - i), size, 1000 + i) for i in range(0, unique, 64)]
    with ProcessPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        distinct = np.concatenate(list(pool.map(_frames, pieces)))
    with h5py.File(path + ".tmp", "w") as f:
        d = f.create_dataset(
            DSET,
            shape=(frames, size, size),
            dtype=np.uint16,
            chunks=(1, size, size),
            **hdf5plugin.Bitshuffle(cname="lz4"),
        )
        for lo in range(0, frames, unique):
            n = min(unique, frames - lo)
            d[lo : lo + n] = distinct[:n]
    os.replace(path + ".tmp", path)


def annulus(size: int) -> np.ndarray:
    from producer.samples import ring_labels

    return ring_labels(size, size, 4) >= 2


def spec_for(path: str, frames: int, size: int, chunk_frames: int) -> JobSpec:
    bounds = tuple(range(0, frames, chunk_frames)) + (frames,)
    return JobSpec(
        job_id="gpu-bench",
        segments=(Segment(path, DSET, 0, frames),),
        frame_shape=(size, size),
        dtype="<u2",
        n_frames=frames,
        n_regions=1,
        stats=("sum",),
        boundaries=bounds,
        output="/nonexistent.h5",
        workdir="/nonexistent.h5.parts",
        mask_path="",
        mask_sha256="",
        queue="q",
        chunk_frames=chunk_frames,
        created=0.0,
        version="bench",
    )


def cuda_time(fn: Callable[[], Any], reps: int) -> float:
    """Median seconds of ``fn`` on the GPU (synchronised before and after)."""
    times = []
    fn()
    sync()
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def kernel_and_copies(mask: np.ndarray, size: int, frames: int, reps: int) -> dict[str, float]:
    """GB/s of: D2D copy, on-device kernel, pinned H2D copy, reduce() from host memory."""
    import torch

    from worker.reduce import MaskedReducer

    dev = torch.device(DEVICE)
    host = detector_frames(frames, size, size, np.uint16, seed=7)
    nbytes = host.nbytes
    src = torch.from_numpy(host).to(dev)
    dst = torch.empty_like(src)
    pinned = torch.from_numpy(host)
    if DEVICE == "cuda":
        pinned = pinned.pin_memory()
    out: dict[str, float] = {}
    out["d2d_copy"] = nbytes / cuda_time(lambda: dst.copy_(src), reps) / 1e9
    out["h2d_pinned"] = nbytes / cuda_time(lambda: dst.copy_(pinned, non_blocking=True), reps) / 1e9
    reducer = MaskedReducer(mask, ("sum",), device=DEVICE)
    if DEVICE == "cpu":  # --dry-run: the device code path, run on the CPU
        from worker import kernel

        reducer._impl = kernel._DeviceReducer(mask.astype(np.int32), 1, ("sum",), dev)
    impl = reducer._impl
    flat = src.view(frames, -1)
    device_sums = getattr(impl, "_int_sums", None)
    if device_sums is not None:
        kind = ("u", 2)
        group = getattr(impl, "group", frames)

        def on_device() -> None:
            for lo in range(0, frames, group):
                device_sums(flat[lo : lo + group], kind)

        out["kernel"] = nbytes / cuda_time(on_device, reps) / 1e9
        got = torch.cat(
            [device_sums(flat[lo : lo + group], kind) for lo in range(0, frames, group)]
        )
        want = reducer.reduce(host)["sum"]
        np.testing.assert_array_equal(got.cpu().numpy().astype(np.float64), want)
        # Which path that was: the fused Triton kernel where it passed its self-check.
        out["fused"] = float(torch.uint16 in getattr(impl, "_fused_ok", ()))
        gemm_sums = getattr(impl, "_gemm_int_sums", None)
        if gemm_sums is not None:

            def gemm() -> None:
                for lo in range(0, frames, group):
                    gemm_sums(flat[lo : lo + group], kind)

            out["kernel_gemm"] = nbytes / cuda_time(gemm, reps) / 1e9
    else:
        out["kernel"] = float("nan")  # the kernel's device API changed: see the note
    # The worker's path: the reader reads each block (32 MiB, its default) into the
    # reducer's host buffer (pinned; two alternate) and reduce() sends it without a
    # host copy. Timed: the same number of bytes as the rows above, block by block.
    block = max(1, min(frames // 2, (32 << 20) // (size * size * 2)))
    given = [reducer.host_buffer(block, np.uint16) for _ in range(2)]
    bufs = [b for b in given if b is not None]
    if len(bufs) == 2:
        for i, buf in enumerate(bufs):
            np.copyto(buf, host[i * block : (i + 1) * block])
            want = reducer.reduce(host[i * block : (i + 1) * block])["sum"]
            np.testing.assert_array_equal(reducer.reduce(buf)["sum"], want)

        def from_buffer() -> None:
            for i in range(frames // block):
                reducer.reduce(bufs[i % 2])

        moved = (frames // block) * block * size * size * 2
        out["reduce_from_host"] = moved / cuda_time(from_buffer, reps) / 1e9
    else:
        out["reduce_from_host"] = float("nan")  # no host buffer: see the note
    out["reduce_staged"] = nbytes / cuda_time(lambda: reducer.reduce(host), reps) / 1e9
    return out


def _worker_run(
    path: str, frames: int, size: int, device: str, compute: str, env: dict[str, str], reps: int
) -> tuple[float, np.ndarray]:
    """One worker process: median seconds over the whole file, and its sums.

    The reader is set up as a worker on ``device`` sets it up; the kernel runs on
    ``compute`` (the same, except in a dry run).
    """
    os.environ.update(env)
    import torch

    from worker.context import JobContext
    from worker.reader import FrameReader

    if compute == "cpu":
        torch.set_num_threads(1)  # a CPU worker process runs one torch thread
    spec = spec_for(path, frames, size, 256)
    mask = annulus(size)
    reader = FrameReader.for_device(spec, (), device)
    ctx = JobContext(spec=spec, labels=mask, reader=reader, device=compute)
    sums = np.empty(frames)

    def once() -> None:
        for i in range(spec.n_chunks):
            a, b = spec.boundaries[i], spec.boundaries[i + 1]
            sums[a:b] = ctx.compute(a, b)["sum"][:, 0]

    once()  # warm: page cache, CUDA context, buffers
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        once()
        times.append(time.perf_counter() - t)
    ctx.close()
    return statistics.median(times), sums


def worker_variants(path: str, frames: int, size: int, reps: int) -> dict[str, Any]:
    """Each variant in a fresh process (spawned: CUDA is initialised in the child only)."""
    import multiprocessing as mp

    variants = {
        "cpu worker (1 process, 1 thread)": ("cpu", {}),
        "gpu worker, HDF5 decoding, no prefetch": (
            "cuda",
            {"FRAMESTATS_DECODE_THREADS": "0", "FRAMESTATS_PREFETCH": "0"},
        ),
        "gpu worker, parallel decode, no prefetch": ("cuda", {"FRAMESTATS_PREFETCH": "0"}),
        "gpu worker (as configured: parallel decode + prefetch)": ("cuda", {}),
    }
    out: dict[str, Any] = {}
    ref = None
    ctx = mp.get_context("spawn")
    for name, (device, env) in variants.items():
        with ProcessPoolExecutor(1, mp_context=ctx) as pool:
            compute = device if DEVICE == "cuda" else "cpu"
            job = pool.submit(_worker_run, path, frames, size, device, compute, env, reps)
            seconds, sums = job.result()
        if ref is None:
            ref = sums
        np.testing.assert_array_equal(sums, ref, err_msg=f"{name} disagrees with the CPU worker")
        out[name] = frames * size * size * 2 / seconds / 1e9
        print(f"  {name}: {out[name]:.2f} GB/s", file=sys.stderr, flush=True)
    return out


def describe() -> str:
    import torch

    if DEVICE != "cuda":
        return "dry run on the CPU (no GPU): the numbers mean nothing"
    props = torch.cuda.get_device_properties(0)
    cpu = cpu_model()
    return (
        f"{props.name} ({props.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}, "
        f"torch {torch.__version__}; host {cpu}, {os.cpu_count()} cores; h5py {h5py.__version__}, "
        f"hdf5plugin {hdf5plugin.version}"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.split("\n\n")[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument(
        "--quick", action="store_true", default=True, help="1 GiB, few reps (default)"
    )
    mode.add_argument("--full", action="store_true", help="2 GiB, more repetitions")
    ap.add_argument("--folder", default=os.path.join(tempfile.gettempdir(), "framestats-gpu"))
    ap.add_argument("--no-write", action="store_true", help="do not write bench/RESULTS-gpu.md")
    ap.add_argument(
        "--dry-run", action="store_true", help="tiny, on the CPU: check the script, not the GPU"
    )
    args = ap.parse_args(argv)
    import torch

    global DEVICE
    if args.dry_run:
        DEVICE = "cpu"
        args.no_write = True
    elif not torch.cuda.is_available():
        print("bench.gpu: no CUDA device visible; nothing measured", file=sys.stderr)
        return 2
    started = time.perf_counter()
    size = 512
    frames, reps = (4096, 5) if args.full else (2048, 3)
    if args.dry_run:
        frames, reps = 96, 1
    os.makedirs(args.folder, exist_ok=True)
    path = os.path.join(args.folder, f"bslz4-{frames}x{size}.h5")
    print(f"data: {path}", file=sys.stderr, flush=True)
    make_stack(path, frames, min(frames, 256), size)
    with open(path, "rb") as raw:  # warm the page cache
        while raw.read(1 << 24):
            pass
    print("kernel and copies", file=sys.stderr, flush=True)
    k = kernel_and_copies(annulus(size), size, min(frames, 1024), reps * 3)
    print("workers", file=sys.stderr, flush=True)
    w = worker_variants(path, frames, size, reps)
    cpu = w["cpu worker (1 process, 1 thread)"]

    def ok(x: float, goal: float) -> str:
        return "ok" if x >= goal else "**miss**"

    path = "fused Triton" if k.get("fused") else "GEMM, no fused kernel"
    gemm = k.get("kernel_gemm", float("nan"))
    rows = [
        "| measure | GB/s | against | ratio (goal) |",
        "|---|---|---|---|",
        f"| kernel on device (uint16 in; {path}) | {k['kernel']:.1f} | D2D copy "
        f"{k['d2d_copy']:.1f} | "
        f"{k['kernel'] / k['d2d_copy']:.2f} (>= 0.7 {ok(k['kernel'] / k['d2d_copy'], 0.7)}) |",
        f"| GEMM path on device (uint16 in; convert + one-hot GEMM) | {gemm:.1f} | D2D copy "
        f"{k['d2d_copy']:.1f} | {gemm / k['d2d_copy']:.2f} |",
        f"| reduce() from host memory | {k['reduce_from_host']:.1f} | pinned H2D copy "
        f"{k['h2d_pinned']:.1f} | {k['reduce_from_host'] / k['h2d_pinned']:.2f} "
        f"(>= 0.7 {ok(k['reduce_from_host'] / k['h2d_pinned'], 0.7)}) |",
        f"| reduce() of pageable host memory (staged) | {k['reduce_staged']:.1f} | pinned H2D "
        f"copy {k['h2d_pinned']:.1f} | {k['reduce_staged'] / k['h2d_pinned']:.2f} |",
    ]
    for name, v in w.items():
        ratio = "" if name.startswith("cpu") else f"{v / cpu:.2f}x CPU worker"
        if name == "gpu worker (as configured: parallel decode + prefetch)":
            ratio += f" (>= 3 {ok(v / cpu, 3.0)})"
        rows.append(f"| e2e Bitshuffle-LZ4: {name} | {v:.2f} | | {ratio} |")
    table = "\n".join(rows)
    text = "\n".join(
        [
            "# GPU worker benchmark (`python -m bench.gpu`)",
            "",
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {describe()}.",
            f"Input: {frames} uint16 frames of {size}x{size} Bitshuffle-LZ4, (1, H, W) chunks, "
            f"page cache warm; medians of {reps} (e2e) / {reps * 3} (kernel, copies) runs; "
            "GB/s of uncompressed uint16 input. e2e = one worker process running the "
            "worker's read + kernel code over the job's chunks (no queue).",
            "",
            table,
            "",
            f"Total run time {time.perf_counter() - started:.0f} s.",
            "",
        ]
    )
    print(table)
    if not args.no_write:
        with open(RESULTS, "w", encoding="utf-8") as fh:
            fh.write(text)
    print(f"bench.gpu: done in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
