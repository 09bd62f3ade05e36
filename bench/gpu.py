"""``python -m bench.gpu``: is a GPU worker fed and fast? One table and one JSON record.

On Bitshuffle-LZ4 stacks it generates in /tmp (detector-like frames: 512x512 uint16 and
Eiger 4M-sized 2167x2070 uint32, one frame per chunk), page cache warm:

1. kernel: the reducer's on-device reduction against a device-to-device copy (goal
   >= 0.7x), and ``reduce`` of frames in the reducer's pinned host buffer against a
   pinned host-to-device copy (goal >= 0.7x);
2. decode stages (``bench.gpu_decode``): the device decoder alone on one batch (batched
   nvCOMP LZ4 + unshuffle kernel) beside a D2D copy of the same bytes (goal >= 46 GB/s,
   silx's published OpenCL figure), nvCOMP's own bitshuffle mode beside it; the reader's
   device path over the whole file, every block compared with the host decoder's; the
   host decoder with 1 thread and with all cores;
3. end to end, one process each running the worker's code (``JobContext.compute`` over
   the job's chunks; no queue): one CPU worker, CPU workers on every core at once, one
   GPU worker decoding on the device (goals: >= 40 GB/s and >= 8x one CPU worker), one
   GPU worker with device decoding off (goal: >= 0.8x all cores' CPU workers).

Writes bench/RESULTS-gpu.md and appends one object to bench/results-gpu.json.
``--dry-run`` runs all of it on the CPU at toy sizes, with the ``lz4`` package in
nvCOMP's place: it checks the script, not the GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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

from bench import gpu_decode, gpu_workers  # noqa: E402
from bench.gpu_workers import DSET, annulus, spec_for  # noqa: E402
from bench.host import cpu_model  # noqa: E402
from bench.report import median_seconds, replace_section  # noqa: E402
from producer.samples import detector_frames  # noqa: E402

RESULTS = os.path.join(HERE, "RESULTS-gpu.md")
RECORDS = os.path.join(HERE, "results-gpu.json")
#: The run's section of RESULTS-gpu.md lies between these (notes around it are kept).
#: "cuda", or "cpu" for --dry-run (checks this script on a machine without a GPU).
DEVICE = "cuda"
#: The stacks: name -> (frames, distinct frames, height, width, dtype); --dry-run's.
STACKS = {
    "uint16-512x512": (2048, 256, 512, 512, "uint16"),
    "uint32-2167x2070": (48, 16, 2167, 2070, "uint32"),
}
DRY_STACKS = {"uint16-64x64": (48, 8, 64, 64, "uint16"), "uint32-67x45": (6, 3, 67, 45, "uint32")}


def sync() -> None:
    import torch

    if DEVICE == "cuda":
        torch.cuda.synchronize()


def _frames(args: tuple[int, int, int, str, int]) -> np.ndarray:
    n, h, w, dtype, seed = args
    return detector_frames(n, h, w, np.dtype(dtype), seed=seed)


def make_stack(path: str, frames: int, unique: int, h: int, w: int, dtype: str) -> None:
    """``frames`` frames cycling through ``unique`` distinct ones, Bitshuffle-LZ4, (1, H, W)."""
    if os.path.exists(path):
        return
    step = max(1, min(64, (64 << 20) // (h * w * 8)))
    pieces = [(min(step, unique - i), h, w, dtype, 1000 + i) for i in range(0, unique, step)]
    with ProcessPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        distinct = np.concatenate(list(pool.map(_frames, pieces)))
    with h5py.File(path + ".tmp", "w") as f:
        d = f.create_dataset(
            DSET,
            shape=(frames, h, w),
            dtype=dtype,
            chunks=(1, h, w),
            **hdf5plugin.Bitshuffle(cname="lz4"),
        )
        for lo in range(0, frames, unique):
            n = min(unique, frames - lo)
            d[lo : lo + n] = distinct[:n]
    os.replace(path + ".tmp", path)


def cuda_time(fn: Callable[[], Any], reps: int) -> float:
    """Median seconds of ``fn`` on the GPU (synchronised before and after)."""
    return median_seconds(fn, reps, sync)


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
        from worker.reduce.cuda import DeviceReducer

        reducer._impl = DeviceReducer(mask.astype(np.int32), 1, ("sum",), dev)
    impl = reducer._impl
    flat = src.view(frames, -1)
    group_sums = getattr(impl, "_group", None)
    torch_path = getattr(getattr(impl, "torch", None), "int_sums", None)
    if group_sums is not None and torch_path is not None:
        group = getattr(impl, "group", frames)

        def on_device() -> None:
            for lo in range(0, frames, group):
                group_sums(flat[lo : lo + group])

        out["kernel"] = nbytes / cuda_time(on_device, reps) / 1e9
        got = torch.cat([group_sums(flat[lo : lo + group])[0] for lo in range(0, frames, group)])
        want = reducer.reduce(host)["sum"]
        np.testing.assert_array_equal(got.cpu().numpy(), want)
        # Which path that was: the Triton sums kernel where it passed its self-check.
        out["fused"] = float(("sums", torch.uint16) in getattr(impl, "checked", ()))

        def gemm() -> None:
            for lo in range(0, frames, group):
                torch_path(flat[lo : lo + group])

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


def stack_run(
    name: str, path: str, shape: tuple[int, int, int, str], reps: int, dry: bool
) -> dict[str, Any]:
    """Every decode stage and worker of one stack."""
    frames, h, w, dtype = shape
    cores = os.cpu_count() or 1
    spec = spec_for(
        path, frames, h, w, dtype, gpu_workers.chunk_frames(h, w, np.dtype(dtype).itemsize)
    )
    out: dict[str, Any] = {"frames": frames, "shape": [h, w], "dtype": dtype}
    out["file_bytes"] = os.path.getsize(path)
    print(f"{name}: decode stages", file=sys.stderr, flush=True)
    out.update(gpu_decode.device_stage(path, 128 << 20, reps * 3, dry))
    out.update(gpu_decode.device_reader(path, spec, cores, reps, dry))
    out["host_decode_1t_gbps"] = gpu_decode.host_decode(path, 1, reps)
    out["host_decode_gbps"] = gpu_decode.host_decode(path, cores, reps)
    print(f"{name}: workers", file=sys.stderr, flush=True)
    out.update(gpu_workers.workers(path, shape, reps, dry))
    return out


def describe() -> dict[str, str]:
    import torch

    host = f"{cpu_model()}, {os.cpu_count()} cores, {platform.node()}"
    if DEVICE != "cuda":
        return {"host": host, "gpu": "none (dry run on the CPU: the numbers mean nothing)"}
    props = torch.cuda.get_device_properties(0)
    gpu = (
        f"{props.name} ({props.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}, "
        f"torch {torch.__version__}"
    )
    return {"host": host, "gpu": gpu}


def _ok(x: float, goal: float) -> str:
    return "ok" if x >= goal else "**miss**"


def tables(k: dict[str, float], stacks: dict[str, dict[str, Any]]) -> str:
    path = "fused Triton" if k.get("fused") else "GEMM, no fused kernel"
    rows = [
        "| measure | GB/s | against | ratio (goal) |",
        "|---|---|---|---|",
        f"| kernel on device (uint16 in; {path}) | {k['kernel']:.1f} | D2D copy "
        f"{k['d2d_copy']:.1f} | {k['kernel'] / k['d2d_copy']:.2f} "
        f"(>= 0.7 {_ok(k['kernel'] / k['d2d_copy'], 0.7)}) |",
        f"| reduce() from host memory | {k['reduce_from_host']:.1f} | pinned H2D copy "
        f"{k['h2d_pinned']:.1f} | {k['reduce_from_host'] / k['h2d_pinned']:.2f} "
        f"(>= 0.7 {_ok(k['reduce_from_host'] / k['h2d_pinned'], 0.7)}) |",
    ]
    for name, s in stacks.items():
        cpu, allc = s["cpu_worker_gbps"], s["cpu_all_cores_gbps"]
        fused = s.get("nvcomp_bitshuffle_gbps")
        rows += [
            f"| **{name}** ({s['frames']} frames, file {s['file_bytes'] / 2**20:.0f} MiB) | | | |",
            f"| device decode of one batch ({s['blocks']} LZ4 blocks; nvCOMP + {s['unshuffle']} "
            f"unshuffle) | {s['decode_gbps']:.1f} | D2D copy {s['d2d_gbps']:.1f} | "
            f"{s['decode_gbps'] / s['d2d_gbps']:.3f}; >= 46 GB/s {_ok(s['decode_gbps'], 46)} |",
            "| the same, nvCOMP's own bitshuffle mode | "
            + (
                f"{fused:.1f} | | identical: {s.get('nvcomp_bitshuffle_identical')} |"
                if fused
                else f"- | | {s.get('nvcomp_bitshuffle', '-')} |"
            ),
            f"| reader, device path (read, check, upload, decode) | {s['reader_gbps']:.1f} | | "
            f"every block as the host decoder: {s['bit_identical']} |",
            f"| host decoder, 1 thread / all cores | {s['host_decode_1t_gbps']:.2f} / "
            f"{s['host_decode_gbps']:.2f} | | scaling {s['host_decode_gbps'] / s['host_decode_1t_gbps']:.1f}x |",
            f"| e2e: one CPU worker process | {cpu:.2f} | | |",
            f"| e2e: CPU workers on all {s['cpu_all_cores_processes']} cores | {allc:.2f} | | "
            f"{allc / cpu:.1f}x one |",
            f"| e2e: one GPU worker, device decode ({s['e2e_path']}) | {s['e2e_gbps']:.2f} | "
            f"one CPU worker | {s['e2e_gbps'] / cpu:.1f}x (>= 8 {_ok(s['e2e_gbps'] / cpu, 8)}); "
            f">= 40 GB/s {_ok(s['e2e_gbps'], 40)} |",
            f"| e2e: one GPU worker, device decode off ({s['e2e_host_path']}) | "
            f"{s['e2e_host_gbps']:.2f} | all cores' CPU workers | "
            f"{s['e2e_host_gbps'] / allc:.2f} (>= 0.8 {_ok(s['e2e_host_gbps'] / allc, 0.8)}) |",
        ]
    return "\n".join(rows)


def record(info: dict[str, str], stacks: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The run's JSON object: the first stack's figures at the top, every stack below."""
    first = next(iter(stacks.values()))
    keys = (
        "e2e_gbps",
        "cpu_worker_gbps",
        "decode_gbps",
        "d2d_gbps",
        "host_decode_gbps",
        "cpu_all_cores_gbps",
    )
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "host": info["host"],
        "gpu": info["gpu"],
        "cores": os.cpu_count(),
        **{k: round(float(first[k]), 3) for k in keys},
        "bit_identical": all(
            bool(s["bit_identical"]) and bool(s["stage_identical"]) for s in stacks.values()
        ),
        "stacks": stacks,
    }


def append_record(obj: dict[str, Any], path: str = RECORDS) -> None:
    """Append ``obj`` to the JSON list in ``path`` (newest last)."""
    runs: list[Any] = []
    if os.path.exists(path):
        with open(path, encoding="utf-8") as fh:
            runs = json.load(fh)
    runs.append(obj)
    with open(path + ".tmp", "w", encoding="utf-8") as fh:
        json.dump(runs, fh, indent=1, default=str)
        fh.write("\n")
    os.replace(path + ".tmp", path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3, help="repetitions (medians)")
    ap.add_argument("--folder", default=os.path.join(tempfile.gettempdir(), "framestats-gpu"))
    ap.add_argument(
        "--no-write", action="store_true", help="write neither RESULTS-gpu.md nor the JSON"
    )
    ap.add_argument("--json", default=RECORDS, help="the JSON list a run is appended to")
    ap.add_argument("--stacks", default=None, help="comma-separated stack names (default: all)")
    ap.add_argument(
        "--dry-run", action="store_true", help="tiny, on the CPU: check the script, not the GPU"
    )
    args = ap.parse_args(argv)
    import torch

    global DEVICE
    stacks = STACKS
    if args.dry_run:
        DEVICE, stacks = "cpu", DRY_STACKS
        args.reps = min(args.reps, 2)
        args.no_write = True
    elif not torch.cuda.is_available():
        print("bench.gpu: no CUDA device visible; nothing measured", file=sys.stderr)
        return 2
    if args.stacks:
        stacks = {k: v for k, v in stacks.items() if k in args.stacks.split(",")}
    started = time.perf_counter()
    os.makedirs(args.folder, exist_ok=True)
    results: dict[str, dict[str, Any]] = {}
    kernel: dict[str, float] = {}
    for name, (frames, unique, h, w, dtype) in stacks.items():
        path = os.path.join(args.folder, f"bslz4-{name}-{frames}.h5")
        print(f"data: {path}", file=sys.stderr, flush=True)
        make_stack(path, frames, unique, h, w, dtype)
        with open(path, "rb") as raw:  # warm the page cache
            while raw.read(1 << 24):
                pass
        if not kernel and dtype == "uint16":
            print("kernel and copies", file=sys.stderr, flush=True)
            kernel = kernel_and_copies(annulus(h, w), h, min(frames, 1024), args.reps * 3)
        results[name] = stack_run(name, path, (frames, h, w, dtype), args.reps, args.dry_run)
    info = describe()
    table = tables(kernel, results)
    obj = record(info, results)
    text = "\n".join(
        [
            "## The latest run",
            "",
            f"{obj['date']}; {info['gpu']}; host {info['host']}; h5py {h5py.__version__}, "
            f"hdf5plugin {hdf5plugin.version}.",
            "Bitshuffle-LZ4 stacks, (1, H, W) chunks, page cache warm; GB/s of uncompressed "
            f"input, medians of {args.reps} runs ({args.reps * 3} for kernel and decode stages). "
            "e2e = one process running the worker's read + reduce code over the job's 256 MiB "
            "chunk tasks (no queue). GPU worker e2e reduces device blocks with "
            f"{next(iter(results.values())).get('reduce_api', '-')}.",
            "",
            table,
            "",
            f"Total run time {time.perf_counter() - started:.0f} s. Record appended to "
            "bench/results-gpu.json.",
            "",
        ]
    )
    print(table)
    print(json.dumps({k: v for k, v in obj.items() if k != "stacks"}))
    if not args.no_write:
        replace_section(RESULTS, "bench.gpu", text)
        append_record(obj, args.json)
    print(f"bench.gpu: done in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
